import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import normalized_mutual_info_score

from dmlsynth.layout import RunFolder
from dmlsynth.metrics import KMEANS_RESTARTS, kmeans_clusters, nearest_neighbors, nmi, per_query_metrics, retrieval_metrics
from dmlsynth.evaluation import evaluate_run


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
    # Neighbor lists (self excluded), by angular distance:
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
    neighbors = nearest_neighbors(x.astype(np.float32), 2)
    for row, found in enumerate(neighbors):
        assert row not in found
    # Ties are broken by index.
    assert neighbors[0].tolist() == [1, 2]
    assert neighbors[2].tolist() == [0, 1]


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


def test_per_query_results_average_to_the_metrics():
    x, labels = clustered(seed=3)
    labels = np.r_[labels, 99]  # a class with one image: not a query
    x = np.vstack([x, np.ones((1, x.shape[1]), np.float32)])
    per_query = per_query_metrics(x, labels)
    metrics = retrieval_metrics(x, labels, include_nmi=False)
    kept = per_query["kept"]
    assert not kept[-1] and kept[:-1].all()
    for name, value in metrics.items():
        assert per_query[name][kept].mean() == pytest.approx(value, abs=1e-12), name
        assert per_query[name][-1] == 0
    assert set(np.unique(per_query["recall@1"])) <= {0.0, 1.0}


def test_evaluate_run_writes_metrics_and_the_per_query_file(tmp_path):
    x, labels = clustered(seed=1)
    np.savez(tmp_path / "embeddings.npz", embeddings=x, labels=labels)
    (tmp_path / "train_log.csv").write_text("epoch,loss,lr,seconds\n1,0.5,0.001,1.0\n")
    metrics = evaluate_run(tmp_path, ks=(1, 4))
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(metrics)
    with np.load(RunFolder(str(tmp_path)).queries) as data:
        assert set(data.files) == {"labels", "clusters", "kept", "recall@1", "recall@4", "map@r", "r_precision"}
        assert np.array_equal(data["labels"], labels)
        assert data["recall@4"][data["kept"]].mean() == pytest.approx(metrics["recall@4"])
        assert normalized_mutual_info_score(labels, data["clusters"]) == pytest.approx(metrics["nmi"])
    again = evaluate_run(tmp_path, ks=(1, 4))
    assert {k: v for k, v in again.items() if k != "eval_seconds"} == {k: v for k, v in metrics.items() if k != "eval_seconds"}


def test_nmi_is_pml_nmi_with_our_clustering():
    # pytorch-metric-learning computes NMI with the same scikit-learn formula; what differs is the
    # clustering (faiss, one random start, seed 1234, on the embeddings as given). With our
    # clustering of the L2-normalised embeddings it gives our number exactly.
    x, labels = clustered(seed=4)
    normalised = x / np.linalg.norm(x, axis=1, keepdims=True)
    calculator = AccuracyCalculator(
        include=("NMI",), kmeans_func=lambda q, k: torch.from_numpy(kmeans_clusters(q.numpy(), k)), device=torch.device("cpu")
    )
    theirs = calculator.get_accuracy(torch.from_numpy(normalised), torch.from_numpy(labels))["NMI"]
    assert retrieval_metrics(x, labels)["nmi"] == pytest.approx(theirs, abs=1e-12)


def test_nmi_restarts_make_it_depend_less_on_the_kmeans_seed():
    from sklearn.cluster import KMeans

    x, labels = clustered(spread=1.5, uneven=False)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ours = [nmi(x, labels, seed=s) for s in range(6)]
    one_start = [normalized_mutual_info_score(labels, KMeans(20, n_init=1, random_state=s).fit_predict(x)) for s in range(6)]
    assert KMEANS_RESTARTS == 10
    assert np.ptp(ours) < np.ptp(one_start)


def test_a_runs_nmi_clusters_into_as_many_groups_as_test_classes(tmp_path):
    # Five well-separated test classes: k-means with k = 5 recovers them exactly (NMI 1); any other k
    # cannot. The evaluation job's NMI is metrics.nmi's, the one k-means of the project.
    rng = np.random.default_rng(0)
    labels = np.repeat([5, 6, 7, 8, 9], 30)
    centres = 10.0 * np.eye(16)[:5]
    x = (centres[labels - 5] + rng.normal(scale=0.05, size=(len(labels), 16))).astype(np.float32)
    np.savez(tmp_path / "embeddings.npz", embeddings=x, labels=labels)
    (tmp_path / "train_log.csv").write_text("epoch,loss,lr,seconds\n1,0.5,0.001,1.0\n")
    metrics = evaluate_run(tmp_path)
    with np.load(RunFolder(str(tmp_path)).queries) as data:
        assert len(np.unique(data["clusters"])) == 5
    assert metrics["nmi"] == pytest.approx(1.0)
    assert metrics["nmi"] == pytest.approx(nmi(x / np.linalg.norm(x, axis=1, keepdims=True), labels))


def test_the_plots_of_a_run_are_titled_with_the_run_not_its_folder(tmp_path, monkeypatch):
    import yaml

    from dmlsynth import evaluation

    folder = tmp_path / "results" / "runs" / "digits" / "baseline+beta=40" / "multi_similarity" / "seed3"
    folder.mkdir(parents=True)
    x, labels = clustered(seed=1)
    np.savez(folder / "embeddings.npz", embeddings=x, labels=labels)
    (folder / "train_log.csv").write_text("epoch,loss,lr,seconds\n1,0.5,0.001,1.0\n2,0.4,0.001,1.0\n")
    params = {"dataset": "digits", "method": "baseline", "label": "baseline+beta=40", "loss": "multi_similarity", "seed": 3}
    (folder / "run.yaml").write_text(yaml.safe_dump({"params": params}))
    titles = {}
    monkeypatch.setattr(evaluation, "save_figure", lambda fig, out: titles.__setitem__(Path(out).name, fig.axes[0].get_title()))
    metrics = evaluate_run(folder, ks=(1, 4))
    name = "digits · baseline+beta=40 · multi_similarity · seed 3"  # the method as the table names the row
    assert titles == {"train_curve.png": name, "embeddings.png": f"{name} — R@1 {metrics['recall@1']:.3f}"}
    assert str(tmp_path) not in " ".join(titles.values())
