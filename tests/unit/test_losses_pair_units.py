"""N-pair and angular in their unit form (loss param ``pairs: units``, dmlsynth.losses.PairUnitSoftmaxLoss):
the official Symmetrical Synthesis code's npairs_loss / angular_loss over every same-class pair of a batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlsynth import registry
from dmlsynth.losses import ORIGINAL_PAIR, PairUnitSoftmaxLoss, build_loss, pair_units, slot_pair_mask
from dmlsynth.methods.symm import symmetric_points

CLASSES, PER_CLASS, DIM = 5, 8, 6


def value(loss: torch.Tensor) -> float:
    return float(loss.detach())


def batch(per_class=PER_CLASS, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    centres = torch.randn(CLASSES, DIM, generator=g, dtype=torch.float64)
    embeddings = 2 * centres[labels] + torch.randn(len(labels), DIM, generator=g, dtype=torch.float64)
    return embeddings.requires_grad_(), labels


def official(embeddings, labels, form, normalize, l2_reg, alpha=45.0):
    """The official code on (anchor, positive) rows: TF npairs_loss / angular_loss with labels_remapped, row by row."""
    anchors, positives, _ = pair_units(labels)
    a, p = embeddings[anchors], embeddings[positives]
    reg = 0.25 * l2_reg * (a.pow(2).sum(1).mean() + p.pow(2).sum(1).mean())
    if normalize:
        a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
    t = math.tan(math.radians(alpha)) ** 2
    u, unit_labels = len(anchors), labels[anchors]
    total = 0.0
    for i in range(u):
        if form == "n_pairs":
            row = torch.stack([a[i] @ p[j] for j in range(u)])
        else:
            row = torch.stack([2 * (1 + t) * (a[i] @ p[i]) if j == i else 4 * t * ((a[i] + p[i]) @ p[j]) for j in range(u)])
        target = (unit_labels == unit_labels[i]).to(row.dtype)
        total = total - (target / target.sum() * torch.log_softmax(row, dim=0)).sum()
    return total / u + reg


FORMS = [
    ("n_pairs", {"pairs": "units", "normalize": False}),  # symm's form: the official code's
    ("n_pairs", {"pairs": "units", "normalize": True}),  # the penalty stays on the raw embeddings
    ("angular", {"pairs": "units", "normalize": False, "l2_reg": 0.002}),  # symm's form
    ("angular", {"pairs": "units", "normalize": True, "alpha": 40.0}),
]


@pytest.mark.parametrize("loss,params", FORMS, ids=["n_pairs", "n_pairs-normalised", "angular", "angular-normalised"])
def test_unit_form_is_the_official_loss_over_every_pair_unit(loss, params):
    embeddings, labels = batch()
    built = build_loss(loss, params, CLASSES, DIM)
    assert isinstance(built.loss, PairUnitSoftmaxLoss) and not built.pair_based
    p = {**registry.LOSSES[loss].defaults, **params}
    expected = official(embeddings, labels, loss, p["normalize"], p["l2_reg"], p.get("alpha", 45.0))
    got = built(embeddings, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    grad, expected_grad = torch.autograd.grad(got, embeddings)[0], torch.autograd.grad(expected, embeddings)[0]
    assert torch.allclose(grad, expected_grad, atol=1e-12)


@pytest.mark.parametrize("loss", ["n_pairs", "angular"])
def test_unit_form_uses_every_pair_where_pml_keeps_one_per_class(loss):
    """The like-for-like point of issue 17: 20 pairs of a 5 x 8 batch take part, not 5."""
    embeddings, labels = batch()
    units = build_loss(loss, {"pairs": "units"}, CLASSES, DIM)
    grad = torch.autograd.grad(units(embeddings, labels), embeddings)[0]
    assert (grad.norm(dim=1) > 0).all()  # every sample is in a unit
    assert units.loss.num_units == CLASSES * PER_CLASS // 2
    if loss == "n_pairs":
        pml = build_loss(loss, {"l2_reg": 0.0}, CLASSES, DIM)
        pml_grad = torch.autograd.grad(pml(embeddings, labels), embeddings)[0]
        assert int((pml_grad.norm(dim=1) > 0).sum()) == 2 * CLASSES  # one pair per class


def test_a_sample_left_over_is_not_used_and_no_pair_gives_zero():
    embeddings, labels = batch(per_class=3)
    loss = build_loss("n_pairs", {"pairs": "units"}, CLASSES, DIM)
    grad = torch.autograd.grad(loss(embeddings, labels), embeddings)[0]
    _, _, singles = pair_units(labels)
    assert len(singles) == CLASSES and (grad[singles] == 0).all()
    assert (grad.norm(dim=1) > 0).sum() == 2 * CLASSES
    one_each = torch.arange(CLASSES)
    assert value(loss(embeddings[:CLASSES].detach().requires_grad_(), one_each)) == 0.0


def test_with_synthesis_adds_points_and_nothing_else():
    """loss_with_synthesis with the original pair as the only slot pair is the loss itself; with more slot pairs
    each logit is the largest over them (symm's form)."""
    embeddings, labels = batch()
    built = build_loss("angular", {"pairs": "units", "normalize": False, "l2_reg": 0.002}, CLASSES, DIM)
    plain = built(embeddings, labels)
    only_original = slot_pair_mask(ORIGINAL_PAIR, 4)
    assert value(built.loss.loss_with_synthesis(embeddings, labels, symmetric_points, only_original)) == pytest.approx(value(plain), rel=1e-12)
    assert value(built.loss.loss_with_synthesis(embeddings, labels, lambda a, p: (), slot_pair_mask(ORIGINAL_PAIR, 2))) == value(plain)
    every = slot_pair_mask([(i, j) for i in range(4) for j in range(4) if i != j], 4)
    assert value(built.loss.loss_with_synthesis(embeddings, labels, symmetric_points, every)) != pytest.approx(value(plain))
    with pytest.raises(ValueError, match=r"slot_mask must be \(4, 4\)"):
        built.loss.loss_with_synthesis(embeddings, labels, symmetric_points, only_original[:2, :2])


def test_normalize_decides_whether_the_scale_of_the_features_matters():
    embeddings, labels = batch()
    for loss, pairs in (("n_pairs", "units"), ("n_pairs", "one_per_class"), ("angular", "units")):
        raw = build_loss(loss, {"pairs": pairs, "normalize": False, "l2_reg": 0.0}, CLASSES, DIM)
        cosine = build_loss(loss, {"pairs": pairs, "normalize": True, "l2_reg": 0.0}, CLASSES, DIM)
        assert value(raw(3 * embeddings, labels)) != pytest.approx(value(raw(embeddings, labels)))
        assert value(cosine(3 * embeddings, labels)) == pytest.approx(value(cosine(embeddings, labels)), rel=1e-9)


def test_defaults_stay_pytorch_metric_learnings_losses():
    from pytorch_metric_learning import losses

    assert isinstance(build_loss("n_pairs", {}, CLASSES, DIM).loss, losses.NPairsLoss)
    angular = build_loss("angular", {}, CLASSES, DIM)
    assert isinstance(angular.loss, losses.AngularLoss) and angular.pair_based
    assert [registry.PAIR_FORMS[name][0] for name in ("n_pairs", "angular")] == [
        registry.LOSSES["n_pairs"].defaults["pairs"], registry.LOSSES["angular"].defaults["pairs"]
    ]


def test_bad_forms_are_refused_with_what_to_do():
    embeddings, labels = batch()
    with pytest.raises(ValueError, match="pairs must be one of one_per_class, units, got 'all'"):
        build_loss("n_pairs", {"pairs": "all"}, CLASSES, DIM)
    with pytest.raises(ValueError, match="AngularLoss, which works on L2-normalised embeddings: set normalize: true"):
        build_loss("angular", {"normalize": False}, CLASSES, DIM)
    units = build_loss("n_pairs", {"pairs": "units"}, CLASSES, DIM)
    with pytest.raises(ValueError, match="forms its own pairs of the batch; it takes no indices_tuple"):
        units(embeddings, labels, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([9])))
