"""Symmetrical Synthesis (docs/methods.md §4): reflections, hardest negative pair mining, wiring."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dmlsynth.config import filled
from dmlsynth import registry
from dmlsynth.config import ConfigError, validate
from dmlsynth.losses import unit_logits
from dmlsynth.methods.symm import (
    candidate_mask,
    hardest_negative_pairs,
    pair_units,
    resolve_candidates,
    symmetric_points,
)
from tests.helpers.methods import batch, build, loss_and_grad, train_digits

SYMM_LOSSES = sorted(loss for loss in registry.LOSSES if registry.METHODS["symm"].is_compatible(loss))
NEGATIVE_PAIR_LOSSES = sorted(registry.NEGATIVE_PAIR_LOSSES)


def test_symmetric_points_hand_example():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 1.0]])
    s1, s2 = symmetric_points(a, p)
    assert torch.allclose(s1, torch.tensor([[1.0, -1.0]]), atol=1e-6)  # p mirrored in the a-axis (x axis)
    assert torch.allclose(s2, torch.tensor([[0.0, 1.0]]), atol=1e-6)  # a mirrored in the diagonal


def test_symmetric_points_keep_norm_and_similarity_and_are_involutions():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 32, generator=g, dtype=torch.float64) * 3
    p = torch.randn(50, 32, generator=g, dtype=torch.float64)
    s1, s2 = symmetric_points(a, p)
    assert torch.allclose(s1.norm(dim=1), p.norm(dim=1))
    assert torch.allclose(s2.norm(dim=1), a.norm(dim=1))
    assert torch.allclose((s1 * a).sum(1), (p * a).sum(1))
    assert torch.allclose((s2 * p).sum(1), (a * p).sum(1))
    assert torch.allclose(F.cosine_similarity(s1, a), F.cosine_similarity(p, a))
    # They are new points, not copies.
    assert (s1 - p).norm(dim=1).min() > 1e-3 and (s2 - a).norm(dim=1).min() > 1e-3
    # Reflecting twice returns the input.
    assert torch.allclose(symmetric_points(a, s1)[0], p)
    assert torch.allclose(symmetric_points(s2, p)[1], a)


def test_symmetric_points_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        symmetric_points(torch.zeros(3, 4), torch.zeros(2, 4))


def test_pair_units_pairs_same_class_samples_and_keeps_odd_ones_single():
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 0, 0, 1, 2, 2])
    anchors, positives, singles = pair_units(labels)
    assert torch.equal(labels[anchors], labels[positives])
    used = torch.cat([anchors, positives, singles]).sort().values
    assert torch.equal(used, torch.arange(len(labels)))  # every sample exactly once
    assert sorted(labels[singles].tolist()) == [2]  # class 2 has five samples, the others even counts
    # Batch order within a class: 1st with 2nd, 3rd with 4th.
    assert (anchors.tolist(), positives.tolist())[0][:2] == [1, 6]
    assert positives.tolist()[:2] == [4, 7]


# What each `candidates` option says it searches, written out point by point.
SLOT_NAMES = ["a", "p", "s1", "s2"]
SEARCHED = {
    "all": [(x, y) for x in SLOT_NAMES for y in SLOT_NAMES],
    "official": [("a", "p"), ("a", "s1"), ("a", "s2"), ("p", "s1"), ("p", "s2"), ("s1", "s2")],
    "anchor": [("a", "a"), ("a", "p"), ("a", "s1"), ("a", "s2")],
}


def brute_force_hardest(sim, units, unit_labels, candidates="all"):
    """The hardest pair between every two units over the slot pairs ``candidates`` names (all of a single's)."""
    rows, cols = [], []
    searched = [(SLOT_NAMES.index(x), SLOT_NAMES.index(y)) for x, y in SEARCHED[candidates]]
    for u, v in itertools.product(range(len(units)), repeat=2):
        if unit_labels[u] == unit_labels[v]:
            continue
        pairs = [(units[u][x], units[v][y]) for x, y in searched if units[u][x] >= 0 and units[v][y] >= 0]
        if not pairs:  # a single sample: every pair of its points with the other unit's
            pairs = [(i, j) for i in units[u] for j in units[v] if i >= 0 and j >= 0]
        best_pair = max(pairs, key=lambda ij: sim[ij[0]][ij[1]])  # first maximum, in slot order
        rows.append(best_pair[0])
        cols.append(best_pair[1])
    return rows, cols


@pytest.mark.parametrize("candidates", ["all", "official", "anchor"])
def test_hardest_negative_pairs_equals_brute_force(candidates):
    g = torch.Generator().manual_seed(3)
    points = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    sim = points @ points.T
    units = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19],
                          [20, 21, 22, 23], [24, -1, -1, -1], [25, 26, 27, 28]])
    unit_labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 2])
    rows, cols = hardest_negative_pairs(sim, units, unit_labels, candidate_mask(candidates))
    expected_rows, expected_cols = brute_force_hardest(sim.tolist(), units.tolist(), unit_labels.tolist(), candidates)
    assert rows.tolist() == expected_rows and cols.tolist() == expected_cols
    assert len(expected_rows) == 8 * 8 - 16  # every ordered pair of units of different classes


