"""The Potential-Field loss (Bhatnagar & Ahuja, CVPR 2025) against a direct evaluation of its formula."""

import math

import numpy as np
import pytest
import torch

from dmlsynth import registry
from dmlsynth.losses import PotentialFieldLoss, build_loss
from tests.helpers.methods import train_digits, two_stage_step
from tests.helpers.methods import batch as method_batch


def direct_energy(points: np.ndarray, labels: list[int], alpha: float, delta: float) -> float:
    """U = Σ over points of the class field they feel, by the paper's per-charge potentials; / #pairs."""
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    total, pairs = 0.0, 0
    for i in range(len(unit)):
        for j in range(len(unit)):
            if i == j:
                continue
            d = max(float(np.linalg.norm(unit[i] - unit[j])), delta / 100)
            if labels[i] == labels[j]:
                total += -1.0 / (d if d > delta else delta) ** alpha  # attraction, flat inside delta
            else:
                total += 1.0 / (d if d < delta else delta) ** alpha  # repulsion inside delta only
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("alpha,delta,per_class", [(4.0, 0.2, 2), (2.0, 0.5, 1), (0.0, 0.3, 3), (3.0, 0.1, 0)])
def test_value_is_the_total_potential_energy(alpha, delta, per_class):
    torch.manual_seed(0)
    loss = PotentialFieldLoss(3, 5, proxies_per_class=per_class, alpha=alpha, delta=delta).double()
    embeddings = torch.randn(7, 5, dtype=torch.float64)
    embeddings[1] = embeddings[0] * 1.0001  # a same-class pair inside the flat zone
    embeddings[3] = embeddings[2] + 0.02  # a different-class pair close enough to repel
    labels = torch.tensor([0, 0, 1, 2, 1, 0, 2])
    points = torch.cat([embeddings, loss.proxies.detach()]).numpy()
    point_labels = labels.tolist() + [c for c in range(3) for _ in range(per_class)]
    expected = direct_energy(points, point_labels, alpha, delta)
    assert float(loss(embeddings, labels).detach()) == pytest.approx(expected, rel=1e-9)


def test_forces_decay_with_distance_and_vanish_where_the_field_is_flat():
    loss = PotentialFieldLoss(2, 2, proxies_per_class=0, alpha=4.0, delta=0.2).double()
    labels = torch.tensor([0, 0])

    def pull(angle: float) -> float:
        # Two same-class points on the unit circle; the gradient on the second point's angle.
        theta = torch.tensor(angle, dtype=torch.float64, requires_grad=True)
        points = torch.stack([torch.tensor([1.0, 0.0], dtype=torch.float64), torch.stack([theta.cos(), theta.sin()])])
        loss(points, labels).backward()
        return float(theta.grad)

    assert pull(0.1) == pytest.approx(0.0, abs=1e-12)  # inside δ: no pull, no collapse
    near, far = pull(0.4), pull(1.5)
    assert near > far > 0  # attraction (energy grows with the angle) that weakens with distance


def test_different_classes_repel_only_within_delta():
    loss = PotentialFieldLoss(2, 2, proxies_per_class=0, alpha=4.0, delta=0.2).double()
    labels = torch.tensor([0, 1])

    def push(angle: float) -> float:
        theta = torch.tensor(angle, dtype=torch.float64, requires_grad=True)
        points = torch.stack([torch.tensor([1.0, 0.0], dtype=torch.float64), torch.stack([theta.cos(), theta.sin()])])
        loss(points, labels).backward()
        return float(theta.grad)

    assert push(0.1) < 0  # energy falls as they move apart
    assert push(0.5) == pytest.approx(0.0, abs=1e-12)


def test_minimising_the_energy_separates_the_classes():
    torch.manual_seed(0)
    inputs, labels = method_batch()
    model = torch.nn.Linear(inputs.shape[1], 16)
    loss = PotentialFieldLoss(5, 16, proxies_per_class=2, alpha=2.0, delta=0.3)
    optimizer = torch.optim.Adam([*model.parameters(), *loss.parameters()], lr=0.01)

    def margin() -> float:
        z = torch.nn.functional.normalize(model(inputs), dim=1).detach()
        similarity = z @ z.T
        same = labels[:, None] == labels[None, :]
        return float(similarity[same].mean() - similarity[~same].mean())

    before = margin()
    for _ in range(100):
        optimizer.zero_grad()
        loss(model(inputs), labels).backward()
        optimizer.step()
    assert margin() > before + 0.2


def test_registry_builder_proxies_and_their_learning_rate():
    spec = registry.LOSSES["potential_field"]
    assert not spec.pair_based
    base = build_loss("potential_field", {"proxies_per_class": 3}, num_classes=4, embedding_dim=8)
    assert isinstance(base.loss, PotentialFieldLoss) and base.miner is None
    assert base.loss.proxies.shape == (12, 8) and base.loss.proxy_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert base.lr_multiplier == spec.defaults["proxy_lr_multiplier"]
    assert [p for p in base.parameters()] == [base.loss.proxies]


def test_half_precision_embeddings_do_not_overflow():
    loss = PotentialFieldLoss(2, 4, proxies_per_class=1, alpha=6.0, delta=0.1)
    embeddings = torch.randn(6, 4).half()
    embeddings[1] = embeddings[0]  # coincident points of different classes: the numerical floor
    value = loss(embeddings, torch.tensor([0, 1, 0, 1, 0, 1]))
    assert math.isfinite(float(value))


def test_on_device(device):
    torch.manual_seed(0)
    loss = PotentialFieldLoss(3, 6, proxies_per_class=2, alpha=4.0, delta=0.2)
    embeddings, labels = torch.randn(9, 6), torch.tensor([0, 1, 2] * 3)
    expected = float(loss(embeddings, labels))
    assert float(loss.to(device)(embeddings.to(device), labels.to(device))) == pytest.approx(expected, rel=1e-5)


def test_bad_use_is_explained():
    loss = PotentialFieldLoss(2, 4, proxies_per_class=1, alpha=4.0, delta=0.2)
    embeddings, labels = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="no indices_tuple"):
        loss(embeddings, labels, indices_tuple=(torch.tensor([0]), torch.tensor([2]), torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(ValueError, match="delta > 0"):
        PotentialFieldLoss(2, 4, proxies_per_class=1, alpha=4.0, delta=0.0)
    from pytorch_metric_learning.distances import CosineSimilarity

    with pytest.raises(ValueError, match="not a similarity"):
        PotentialFieldLoss(2, 4, proxies_per_class=1, alpha=4.0, delta=0.2, distance=CosineSimilarity())


# Data-level methods (BLenDeR's) train with the base loss alone, like baseline.
EMBEDDING_METHODS = [m for m, spec in registry.METHODS.items() if not spec.synthetic_images and spec.is_compatible("potential_field")]


@pytest.mark.parametrize("method", EMBEDDING_METHODS)
def test_every_compatible_method_takes_a_step_with_it(method):
    inputs, labels = method_batch()
    value, grads = two_stage_step(method, "potential_field", inputs, labels)
    assert math.isfinite(value) and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_symmetrical_synthesis_is_not_offered_with_it():
    assert not registry.METHODS["symm"].is_compatible("potential_field")


def test_trains_on_digits(config, digits_manifest, tmp_path):
    result = train_digits("baseline", "potential_field", config, digits_manifest, tmp_path / "run")
    losses = [h["loss"] for h in result["history"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
