import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from dmlsynth.evaluate import nearest_neighbours, retrieval_metrics


def clustered(n_classes=20, per_class=15, dim=32, spread=1.5, seed=0, uneven=True):
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, per_class + 1, size=n_classes) if uneven else np.full(n_classes, per_class)
    labels = np.repeat(np.arange(n_classes), counts)
    centers = rng.normal(size=(n_classes, dim))
    x = centers[labels] + rng.normal(scale=spread, size=(len(labels), dim))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pytorch_metric_learning(seed):
    x, labels = clustered(seed=seed)
    ours = retrieval_metrics(x, labels, include_nmi=False)
    normalised = x / np.linalg.norm(x, axis=1, keepdims=True)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count"
    )
    theirs = calculator.get_accuracy(torch.from_numpy(normalised), torch.from_numpy(labels))
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)


def test_hand_computed_example():
    # Points on a circle; class 0 at angles 0, 10, 100 degrees, class 1 at 20, 200 degrees.
    angles = np.deg2rad([0, 10, 100, 20, 200])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 0, 1, 1])
    m = retrieval_metrics(x, labels, ks=(1, 2), include_nmi=False)
    # Neighbour lists (self excluded), by angular distance:
    # q0: 10(0) 20(1) 100(0) | q1: 0(0)/20(1) tie at 10 degrees -> index 0 first, 100(0)
    # q2: 20(1) 10(0) 0(0)   | q3: 10(0) 0(0) 100(0) 200(1)    | q4: 100(0) ...
    recall1 = np.mean([1, 1, 0, 0, 0])
    recall2 = np.mean([1, 1, 1, 0, 0])
    # R = 2 for class 0, 1 for class 1.
    # MAP@R: q0 rel=[1,0] -> (1)/2 = .5; q1 rel=[1,0] -> .5; q2 rel=[0,1] -> (1/2)/2 = .25; q3, q4: 0
    map_r = np.mean([0.5, 0.5, 0.25, 0, 0])
    r_precision = np.mean([0.5, 0.5, 0.5, 0, 0])
    assert m["recall@1"] == pytest.approx(recall1)
    assert m["recall@2"] == pytest.approx(recall2)
    assert m["map@r"] == pytest.approx(map_r)
    assert m["r_precision"] == pytest.approx(r_precision)


def test_self_is_excluded_even_among_duplicates():
    x = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2)
    neighbours = nearest_neighbours(x.astype(np.float32), 2)
    for row, found in enumerate(neighbours):
        assert row not in found
    # Ties are broken by index.
    assert neighbours[0].tolist() == [1, 2]
    assert neighbours[2].tolist() == [0, 1]


def test_perfect_embedding_scores_one_and_values_in_range():
    x, labels = clustered(spread=0.01, uneven=False)
    m = retrieval_metrics(x, labels)
    for key in ("recall@1", "recall@8", "map@r", "r_precision", "nmi"):
        assert m[key] == pytest.approx(1.0, abs=1e-9), key
    noisy = retrieval_metrics(*clustered(spread=50.0))
    assert all(0.0 <= v <= 1.0 for v in noisy.values())
    assert noisy["map@r"] < 0.5


def test_metrics_ignore_embedding_scale():
    x, labels = clustered()
    scaled = x * np.random.default_rng(0).uniform(0.1, 10, size=(len(x), 1)).astype(np.float32)
    a = retrieval_metrics(x, labels, include_nmi=False)
    b = retrieval_metrics(scaled, labels, include_nmi=False)
    assert a == pytest.approx(b, abs=1e-9)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(np.zeros((4, 3)) + 1, [0, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((4, 3), np.nan), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="no class has two"):
        retrieval_metrics(np.eye(3), [0, 1, 2])
