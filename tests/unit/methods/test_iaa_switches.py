"""IAA's paper / official-code switches (issue #11): each key changes what it says, and the
per-method loss override reaches the loss IAA trains with."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dmlsynth import config as cfg
from dmlsynth import registry
from dmlsynth.losses import build_loss
from dmlsynth.methods.iaa import class_statistics, merge_statistics, sample_synthetic, spread_powers, start_epoch
from tests.helpers.methods import backbone, batch, build, loss_and_grad


def recorder(inputs, labels):
    """An embed_training_set that records how it was called."""
    calls = []

    def embed(**kwargs):
        calls.append(kwargs)
        with torch.no_grad():
            return backbone()(inputs), labels

    return embed, calls


# --- variants -------------------------------------------------------------------------------


def test_variant_sets_the_defaults_of_its_keys_and_a_given_key_wins():
    spec = registry.METHODS["iaa"]
    paper, official = spec.resolve(), spec.resolve({"variant": "official"})
    assert paper["variant"] == "paper" and paper["start_fraction"] == 0 and paper["copy_spread"] == "equal"
    assert (official["start_fraction"], official["statistics_update"], official["momentum"]) == (0.3, "count_weighted", 0.2)
    assert (official["estimation_images"], official["copy_spread"], official["neighbor_correction"]) == (
        "augmented", "repeated_root", False
    )
    mixed = spec.resolve({"variant": "official", "copy_spread": "equal"})
    assert mixed["copy_spread"] == "equal" and mixed["statistics_update"] == "count_weighted"
    with pytest.raises(ValueError, match="no variant 'code'"):
        spec.resolve({"variant": "code"})


def test_variant_in_the_config_reaches_the_run_params(default_params):
    config = copy.deepcopy(default_params)
    config["method_params"] = {"iaa": {"variant": "official", "momentum": 0.1}}
    params = cfg.run_params(cfg.validate(config), "digits", "iaa", "multi_similarity", 0)["method_params"]
    assert params["variant"] == "official" and params["momentum"] == 0.1 and params["start_fraction"] == 0.3
    config["method_params"] = {"iaa": {"copy_spread": "wide"}}
    with pytest.raises(cfg.ConfigError, match="method_params.iaa.copy_spread: 'wide' is not allowed; allowed values: equal, repeated_root"):
        cfg.validate(config)


# --- synthesis start --------------------------------------------------------------------------


def test_start_epoch_is_the_first_epoch_past_the_fraction_and_the_warmup():
    assert start_epoch(0.3, 0, 100) == 30  # official: synthesis from (1-based) epoch 31 of 100
    assert start_epoch(0.3, 0, 10) == 3 and start_epoch(0.25, 0, 10) == 3
    assert start_epoch(0.0, 1, 10) == 1 and start_epoch(0.3, 5, 10) == 5


@pytest.mark.parametrize("variant,first", [("paper", 1), ("official", 3)])
def test_synthesis_is_off_before_the_start_and_on_from_it(variant, first):
    inputs, labels = batch()
    embed, calls = recorder(inputs, labels)
    method = build("iaa", "multi_similarity", {"variant": variant}, embed_training_set=embed, num_epochs=10)
    baseline = loss_and_grad(build("baseline", "multi_similarity"), inputs, labels)
    for epoch in range(first):
        method.on_epoch_start(epoch)
        assert not method.active and calls == []
        got = loss_and_grad(method, inputs, labels)
        assert got[0] == baseline[0] and torch.equal(got[1], baseline[1])
    method.on_epoch_start(first)
    assert method.active and len(calls) == 1
    assert loss_and_grad(method, inputs, labels)[0] != baseline[0]


@pytest.mark.parametrize("variant,every,estimated_at", [("paper", 4, [1, 5, 9]), ("official", 2, [3, 5, 7, 9])])
def test_statistics_are_re_estimated_every_update_every_epochs_of_the_variant(variant, every, estimated_at):
    """Paper: every 4 epochs; darkpromise98/IAA run.py: update_every_M_epoch 2, from the first synthesis epoch."""
    assert registry.METHODS["iaa"].resolve({"variant": variant})["update_every"] == every
    inputs, labels = batch()
    embed, calls = recorder(inputs, labels)
    method = build("iaa", "multi_similarity", {"variant": variant}, embed_training_set=embed, num_epochs=10)
    estimated = []
    for epoch in range(10):
        before = len(calls)
        method.on_epoch_start(epoch)
        if len(calls) > before:
            estimated.append(epoch)
    assert estimated == estimated_at


# --- statistics update ------------------------------------------------------------------------


def test_count_weighted_update_with_free_weights_pools_the_two_sets_exactly():
    """With momentum 1 (no floor on the fresh weight) w = n / (n + n_seen): mean and biased variance of the union."""
    g = torch.Generator().manual_seed(3)
    first, second = torch.randn(30, 4, generator=g, dtype=torch.float64), 2 + 3 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    zeros = torch.zeros(30, dtype=torch.long)
    old = class_statistics(first, zeros, 1)
    fresh = class_statistics(second, torch.zeros(50, dtype=torch.long), 1)
    means, variances, seen = merge_statistics("count_weighted", old, fresh, momentum=1.0)
    union = torch.cat([first, second])
    assert torch.allclose(means[0], union.mean(0)) and torch.allclose(variances[0], union.var(0, unbiased=False))
    assert seen[0] == 80


def test_count_weighted_update_equals_the_official_formula_with_its_floor():
    old_means, old_vars, seen = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 2.0]]), torch.tensor([400.0])
    means, variances, counts = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([100.0])
    got = merge_statistics("count_weighted", (old_means, old_vars, seen), (means, variances, counts), momentum=0.2)
    w = max(100 / 500, 0.8)  # the fresh estimate gets at least 80 %
    assert torch.allclose(got[0], (1 - w) * old_means + w * means)
    assert torch.allclose(got[1], (1 - w) * old_vars + w * variances + w * (1 - w) * (old_means - means) ** 2)
    momentum = merge_statistics("momentum", (old_means, old_vars, seen), (means, variances, counts), momentum=0.2)
    assert torch.allclose(momentum[0], 0.2 * old_means + 0.8 * means) and torch.allclose(momentum[1], 0.2 * old_vars + 0.8 * variances)
    # A class without fresh samples keeps its estimate.
    kept = merge_statistics("count_weighted", (old_means, old_vars, seen), (means, variances, torch.tensor([0.0])), 0.2)
    assert torch.equal(kept[0], old_means) and torch.equal(kept[1], old_vars)


def test_the_update_rule_switch_is_what_the_method_applies():
    inputs, labels = batch()
    step = [0]

    def embed(**_):
        step[0] += 1
        return backbone()(inputs).detach() * (1.0 + 0.5 * (step[0] - 1)), labels

    results = {}
    for rule in ("momentum", "count_weighted"):
        step[0] = 0
        method = build("iaa", "multi_similarity", {"statistics_update": rule, "momentum": 0.3, "update_every": 1}, embed_training_set=embed)
        method.on_epoch_start(1)
        first = (method.means.clone(), method.variances.clone(), method.seen_counts.clone())
        method.on_epoch_start(2)
        fresh = class_statistics(backbone()(inputs).detach() * 1.5, labels, 5)  # what the second call returned
        expected = merge_statistics(rule, first, fresh, 0.3)
        assert torch.allclose(method.means, expected[0]) and torch.allclose(method.variances, expected[1])
        results[rule] = method.variances.clone()
    assert not torch.allclose(results["momentum"], results["count_weighted"])  # the cross term and weights differ


# --- estimation images ------------------------------------------------------------------------


@pytest.mark.parametrize("images,expected", [("centre_crop", {}), ("augmented", {"augmented": True})])
def test_estimation_images_switch_asks_for_those_images(images, expected):
    inputs, labels = batch()
    embed, calls = recorder(inputs, labels)
    build("iaa", "multi_similarity", {"estimation_images": images}, embed_training_set=embed).on_epoch_start(1)
    assert calls == [expected]


def test_training_run_embeds_augmented_training_images_on_request(config, digits_manifest):
    from dmlsynth.training.build import build_run

    config = dict(config, methods=["iaa"], losses=["multi_similarity"])
    run = build_run(cfg.run_params(cfg.validate(config), "digits", "iaa", "multi_similarity", 0), digits_manifest)
    plain, plain_labels = run.method.context.embed_training_set()
    again, _ = run.method.context.embed_training_set()
    augmented, augmented_labels = run.method.context.embed_training_set(augmented=True)
    assert torch.equal(plain, again) and torch.equal(plain_labels, augmented_labels)
    assert plain.shape == augmented.shape and not torch.allclose(plain, augmented)


# --- per-copy spread --------------------------------------------------------------------------


def test_spread_powers():
    assert spread_powers("equal", 3) == [0.5, 0.5, 0.5]
    assert spread_powers("repeated_root", 3) == [0.5, 0.25, 0.125]


def test_repeated_root_copies_have_the_official_spreads():
    g = torch.Generator().manual_seed(0)
    z = torch.tensor([[1.0, -2.0, 0.5]])
    sigma = torch.tensor([[0.04, 2.0, 9.0]])
    lam, reps = 0.8, 20000
    draws = sample_synthetic(z.expand(reps, 3), sigma.expand(reps, 3), 3, g, scale=lam, powers=spread_powers("repeated_root", 3))
    draws = draws.reshape(reps, 3, 3)
    for copy_index, power in enumerate([0.5, 0.25, 0.125]):
        std = draws[:, copy_index].std(0)
        expected = math.sqrt(lam) * sigma[0] ** power
        assert ((std - expected).abs() < 5 * expected / math.sqrt(2 * reps)).all()
    # The default (equal) is N(z, λΣ) for every copy, as before.
    equal = sample_synthetic(z.expand(reps, 3), sigma.expand(reps, 3), 3, torch.Generator().manual_seed(0), scale=lam)
    assert torch.allclose(equal, sample_synthetic(z.expand(reps, 3), lam * sigma.expand(reps, 3), 3, torch.Generator().manual_seed(0)), atol=1e-6)


def test_copy_spread_switch_changes_the_synthetics():
    inputs, labels = batch()
    embed, _ = recorder(inputs, labels)
    values = []
    for spread in ("equal", "repeated_root"):
        method = build("iaa", "multi_similarity", {"copy_spread": spread}, embed_training_set=embed)
        method.on_epoch_start(1)
        values.append(loss_and_grad(method, inputs, labels)[0])
    assert values[0] != values[1]


# --- triplet: hardest negative ----------------------------------------------------------------


class Spy(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.inner, self.calls = loss, []

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        self.calls.append((embeddings, labels, indices_tuple, ref_emb, ref_labels))
        return self.inner(embeddings, labels, indices_tuple, ref_emb, ref_labels)


@pytest.mark.parametrize("negatives", ["hardest", "all"])
def test_triplet_uses_each_anchors_hardest_negative_candidate(negatives):
    inputs, labels = batch()
    embed, _ = recorder(inputs, labels)
    method = build("iaa", "triplet", {"triplet_negatives": negatives}, embed_training_set=embed)
    method.on_epoch_start(1)
    method.base_loss.loss = Spy(method.base_loss.loss)
    method(backbone()(inputs), labels)
    embeddings, anchor_labels, (a, p, n), ref_emb, ref_labels = method.base_loss.loss.calls[-1]
    anchors, candidates = F.normalize(embeddings.detach(), dim=1), F.normalize(ref_emb.detach(), dim=1)
    distance = torch.cdist(anchors, candidates)
    distance[anchor_labels[:, None] == ref_labels[None, :]] = float("inf")
    hardest = distance.argmin(dim=1)
    if negatives == "hardest":
        assert torch.equal(n, hardest[a])
        # Every allowed positive of every anchor appears once (7 other originals and their 3 copies each).
        assert len(a) == len(labels) * 7 * 4
    else:
        assert (n != hardest[a]).any() and len(a) == len(labels) * 7 * 4 * 32 * 4


# --- contrastive reduction --------------------------------------------------------------------


def test_contrastive_batch_sum_is_the_official_reduction():
    g = torch.Generator().manual_seed(1)
    embeddings = torch.randn(24, 8, generator=g)
    labels = torch.arange(6).repeat_interleave(4)
    loss = build_loss("contrastive", {"reduction": "batch_sum"}, 6, 8)
    x = F.normalize(embeddings, dim=1)
    sim = x @ x.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(24, dtype=torch.bool)
    direct = (F.relu(0.8 - sim[same & off_diagonal]).sum() + F.relu(sim[~same] - 0.5).sum()) / 24
    assert float(loss(embeddings, labels)) == pytest.approx(float(direct), rel=1e-5)
    default = build_loss("contrastive", {}, 6, 8)
    assert float(default(embeddings, labels)) != pytest.approx(float(direct), rel=1e-3)


# --- per-method loss override -----------------------------------------------------------------


def test_method_loss_params_reach_only_that_methods_loss(default_params):
    config = copy.deepcopy(default_params)
    config["methods"], config["losses"] = ["baseline", "iaa"], ["multi_similarity", "contrastive"]
    config["method_loss_params"] = {"iaa": {"multi_similarity": {"beta": 40}, "contrastive": {"reduction": "batch_sum"}}}
    config = cfg.validate(config)
    iaa = cfg.run_params(config, "digits", "iaa", "multi_similarity", 0)["loss_params"]
    base = cfg.run_params(config, "digits", "baseline", "multi_similarity", 0)["loss_params"]
    assert iaa["beta"] == 40 and base["beta"] == 50.0 and iaa["alpha"] == base["alpha"]
    assert cfg.run_params(config, "digits", "iaa", "contrastive", 0)["loss_params"]["reduction"] == "batch_sum"
    assert cfg.run_params(config, "digits", "baseline", "contrastive", 0)["loss_params"]["reduction"] == "mean_nonzero"


def test_iaa_ms_beta_reaches_the_pml_loss_object(config, digits_manifest):
    from dmlsynth.training.build import build_run

    config = dict(config, methods=["iaa"], losses=["multi_similarity"])
    config["method_loss_params"] = {"iaa": {"multi_similarity": {"beta": 40}}}
    run = build_run(cfg.run_params(cfg.validate(config), "digits", "iaa", "multi_similarity", 0), digits_manifest)
    assert run.method.base_loss is run.base_loss
    assert run.base_loss.loss.beta == 40 and run.base_loss.loss.alpha == 2.0


@pytest.mark.parametrize(
    "override,message",
    [
        ({"iaa": {"multi_similarity": {"gamma": 1}}}, "method_loss_params.iaa.multi_similarity: Additional properties are not allowed ('gamma' was unexpected); allowed keys: alpha, base, beta, miner_epsilon"),
        ({"iaa": {"arcface": {"margin": 1}}}, "method_loss_params.iaa: 'arcface' is not allowed; allowed values: angular"),
        ({"nope": {"triplet": {"margin": 1}}}, "method_loss_params: 'nope' is not allowed; allowed values: baseline"),
        ({"iaa": {"triplet": {"margin": -1}}}, "method_loss_params.iaa.triplet.margin: -1 is less than the minimum of 0"),
    ],
)
def test_bad_method_loss_params_say_what_is_wrong(default_params, override, message):
    config = copy.deepcopy(default_params)
    config["method_loss_params"] = override
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    assert message in str(info.value)
