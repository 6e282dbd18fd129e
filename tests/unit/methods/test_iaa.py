"""IAA (docs/methods.md §5): class statistics, neighbor correction (eqs. 11-16), sampling, wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlsynth import registry

from dmlsynth.methods import iaa
from dmlsynth.methods.iaa import class_statistics, corrected_variance, lambda_at, sample_synthetic
from dmlsynth.config import filled
from tests.helpers.losses import official_multi_similarity
from tests.helpers.methods import (
    EMB_DIM,
    backbone,
    batch,
    build,
    loss_and_grad,
    train_digits,
)


# Every base loss IAA works with (the registry decides; a new loss is covered without a new test).
IAA_LOSSES = sorted(l for l in registry.LOSSES if registry.METHODS["iaa"].is_compatible(l))


def direct_corrected_variance(means, variances, counts, k, sigma_m, sigma_cv, tau, beta, gamma):
    """Equations (11)-(16) evaluated one class at a time, exactly as written in docs/methods.md §5."""
    means, variances, counts = np.asarray(means, float), np.asarray(variances, float), np.asarray(counts, float)
    c = len(counts)
    global_var = sum(counts[i] * variances[i] for i in range(c)) / counts.sum()  # (14)
    out = variances.copy()
    for kk in range(c):
        if counts[kk] > tau:
            continue
        cand = [i for i in range(c) if i != kk and counts[i] > 1]
        d_m = {i: float(np.sum((means[i] ** 2 - means[kk] ** 2) ** 2)) for i in cand}
        d_cv = {i: float(np.sum((variances[i] - variances[kk]) ** 2)) for i in cand}

        def norm(d):
            lo, hi = min(d.values()), max(d.values())
            return {i: (v - lo) / (hi - lo) if hi > lo else 0.0 for i, v in d.items()}

        dm_n, dcv_n = norm(d_m), norm(d_cv)
        neighbors = sorted(cand, key=lambda i: d_m[i])[:k]  # (11)
        w = {i: counts[i] * math.exp(-dm_n[i] / (2 * sigma_m**2) - dcv_n[i] / (2 * sigma_cv**2)) for i in neighbors}  # (13)
        nb = sum(w[i] * variances[i] for i in neighbors) / sum(w.values())  # (12)
        alpha = 1.0 / (1.0 + math.log(1.0 + beta * (counts[kk] - 1)))  # (16)
        out[kk] = (1 - alpha) * variances[kk] + alpha * ((1 - gamma) * nb + gamma * global_var)  # (15)
    return out


def hand_statistics():
    g = np.random.default_rng(7)
    counts = np.array([1, 3, 60, 12, 200, 2, 45, 7], dtype=float)
    means = g.normal(size=(8, 5)) * np.array([1, 2, 0.5, 1, 3])
    variances = g.uniform(0.05, 2.0, size=(8, 5))
    return means, variances, counts


@pytest.mark.parametrize(
    "settings",
    [
        dict(k=3, sigma_m=1.0, sigma_cv=1.0, tau=40, beta=0.1, gamma=0.1),
        dict(k=2, sigma_m=0.5, sigma_cv=2.0, tau=50, beta=0.3, gamma=0.25),
        dict(k=25, sigma_m=1.0, sigma_cv=1.0, tau=40, beta=0.1, gamma=0.1),  # K above the 7 candidates
    ],
)
def test_corrected_variance_equals_direct_evaluation(settings):
    means, variances, counts = hand_statistics()
    got = corrected_variance(torch.tensor(means), torch.tensor(variances), torch.tensor(counts), **settings)
    expected = direct_corrected_variance(means, variances, counts, **settings)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    # The hand-made statistics really exercise the correction (classes with n <= tau changed).
    assert not np.allclose(expected[counts <= settings["tau"]], variances[counts <= settings["tau"]])


def test_classes_above_tau_are_unchanged():
    means, variances, counts = hand_statistics()
    got = corrected_variance(torch.tensor(means), torch.tensor(variances), torch.tensor(counts), tau=40).numpy()
    many = counts > 40
    assert many.sum() == 3
    np.testing.assert_array_equal(got[many], variances[many])


def test_few_sample_classes_move_towards_their_neighbors():
    # Class 0 (two samples) has a tiny variance; its neighbors (close means) have a large one.
    means = torch.tensor([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [5.0, 5.0]])
    variances = torch.tensor([[0.01, 0.01], [1.0, 1.2], [1.1, 0.9], [0.2, 0.2]])
    counts = torch.tensor([2.0, 100.0, 100.0, 100.0])
    got = corrected_variance(means, variances, counts, k=2, tau=40)
    neighbors = variances[1:3].mean(0)
    assert (got[0] - neighbors).norm() < (variances[0] - neighbors).norm()
    assert (got[0] > variances[0]).all()
    # A one-sample class is replaced entirely (alpha = 1): neighbor mix plus the global variance.
    counts[0] = 1.0
    single = corrected_variance(means, variances, counts, k=2, tau=40, gamma=0.0)
    assert torch.allclose(single[0], torch.lerp(variances[1], variances[2], 0.5), atol=0.1)
    assert torch.equal(single[1:], variances[1:])


def test_class_statistics_are_mean_and_biased_variance():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(40, 6, generator=g)
    classes = torch.randint(0, 3, (40,), generator=g)
    means, variances, counts = class_statistics(emb, classes, 4)
    for c in range(3):
        rows = emb[classes == c].double()
        assert torch.allclose(means[c], rows.mean(0)) and torch.allclose(variances[c], rows.var(0, unbiased=False))
        assert counts[c] == len(rows)
    assert counts[3] == 0 and torch.equal(variances[3], torch.zeros(6, dtype=torch.float64))


def test_samples_have_mean_z_and_variance_lambda_sigma():
    g = torch.Generator().manual_seed(0)
    z = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    sigma = torch.tensor([[0.5, 2.0, 0.1], [1.0, 0.3, 4.0]])
    lam, m = 0.8, 20000
    draws = sample_synthetic(z, lam * sigma, m, g).reshape(2, m, 3)
    mean, var = draws.mean(1), draws.var(1)
    # Standard error of the mean sqrt(var/m); of the variance var*sqrt(2/m). Allow 5 standard errors.
    assert ((mean - z).abs() < 5 * (lam * sigma / m).sqrt()).all()
    assert ((var - lam * sigma).abs() < 5 * lam * sigma * math.sqrt(2 / m)).all()


def test_lambda_schedule():
    assert [lambda_at(e, 10, 0.8) for e in range(10)] == pytest.approx(
        [0.8] * 4 + [0.72] * 2 + [0.6] * 2 + [0.48] * 2
    )


def statistics_of(inputs, labels, seed=0):
    with torch.no_grad():
        return lambda: (backbone(seed)(inputs) * 1.0, labels)


def active_iaa(loss, inputs, labels, **params):
    method = build("iaa", loss, params, embed_training_set=statistics_of(inputs, labels))
    method.on_epoch_start(1)  # after the one-epoch warm-up: statistics estimated, synthesis on
    return method


class Spy(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.inner, self.calls = loss, []

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        self.calls.append((embeddings.shape[0], labels, indices_tuple, ref_emb, ref_labels))
        return self.inner(embeddings, labels, indices_tuple, ref_emb, ref_labels)


@pytest.mark.parametrize("loss", sorted(registry.PAIR_BASED_LOSSES))
def test_originals_are_anchors_and_own_copies_are_not_positives(loss):
    inputs, labels = batch()
    method = active_iaa(loss, inputs, labels)
    method.base_loss.loss = Spy(method.base_loss.loss)
    method(backbone()(inputs), labels)
    n_anchor, anchor_labels, indices, ref_emb, ref_labels = method.base_loss.loss.calls[-1]
    n, m = len(labels), 3
    assert n_anchor == n and ref_emb.shape[0] == n * (1 + m)
    owner = torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(m)])
    anchors, positives = indices[0], indices[1]
    assert len(anchors) > 0 and (anchors < n).all()
    assert torch.equal(anchor_labels[anchors], ref_labels[positives])
    assert (owner[positives] != anchors).all()  # neither itself nor its own synthetic copies
    assert (positives >= n).any()  # synthetics of other samples are positives
    negatives = indices[-1]
    assert (negatives >= n).any() and (ref_labels[negatives] != anchor_labels[indices[0] if loss == "triplet" else indices[2]]).all()
    if loss == "contrastive":  # no miner: every valid positive is used
        assert len(anchors) == n * ((8 - 1) * (1 + m))


def test_proxy_anchor_gets_synthetics_as_extra_samples():
    inputs, labels = batch()
    method = active_iaa("proxy_anchor", inputs, labels)
    method.base_loss.loss = Spy(method.base_loss.loss)
    method(backbone()(inputs), labels)
    n_rows, row_labels, indices, ref_emb, _ = method.base_loss.loss.calls[-1]
    assert n_rows == 4 * len(labels) and indices is None and ref_emb is None
    assert torch.equal(row_labels[len(labels):], labels.repeat_interleave(3))


@pytest.mark.parametrize("loss", IAA_LOSSES)
@pytest.mark.parametrize("off", [{"lambda": 0.0}, {"num_synthetic": 0}, {"warmup_epochs": 5}])
def test_switched_off_is_exactly_baseline(loss, off):
    inputs, labels = batch()
    method = active_iaa(loss, inputs, labels, **off)
    got = loss_and_grad(method, inputs, labels)
    base = loss_and_grad(build("baseline", loss), inputs, labels)
    assert got[0] == base[0] and torch.equal(got[1], base[1])
    on = loss_and_grad(active_iaa(loss, inputs, labels), inputs, labels)
    assert on[0] != base[0]


@pytest.mark.parametrize("loss", IAA_LOSSES)
def test_gradients_flow_to_the_backbone(loss):
    inputs, labels = batch()
    value, grad = loss_and_grad(active_iaa(loss, inputs, labels), inputs, labels)
    assert value > 0 and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_neighbor_correction_switch_and_state_in_buffers():
    inputs, labels = batch()
    # Few samples per class (n = 8 <= tau): the correction changes the sampling variances.
    corrected = active_iaa("multi_similarity", inputs, labels)
    plain = active_iaa("multi_similarity", inputs, labels, neighbor_correction=False)
    assert torch.equal(plain.sampling_variances, plain.variances.float())
    assert not torch.allclose(corrected.sampling_variances, plain.sampling_variances)
    state = corrected.state_dict()
    for name in ("means", "variances", "counts", "sampling_variances", "estimated", "current_lambda"):
        assert name in state
    assert float(state["current_lambda"]) == pytest.approx(0.8)


def test_momentum_blends_new_estimates():
    inputs, labels = batch()
    shifted = [0]

    def embed():
        shifted[0] += 1
        return backbone()(inputs).detach() + (shifted[0] - 1) * 2.0, labels

    method = build("iaa", "multi_similarity", {"momentum": 0.25, "update_every": 1}, embed_training_set=embed)
    method.on_epoch_start(1)
    first = method.means.clone()
    method.on_epoch_start(2)
    assert torch.allclose(method.means, 0.25 * first + 0.75 * (first + 2.0))


def test_iaa_trains_and_resumes_identically_on_digits(config, digits_manifest, tmp_path):
    from tests.helpers.training import Interrupted, stop_after

    full = train_digits("iaa", "multi_similarity", config, digits_manifest, tmp_path / "full")
    assert len(full["history"]) == 2
    with pytest.raises(Interrupted):
        train_digits("iaa", "multi_similarity", config, digits_manifest, tmp_path / "cut", callbacks=[stop_after(1)])
    resumed = train_digits("iaa", "multi_similarity", config, digits_manifest, tmp_path / "cut")
    assert torch.equal(full["embeddings"], resumed["embeddings"])


def test_multi_similarity_mines_each_anchor_without_its_own_copies(monkeypatch):
    # Unit vectors at these angles (degrees): class 0 originals at 0 and 10, class 1 at 60 and 70; one copy
    # each, in owner order. The copy of the first original lies at -65: it is that anchor's least similar
    # same-class candidate, so a miner that lets it set the threshold (s + ε > min positive) picks
    # negatives the official loss does not: there the anchor has no hard negative and adds nothing.
    def unit(degrees):
        radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
        return torch.nn.functional.pad(torch.stack([radians.cos(), radians.sin()], dim=1), (0, EMB_DIM - 2))

    originals = unit([0.0, 10.0, 60.0, 70.0]).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1])
    copies = unit([-65.0, 12.0, 62.0, 72.0])
    monkeypatch.setattr(iaa, "sample_synthetic", lambda embeddings, *args, **kwargs: embeddings * 0 + copies)
    inputs, batch_labels = batch()
    method = active_iaa("multi_similarity", inputs, batch_labels, num_synthetic=1)
    got = method(originals, labels)
    (got_grad,) = torch.autograd.grad(got, originals)

    p = registry.loss_params("multi_similarity", filled({}), "iaa")
    owner = torch.arange(4).repeat(2)
    args = (labels, torch.cat([originals, copies]), labels.repeat(2), owner)
    expected = official_multi_similarity(originals, *args, p["alpha"], p["beta"], p["base"], p["miner_epsilon"])
    (expected_grad,) = torch.autograd.grad(expected, originals)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-6, atol=1e-9)
    # The batch tells the rules apart: counting the own copy as a positive when mining changes the loss.
    everything = official_multi_similarity(originals, *args[:3], torch.full((8,), -1), p["alpha"], p["beta"], p["base"], p["miner_epsilon"])
    assert float(everything.detach()) > float(expected.detach()) * 1.01


def test_a_class_with_exactly_tau_samples_is_corrected_and_one_more_is_not():
    means, variances, counts = hand_statistics()
    at_tau = counts == 45
    settings = dict(k=3, sigma_m=1.0, sigma_cv=1.0, beta=0.1, gamma=0.1)
    got = corrected_variance(torch.tensor(means), torch.tensor(variances), torch.tensor(counts), tau=45, **settings).numpy()
    np.testing.assert_allclose(got, direct_corrected_variance(means, variances, counts, tau=45, **settings), rtol=1e-10)
    assert at_tau.sum() == 1 and not np.allclose(got[at_tau], variances[at_tau])  # n_k ≤ τ (eq. 16)
    below = corrected_variance(torch.tensor(means), torch.tensor(variances), torch.tensor(counts), tau=44, **settings).numpy()
    np.testing.assert_array_equal(below[at_tau], variances[at_tau])


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_neighbor_correction_weights_by_the_counts_of_this_estimate(variant):
    # Two estimates of the same training set: the counts seen so far are twice this estimate's, which would
    # change α (eq. 16) and which classes are corrected (n_k ≤ τ). Eqs. 13, 14 and 16 take this estimate's n.
    g = torch.Generator().manual_seed(3)
    classes = torch.tensor([0] * 3 + [1] * 12 + [2] * 25 + [3] * 30 + [4] * 60)
    embeddings = torch.randn(len(classes), EMB_DIM, generator=g) * (1 + classes[:, None])
    method = build(
        "iaa", "multi_similarity", {"variant": variant, "update_every": 1, "neighbor_correction": True},
        embed_training_set=lambda **_: (embeddings, classes),
    )
    method.update_statistics(embeddings, classes)
    method.update_statistics(embeddings + 0.1, classes)
    counts = torch.bincount(classes).double()
    assert torch.equal(method.seen_counts, 2 * counts)
    expected = corrected_variance(method.means, method.variances, counts, **method.correction)
    torch.testing.assert_close(method.sampling_variances, expected.float())
    seen = corrected_variance(method.means, method.variances, method.seen_counts, **method.correction)
    assert not torch.allclose(seen.float(), expected.float(), rtol=1e-3)
