"""SGAR, variant project ([project definition], docs/methods.md §6): graded features before the embedding layer, ranking loss, wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmlsynth import registry

from dmlsynth.methods.sgar import graded_features, graded_similarities, ranking_loss
from tests.helpers.methods import batch, build, train_digits, trunk_and_head
from tests.helpers.methods import two_stage_step as step

# Every base loss SGAR works with (the registry decides).
SGAR_LOSSES = sorted(l for l in registry.LOSSES if registry.METHODS["sgar"].is_compatible(l))


def sgar(loss: str, head, params=None, seed: int = 0):
    return build("sgar", loss, params, seed=seed, embedding_layer=head)


def test_graded_features_step_j_alpha_norm_with_a_fresh_direction_per_level():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6, 20, generator=g)
    graded = graded_features(r, steps=5, alpha=0.1, generator=torch.Generator().manual_seed(1))
    assert graded.shape == (5, 6, 20)
    offsets = graded - r[None]
    for j in range(5):
        assert torch.allclose(offsets[j].norm(dim=1), (j + 1) * 0.1 * r.norm(dim=1), rtol=1e-5)
    directions = F.normalize(offsets, dim=2)
    cos = (directions[0] * directions[1]).sum(dim=1)
    assert (cos.abs() < 0.9).all()  # not one direction scaled: a fresh one per level
    again = graded_features(r, steps=5, alpha=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(graded, again)


def test_graded_features_reject_bad_input():
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        graded_features(torch.zeros(3))
    with pytest.raises(ValueError, match="alpha > 0"):
        graded_features(torch.zeros(2, 3), alpha=0)


def test_ranking_loss_is_zero_when_the_order_holds_and_positive_otherwise():
    ordered = torch.tensor([[0.9], [0.7], [0.5], [0.3], [0.1]])
    assert ranking_loss(ordered, margin=0.1).item() == 0.0
    swapped = torch.tensor([[0.5], [0.7], [0.4], [0.3], [0.1]])
    # [0.7 - 0.5 + 0.1] + [0.4 - 0.7 + 0.1]_+ + [0.3 - 0.4 + 0.1]_+ + [0.1 - 0.3 + 0.1]_+ = 0.3
    assert ranking_loss(swapped, margin=0.1).item() == pytest.approx(0.3)
    assert ranking_loss(torch.zeros(5, 0), 0.1).item() == 0.0


def test_rank_loss_equals_a_direct_evaluation_over_every_same_class_pair():
    inputs, labels = batch(per_class=3)
    trunk, head = trunk_and_head()
    method = sgar("multi_similarity", head, {"steps": 3, "alpha": 0.2, "margin": 0.03}, seed=5)
    features = trunk(inputs)
    got = method.rank_loss(head(features), labels, features)

    g = torch.Generator().manual_seed(5)
    directions = F.normalize(torch.randn((3, len(labels), features.shape[1]), generator=g), dim=2)
    terms = []
    with torch.no_grad():
        for a in range(len(labels)):
            for k in range(len(labels)):
                if a == k or labels[a] != labels[k]:
                    continue
                anchor = head(features[a])
                samples = [head(features[k])] + [
                    head(features[k] + j * 0.2 * features[k].norm() * directions[j - 1, k]) for j in range(1, 4)
                ]
                sims = [F.cosine_similarity(anchor, s, dim=0) for s in samples]
                terms.append(sum(F.relu(sims[j + 1] - sims[j] + 0.03) for j in range(3)))
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_graded_similarities_row_zero_is_the_batch_similarity():
    emb = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    graded = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    sims = graded_similarities(emb, graded)
    x = F.normalize(emb, dim=1)
    assert torch.allclose(sims[0], x @ x.T, atol=1e-6)
    assert torch.allclose(sims[2, 1, 3], F.cosine_similarity(emb[1], graded[1, 3], dim=0), atol=1e-6)


@pytest.mark.parametrize("loss", SGAR_LOSSES)
def test_weight_zero_is_exactly_baseline(loss):
    inputs, labels = batch()
    off = step("sgar", loss, inputs, labels, {"weight": 0.0})
    base = step("baseline", loss, inputs, labels)
    assert off[0] == base[0] and all(torch.equal(a, b) for a, b in zip(off[1], base[1]))


@pytest.mark.parametrize("loss", SGAR_LOSSES)
def test_total_is_base_plus_weighted_rank_loss_and_gradients_flow(loss):
    inputs, labels = batch()
    trunk, head = trunk_and_head()
    method = sgar(loss, head, {"weight": 2.0})
    features = trunk(inputs)
    emb = head(features)
    rank = method.rank_loss(emb, labels, features)
    assert rank > 0
    method.context.generator.manual_seed(0)
    total = method(emb, labels, features=features)
    assert total.item() == pytest.approx((method.base_loss(emb, labels) + 2.0 * rank).item(), rel=1e-5)
    value, grads = step("sgar", loss, inputs, labels)
    base_grads = step("baseline", loss, inputs, labels)[1]
    assert all(torch.isfinite(g).all() for g in grads)
    assert not all(torch.allclose(a, b) for a, b in zip(grads, base_grads))


def test_sgar_needs_features_and_the_embedding_layer():
    inputs, labels = batch()
    trunk, head = trunk_and_head()
    with pytest.raises(ValueError, match="needs the backbone features"):
        sgar("multi_similarity", head)(head(trunk(inputs)), labels)
    with pytest.raises(ValueError, match="needs embedding_layer"):
        build("sgar", "multi_similarity")


def rank_share(run, images, labels, seed: int = 0):
    """The ranking term on one batch, the share of its hinges that are active, and its gradient norm on
    the backbone relative to the base loss's."""
    from dmlsynth.methods.sgar import GradedRanking

    method = run.method
    assert isinstance(method, GradedRanking)
    method.context.generator.manual_seed(seed)
    features = run.model.trunk(images)
    embeddings = run.model.embedding(features)
    parameters = [p for p in run.model.parameters() if p.requires_grad]
    rank = method.rank_loss(embeddings, labels, features)
    rank_grads = torch.autograd.grad(rank, parameters, retain_graph=True)
    base_grads = torch.autograd.grad(method.base_loss(embeddings, labels), parameters)
    norm = lambda grads: torch.sqrt(sum((g**2).sum() for g in grads))  # noqa: E731
    with torch.no_grad():
        method.context.generator.manual_seed(seed)
        graded = run.model.embedding(graded_features(features, method.steps, method.alpha, method.context.generator))
        sims = graded_similarities(embeddings, graded)
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        pairs = sims[:, same]
        active = ((pairs[1:] - pairs[:-1] + method.margin) > 0).float().mean()
    return float(rank), float(active), float(norm(rank_grads) / norm(base_grads))