def test_candidate_options_search_what_they_say():
    assert candidate_mask("all").sum() == 16 and candidate_mask("official").sum() == 6 and candidate_mask("anchor").sum() == 4
    # official: a point of u is paired only with a later slot of v; anchor: u's anchor only.
    for name in ("all", "official", "anchor"):
        expected = {(SLOT_NAMES.index(x), SLOT_NAMES.index(y)) for x, y in SEARCHED[name]}
        assert {tuple(ij) for ij in torch.nonzero(candidate_mask(name)).tolist()} == expected
    with pytest.raises(ValueError, match="candidates must be one of all, official, anchor"):
        candidate_mask("some")
    # The options give different hardest pairs on the same points.
    g = torch.Generator().manual_seed(4)
    points = F.normalize(torch.randn(16, 6, generator=g), dim=1)
    units = torch.arange(16).reshape(4, 4)
    found = {name: hardest_negative_pairs(points @ points.T, units, torch.arange(4), candidate_mask(name)) for name in SEARCHED}
    assert not torch.equal(torch.stack(found["all"]), torch.stack(found["official"]))
    assert not torch.equal(torch.stack(found["official"]), torch.stack(found["anchor"]))


def test_the_method_searches_its_configured_candidates():
    inputs, labels = batch(per_class=6)
    values = {name: loss_and_grad(build("symm", "multi_similarity", {"candidates": name}), inputs, labels)[0] for name in SEARCHED}
    assert len(set(values.values())) == 3
    # The default picks by loss: the official code's combinations, and for triplet the paper's figure.
    assert build("symm", "multi_similarity").params["candidates"] == "by_loss"
    assert loss_and_grad(build("symm", "multi_similarity"), inputs, labels)[0] == values["official"]
    triplet = {name: loss_and_grad(build("symm", "triplet", {"candidates": name}), inputs, labels)[0] for name in ("anchor", "official")}
    assert triplet["anchor"] != triplet["official"]
    assert loss_and_grad(build("symm", "triplet"), inputs, labels)[0] == triplet["anchor"]
    assert resolve_candidates("by_loss", "triplet") == "anchor" and resolve_candidates("by_loss", "contrastive") == "official"
    assert resolve_candidates("all", "triplet") == "all"


class Spy(torch.nn.Module):
    """Stands in for the base loss's pml loss and records what it is given."""

    def __init__(self, loss):
        super().__init__()
        self.inner, self.calls = loss, []

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None):
        self.calls.append((embeddings.detach().clone(), labels.clone(), indices_tuple))
        return self.inner(embeddings, labels, indices_tuple, ref_emb, ref_labels)


