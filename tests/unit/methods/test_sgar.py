"""SGAR (METHODS.md §6, project definition): graded positives, ranking loss, wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlsynth.methods.sgar import graded_positives, graded_similarity_matrix, ranking_loss
from tests.helpers.methods import (
    backbone,
    batch,
    build,
    loss_and_grad,
    train_digits,
)


def test_graded_positives_are_unit_vectors_with_strictly_falling_similarity():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(30, 16, generator=g, dtype=torch.float64) * 4
    graded = graded_positives(p, steps=5, delta=0.2, generator=g)
    assert graded.shape == (5, 30, 16)
    assert torch.allclose(graded.norm(dim=2), torch.ones(5, 30, dtype=torch.float64))
    sims = F.cosine_similarity(graded, p[None].expand_as(graded), dim=2)  # (5, 30)
    expected = torch.tensor([1 / math.sqrt(1 + (0.2 * j) ** 2) for j in range(1, 6)], dtype=torch.float64)
    assert torch.allclose(sims, expected[:, None].expand_as(sims))
    assert (sims[1:] < sims[:-1]).all() and (sims[0] < 1).all()
    # All steps of a row move along one direction u perpendicular to p.
    p_hat = F.normalize(p, dim=1)
    u1 = F.normalize(graded[0] / (graded[0] * p_hat).sum(1, keepdim=True) - p_hat, dim=1)
    u3 = F.normalize(graded[2] / (graded[2] * p_hat).sum(1, keepdim=True) - p_hat, dim=1)
    assert torch.allclose(u1, u3) and torch.allclose((u1 * p_hat).sum(1), torch.zeros(30, dtype=torch.float64), atol=1e-12)


def test_graded_positives_are_reproducible_from_the_generator():
    p = torch.randn(4, 8)
    a = graded_positives(p, generator=torch.Generator().manual_seed(5))
    b = graded_positives(p, generator=torch.Generator().manual_seed(5))
    c = graded_positives(p, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ranking_loss_is_zero_when_the_order_holds_and_positive_otherwise():
    ordered = torch.tensor([[0.9, 0.5], [0.8, 0.4], [0.7, 0.3]])  # falling by 0.1 per step
    assert ranking_loss(ordered, margin=0.01) == 0
    assert ranking_loss(ordered, margin=0.09) == 0  # gaps wider than the margin
    # A margin wider than the gaps: [−0.1 + 0.15]+ per step, 2 steps, both columns.
    assert ranking_loss(ordered, margin=0.15) == pytest.approx(0.1)
    swapped = ordered.clone()
    swapped[[1, 2], 0] = swapped[[2, 1], 0]  # column 0 out of order between steps 1 and 2
    # column 0: [0.7-0.9+0.01]+ + [0.8-0.7+0.01]+ = 0.11; column 1: 0 -> mean 0.055
    assert ranking_loss(swapped, margin=0.01) == pytest.approx(0.055)


def test_closed_form_similarities_equal_the_explicit_graded_samples_with_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, generator=g, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    closed = graded_similarity_matrix(x1, 3, 0.2, torch.Generator().manual_seed(9))
    graded = graded_positives(x2, 3, 0.2, torch.Generator().manual_seed(9))  # (3, N, D)
    x_hat = F.normalize(x2, dim=1)
    explicit = torch.cat([(x_hat @ x_hat.T)[None], torch.einsum("id,jkd->jik", x_hat, graded)])
    assert torch.allclose(closed, explicit)
    weights = torch.randn(closed.shape, generator=g, dtype=torch.float64)
    (closed * weights).sum().backward()
    (explicit * weights).sum().backward()
    assert torch.allclose(x1.grad, x2.grad)


def test_rank_loss_equals_a_direct_evaluation_over_pairs_above_the_median():
    inputs, labels = batch()
    method = build("sgar", "multi_similarity", {"margin": 0.05})
    emb = backbone()(inputs).detach().double()
    got = method.rank_loss(emb, labels)
    graded = graded_positives(emb, 4, 0.1, torch.Generator().manual_seed(0))  # the method's seed-0 stream
    x_hat = F.normalize(emb, dim=1)
    pairs = [(i, k) for i in range(len(labels)) for k in range(len(labels)) if i != k and labels[i] == labels[k]]
    sims = torch.tensor([float(x_hat[i] @ x_hat[k]) for i, k in pairs], dtype=torch.float64)
    median = sims.median() if len(sims) % 2 else sims.sort().values[len(sims) // 2 - 1 : len(sims) // 2 + 1].mean()
    terms = []
    for (i, k), s_ap in zip(pairs, sims):
        if s_ap <= median:
            continue
        chain = [float(s_ap)] + [float(x_hat[i] @ graded[j, k]) for j in range(4)]
        terms.append(sum(max(0.0, chain[j + 1] - chain[j] + 0.05) for j in range(4)))
    assert len(terms) == len(pairs) // 2  # strictly above the median of 280 distinct similarities
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)


@pytest.mark.parametrize("loss", ["multi_similarity", "contrastive", "triplet", "proxy_anchor"])
def test_weight_zero_is_exactly_baseline(loss):
    inputs, labels = batch()
    off = loss_and_grad(build("sgar", loss, {"weight": 0.0}), inputs, labels)
    base = loss_and_grad(build("baseline", loss), inputs, labels)
    assert off[0] == base[0] and torch.equal(off[1], base[1])


@pytest.mark.parametrize("loss", ["multi_similarity", "contrastive", "triplet", "proxy_anchor"])
def test_total_is_base_plus_weighted_rank_loss_and_gradients_flow(loss):
    inputs, labels = batch()
    method = build("sgar", loss, {"weight": 2.0, "margin": 0.05})
    emb = backbone()(inputs)
    rank = method.rank_loss(emb, labels)
    assert rank > 0
    method.context.generator.manual_seed(0)
    total = method(emb, labels)
    assert total.item() == pytest.approx((method.base_loss(emb, labels) + 2.0 * rank).item(), rel=1e-5)
    value, grad = loss_and_grad(build("sgar", loss), inputs, labels)
    base_grad = loss_and_grad(build("baseline", loss), inputs, labels)[1]
    assert torch.isfinite(grad).all() and not torch.allclose(grad, base_grad)


def test_sgar_trains_on_digits(config, digits_manifest, tmp_path):
    result = train_digits("sgar", "multi_similarity", config, digits_manifest, tmp_path / "run")
    assert len(result["history"]) == 2 and all(row["loss"] > 0 for row in result["history"])