def test_ranking_term_is_active_with_a_non_negligible_gradient_on_digits_batches(config, digits_manifest, tmp_path):
    """Issue #11: on typical batches, at the start and after training, the ranking term is non-zero, a good
    share of its hinges are active, and its gradient on the backbone is not negligible next to the base loss's."""
    from dmlsynth import config as cfg
    from dmlsynth.training.build import build_run

    config = dict(config, methods=["sgar"], losses=["multi_similarity"])
    params = cfg.run_params(cfg.validate(config), "digits", "sgar", "multi_similarity", 0)
    run = build_run(params, digits_manifest)
    images, labels = next(iter(run.training_batches()))
    at_start = rank_share(run, images, labels)
    train_digits("sgar", "multi_similarity", config, digits_manifest, tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"]
    run.model.load_state_dict(trained)
    after = rank_share(run, images, labels)
    print("sgar rank term (value, active share, gradient ratio) at start / trained:", at_start, after)
    for rank, active, gradient_ratio in (at_start, after):
        assert rank > 0.01 and active > 0.2 and gradient_ratio > 0.05, (at_start, after)


def test_sgar_trains_on_digits(config, digits_manifest, tmp_path):
    result = train_digits("sgar", "multi_similarity", config, digits_manifest, tmp_path / "run")
    assert len(result["history"]) == 2 and all(row["loss"] > 0 for row in result["history"])


def test_a_batch_without_same_class_pairs_adds_nothing_to_the_base_loss():
    """No same-class pair: no ranking term (its zero keeps the graph), the loss is the base loss's."""
    inputs, labels = batch()
    one_each = torch.arange(0, len(labels), 8)  # one sample per class
    trunk, head = trunk_and_head()
    features = trunk(inputs[one_each])
    method = sgar("contrastive", head)
    value = method(head(features), labels[one_each], features=features)
    assert float(value) == float(method.base_loss(head(features), labels[one_each]))


@pytest.mark.parametrize("steps,alpha", [(0, 0.1), (1, 0.0)])
def test_graded_features_need_a_level_and_a_positive_step(steps, alpha):
    with pytest.raises(ValueError, match="steps must be >= 1 and alpha > 0"):
        graded_features(torch.ones(2, 3), steps=steps, alpha=alpha)
    graded_features(torch.ones(2, 3), steps=1, alpha=1e-6)