@pytest.mark.parametrize("loss", NEGATIVE_PAIR_LOSSES)
def test_hardest_pairs_over_originals_and_synthetics_drive_the_negative_terms(loss):
    inputs, labels = batch(per_class=6)
    method = build("symm", loss)
    method.base_loss.loss = Spy(method.base_loss.loss)
    method(torch.nn.Linear(inputs.shape[1], 16)(inputs), labels)
    points, point_labels, indices = method.base_loss.loss.calls[-1]
    n = len(labels)
    anchors, positives, _ = pair_units(labels)
    # The collection is the originals followed by s1 and s2 of every unit.
    s1, s2 = symmetric_points(points[anchors], points[positives])
    assert torch.allclose(points[n:], torch.cat([s1, s2]), atol=1e-6)
    k = len(anchors)
    units = [[int(anchors[u]), int(positives[u]), n + u, n + k + u] for u in range(k)]
    unit_labels = labels[anchors].tolist()
    normalised = F.normalize(points, dim=1)
    searched = resolve_candidates("by_loss", loss)  # the default: anchor for triplet, official otherwise
    expected = set(zip(*brute_force_hardest((normalised @ normalised.T).tolist(), units, unit_labels, searched)))
    neg_rows = indices[0] if loss == "triplet" else indices[2]  # (a, p, n) or (a1, p, a2, n)
    negatives = set(zip(neg_rows.tolist(), indices[-1].tolist()))
    assert negatives == expected
    if loss == "triplet":
        a, p, _ = indices
        # The positive of each triplet has exactly the original pair's similarity to the anchor.
        sims = F.cosine_similarity(points[a], points[p])
        unit_of = {i: u for u in range(k) for i in units[u]}
        for i, row in enumerate(a.tolist()):
            u = unit_of[row]
            ref = F.cosine_similarity(points[anchors[u]][None], points[positives[u]][None])
            assert torch.allclose(sims[i], ref[0], atol=1e-5)
    else:
        # Positives are pairs of originals of one class.
        a1, p = indices[0], indices[1]
        assert (a1 < n).all() and (p < n).all() and (a1 != p).all()
        assert torch.equal(labels[a1], labels[p])


@pytest.mark.parametrize("loss", SYMM_LOSSES)
def test_switched_off_is_exactly_its_control(loss):
    """The control: baseline with the loss params symm's runs use (for N-pair and angular their unit form)."""
    inputs, labels = batch()
    off = loss_and_grad(build("symm", loss, {"synthesis": False}), inputs, labels)
    control = loss_and_grad(build("baseline", loss, loss_params=registry.loss_params(loss, filled({}), "symm")), inputs, labels)
    assert off[0] == control[0] and torch.equal(off[1], control[1])
    on = loss_and_grad(build("symm", loss), inputs, labels)
    assert on[0] != control[0]
    if loss in ("n_pairs", "angular"):
        # Not the plain baseline: that is pytorch-metric-learning's form, with other pairs.
        assert registry.control_label(filled({}), "symm", loss) != "baseline"
        assert off[0] != loss_and_grad(build("baseline", loss), inputs, labels)[0]
    else:
        assert registry.control_label(filled({}), "symm", loss) == "baseline"


@pytest.mark.parametrize("loss", SYMM_LOSSES)
def test_gradients_flow_to_the_backbone(loss):
    inputs, labels = batch()
    value, grad = loss_and_grad(build("symm", loss), inputs, labels)
    assert value > 0 and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("loss", sorted(l for l in registry.LOSSES if not registry.METHODS["symm"].is_compatible(l)))
def test_losses_without_given_negative_pairs_are_rejected(config, loss):
    config = dict(config, methods=["baseline", "symm"], losses=["multi_similarity", loss])
    with pytest.raises(ConfigError, match=f"method 'symm' does not work with loss '{loss}'"):
        validate(config)
    with pytest.raises(ValueError, match="needs a loss whose negative terms are given negative pairs"):
        build("symm", loss)


def test_symm_trains_on_digits(config, digits_manifest, tmp_path):
    result = train_digits("symm", "multi_similarity", config, digits_manifest, tmp_path / "run")
    assert len(result["history"]) == 2 and all(row["loss"] > 0 for row in result["history"])
    assert (tmp_path / "run" / "embeddings.npz").exists()


def direct_unit_softmax(embeddings, labels, loss, slots, normalize, l2_reg):
    """The official code's symm_npair_loss / symm_angular_loss, unit pair by unit pair (tan²45° = 1)."""
    anchors, positives, _ = pair_units(labels)
    a, p = embeddings[anchors], embeddings[positives]
    reg = l2_reg / 2 * torch.cat([a, p]).pow(2).sum(1).mean()  # on the features as given, before l2_norm
    if normalize:
        a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
    s1, s2 = symmetric_points(a, p)
    pts = [a, p, s1, s2]
    u = len(anchors)
    logits = torch.empty(u, u)
    for i in range(u):
        for j in range(u):
            values = []
            for x, y in slots:
                if loss == "n_pairs":
                    values.append(pts[x][i] @ pts[y][j])
                elif i == j:
                    values.append(2 * (1 + 1.0) * (pts[x][i] @ pts[y][i]))
                else:
                    values.append(4 * 1.0 * ((pts[x][i] + pts[y][i]) @ pts[y][j]))
            logits[i, j] = max(values)
    unit_labels = labels[anchors]
    total = 0.0
    for i in range(u):
        same = (unit_labels == unit_labels[i]).float()
        total = total - (same / same.sum() * torch.log_softmax(logits[i], dim=0)).sum()
    return total / u + reg


# symm's own loss params for n_pairs and angular (the official code's: raw features, L2 penalty 0.002), and the
# normalised option of angular.
FORMS = [("n_pairs", {}), ("angular", {}), ("angular", {"normalize": True, "l2_reg": 0.0})]


@pytest.mark.parametrize("loss,override", FORMS, ids=["n_pairs", "angular", "angular-normalised"])
@pytest.mark.parametrize("candidates", ["official", "all", "anchor"])
def test_n_pairs_and_angular_are_the_official_unit_softmax(loss, override, candidates):
    inputs, labels = batch(per_class=4)
    embeddings = torch.nn.Linear(inputs.shape[1], 16)(inputs).detach()
    method = build("symm", loss, {"candidates": candidates}, loss_params=override)
    if candidates == "official":
        slots = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)] if loss == "n_pairs" else [
            (x, y) for x in range(4) for y in range(4) if x != y
        ]
    else:
        slots = [(SLOT_NAMES.index(x), SLOT_NAMES.index(y)) for x, y in SEARCHED[candidates]]
    params = {**registry.loss_params(loss, filled({}), "symm"), **override}
    assert params["pairs"] == "units"
    expected = direct_unit_softmax(embeddings, labels, loss, slots, params["normalize"], params["l2_reg"])
    assert float(method(embeddings, labels)) == pytest.approx(float(expected), rel=1e-5)


def test_angular_runs_as_the_official_code_by_default():
    """Raw features with the L2 penalty (clovaai/symmetrical-synthesis train.py: angular_l2norm False, l2_reg True)."""
    params = registry.loss_params("angular", filled({}), "symm")
    assert params["normalize"] is False and params["l2_reg"] == 0.002 and params["pairs"] == "units"
    inputs, labels = batch(per_class=4)
    embeddings = torch.nn.Linear(inputs.shape[1], 16)(inputs).detach()
    raw, normalised = build("symm", "angular"), build("symm", "angular", loss_params={"normalize": True, "l2_reg": 0.0})
    assert float(raw(embeddings * 3, labels)) != pytest.approx(float(raw(embeddings, labels)))  # scale matters
    assert float(normalised(embeddings * 3, labels)) == pytest.approx(float(normalised(embeddings, labels)), rel=1e-6)


def test_unit_logits_reject_other_losses():
    with pytest.raises(ValueError, match="for n_pairs and angular"):
        unit_logits(torch.zeros(2, 4, 3), "triplet", candidate_mask("all"))


@pytest.mark.parametrize("loss", sorted(registry.PAIR_FORMS))
def test_symm_refuses_the_pml_form_with_a_clear_error(config, loss):
    config = dict(config, methods=["baseline", "symm"], losses=[loss])
    config["method_loss_params"] = {"symm": {loss: {"pairs": registry.PAIR_FORMS[loss][0]}}}
    with pytest.raises(ConfigError, match=f"at method_loss_params.symm.{loss}: method 'symm' needs {loss} with pairs: units"):
        validate(config)
    with pytest.raises(ValueError, match="needs its unit form: loss param pairs: units"):
        build("symm", loss, loss_params={"pairs": registry.PAIR_FORMS[loss][0], "normalize": True})


def test_pml_angular_needs_normalised_embeddings(config):
    config = dict(config, methods=["baseline"], losses=["angular"])
    config["loss_params"] = dict(config.get("loss_params") or {}, angular={"normalize": False})
    with pytest.raises(ConfigError, match="at loss_params.angular: angular with pairs: every_pair .* set normalize: true"):
        validate(config)
    config["loss_params"]["angular"] = {"normalize": False, "pairs": "units"}
    validate(config)


def test_switched_off_trains_exactly_as_its_control(config, digits_manifest, tmp_path):
    """Through train_run: symm + n_pairs with synthesis off and its control (the run the workflow trains as
    `baseline+normalize=false+pairs=units`) give the same loss every epoch, weights and test embeddings."""
    from dmlsynth.config import run_params
    from dmlsynth.layout import RunFolder
    from dmlsynth.training.loop import train_run

    config = dict(config, methods=["baseline", "symm"], losses=["n_pairs"], method_params={"symm": {"synthesis": False}})
    config = validate(config)
    control = registry.control_label(config, "symm", "n_pairs")
    assert control == "baseline+normalize=false+pairs=units"
    results, weights = {}, {}
    for label in ("symm", control, "baseline"):
        params = run_params(config, "digits", label, "n_pairs", 0)
        results[label] = train_run(params, digits_manifest, tmp_path / label, progress=False)
        weights[label] = torch.load(RunFolder(str(tmp_path / label)).model, weights_only=True)["model"]
    assert run_params(config, "digits", control, "n_pairs", 0)["loss_params"] == run_params(config, "digits", "symm", "n_pairs", 0)["loss_params"]
    off, ctl, plain = results["symm"], results[control], results["baseline"]
    assert [row["loss"] for row in off["history"]] == [row["loss"] for row in ctl["history"]]
    assert weights["symm"].keys() == weights[control].keys()
    assert all(torch.equal(weights["symm"][k], weights[control][k]) for k in weights[control])
    assert torch.equal(off["embeddings"], ctl["embeddings"]) and torch.equal(off["labels"], ctl["labels"])
    # The plain baseline (pml's one pair per class, cosine logits) is another loss: it must not pass for the control.
    assert [row["loss"] for row in plain["history"]] != [row["loss"] for row in ctl["history"]]


@pytest.mark.parametrize("loss", sorted(registry.PAIR_FORMS))
def test_unit_form_trains_on_the_device(config, digits_manifest, tmp_path, device, loss):
    """symm's unit-form N-pair / angular (raw features, L2 penalty) through train_run on every device."""
    config["training"]["device"] = device
    result = train_digits("symm", loss, config, digits_manifest, tmp_path / "run")
    assert all(math.isfinite(row["loss"]) and row["loss"] > 0 for row in result["history"])
    assert torch.isfinite(result["embeddings"]).all()
