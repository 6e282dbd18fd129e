"""SGAR, variants official and paper (docs/methods.md §6): the loss of Liuzt1999/SCAR as released, against a
transcription of its formulas written here (float64, loss and every gradient), its control and its config."""

from __future__ import annotations

import math

import pytest
import torch

from dmlsynth.config import filled
from dmlsynth import registry
from dmlsynth.config import ConfigError, validate
from dmlsynth.losses import build_loss
from dmlsynth.methods.base import MethodContext
from dmlsynth.methods.sgar import GradedRanking

CLASSES, PER_CLASS, DIM = 4, 6, 8


def official_sgar(variant: str = "official", params=None, seed: int = 3, loss_params=None) -> GradedRanking:
    """sgar of ``variant`` on proxy_anchor with the loss params its runs use (the head), in float64."""
    config = filled({"method_params": {"sgar": {"variant": variant, **(params or {})}}})
    torch.manual_seed(11)  # proxies and head
    base = build_loss("proxy_anchor", {**registry.loss_params("proxy_anchor", config, "sgar"), **(loss_params or {})}, CLASSES, DIM)
    context = MethodContext(
        num_classes=CLASSES, embedding_dim=DIM, num_epochs=10, generator=torch.Generator().manual_seed(seed),
        embed_training_set=lambda **_: None, device=torch.device("cpu"),
    )  # fmt: skip
    method = GradedRanking(base, registry.METHODS["sgar"].resolve(config["method_params"]["sgar"]), context)
    return method.double()


def embeddings_near_proxies(method: GradedRanking, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised embeddings of CLASSES x PER_CLASS samples, spread so that some pass the gate and some not."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    proxies = method.base_loss.loss.proxies.detach()
    noise = torch.randn(len(labels), DIM, generator=g, dtype=torch.float64)
    return 3.0 * (0.25 * proxies[labels] + 0.5 * noise), labels


# -- the transcription: Liuzt1999/SCAR losses.py Proxy_Anchor.forward and get_gen_loss3, as loops ------------


def l2_norm(x):  # losses.py l2_norm: x / sqrt(Σx² + 1e-12)
    return x / torch.sqrt((x**2).sum(dim=1, keepdim=True) + 1e-12)


def transcribed_gen_loss(X, P_i, directions, order, fc, h, released: bool):
    """get_gen_loss3 for the selected samples X of one class and its proxy P_i."""
    N = directions.shape[0]
    gen = l2_norm(directions[order])
    gen = torch.stack([gen[i] * (i + 1) * h["r"] for i in range(N)])
    if released:
        gen = l2_norm(gen)
    ranking_terms, pull_terms = [], []
    P = P_i
    for m in range(X.shape[0]):
        gen_x = fc(torch.stack([X[m] + gen[j] for j in range(N)]))
        Xm = fc(X[m].view(1, -1))
        c = (gen_x @ Xm.T).view(-1)
        left, right = [], []
        for i in range(N):
            if i > 0:
                left.append(sum(torch.exp(h["scale"] * (c[i] - c[j] + h["delta"])) for j in range(i)))
            if i < N - 1:
                right.append(sum(torch.exp(h["scale"] * (c[j] - c[i] + h["delta"])) for j in range(i + 1, N)))
        ranking_terms.append(torch.log(1 + sum(left)) / h["scale"])
        ranking_terms.append(torch.log(1 + sum(right)) / h["scale"])
        if released:
            P = fc(P.view(1, -1))  # reassigned on every pass
        else:
            P = fc(P_i.view(1, -1))
        cos_gp = (gen_x @ P.T).view(-1)
        pull_terms.append(torch.log(1 + sum(torch.exp(h["alpha"] * (h["mrg"] - cos_gp[k])) for k in range(N))))
    pull = pull_terms[-1] if released else sum(pull_terms) / len(pull_terms)
    return h["ratio_m"] * pull + h["ratio_gen"] * sum(ranking_terms) / X.shape[0]


def transcribed_loss(raw, T, P, W, b, directions, orders, h, released: bool = True):
    """Proxy_Anchor.forward on the model's L2-normalised output (bn_inception.py:528-529)."""
    X = l2_norm(raw)

    def fc(v):  # nn.Sequential(Linear, NormLayer, ReLU), losses.py:57
        y = v @ W.T + b
        return torch.relu(y / y.norm(dim=1, keepdim=True).clamp_min(1e-12))

    cos = l2_norm(fc(X)) @ l2_norm(P).T
    C = P.shape[0]
    one_hot = torch.nn.functional.one_hot(T, C).to(X.dtype)
    pos_exp = torch.exp(-h["alpha"] * (cos - h["mrg"]))
    neg_exp = torch.exp(h["alpha"] * (cos + h["mrg"]))
    valid = (one_hot.sum(dim=0) != 0).sum()
    pos_term = torch.log(1 + (pos_exp * one_hot).sum(dim=0)).sum() / valid
    neg_term = torch.log(1 + (neg_exp * (1 - one_hot)).sum(dim=0)).sum() / C
    loss = pos_term + neg_term
    cos_px = P @ X.T
    gen_loss, count, next_order = [], 0, iter(orders)
    for i in range(C):
        chosen = (T == i) & (cos_px[i] >= h["gen_mrg"])
        if chosen.sum():
            count += int(chosen.sum())
            gen_loss.append(transcribed_gen_loss(X[chosen], P[i], directions, next(next_order), fc, h, released))
    return loss + h["lam"] * sum(gen_loss) if count else loss


SCAR_DEFAULTS = {  # train.py:75,81,99-125
    "alpha": 32.0, "mrg": 0.1, "delta": 0.11, "r": 1.0, "lam": 0.23, "gen_mrg": 0.05, "scale": 32.0,
    "ratio_gen": 0.9, "ratio_m": 0.9,
}  # fmt: skip


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_loss_and_gradients_equal_the_transcribed_official_formulas_in_float64(variant):
    method = official_sgar(variant)
    raw, labels = embeddings_near_proxies(method)
    P = method.base_loss.loss.proxies
    selected = (torch.nn.functional.normalize(raw, dim=1) * P[labels].detach()).sum(dim=1) >= 0.05
    per_class = torch.bincount(labels[selected], minlength=CLASSES)
    assert 0 < selected.sum() < len(labels) and (per_class >= 2).sum() >= 2  # the gate, the loops over samples matter
    generator_copy = torch.Generator()
    generator_copy.set_state(method.context.generator.get_state())  # the stream the method draws its orders from
    orders = [torch.randperm(5, generator=generator_copy) for _ in range(int((per_class > 0).sum()))]

    raw_mine = raw.clone().requires_grad_(True)
    mine = method(raw_mine, labels)
    mine.backward()
    mine = mine.detach()
    leaves = [raw.clone(), P.detach().clone(), method.base_loss.head.linear.weight.detach().clone(),
              method.base_loss.head.linear.bias.detach().clone(), method.directions.detach().clone()]  # fmt: skip
    for leaf in leaves:
        leaf.requires_grad_(True)
    theirs = transcribed_loss(leaves[0], labels, *leaves[1:], orders, SCAR_DEFAULTS, released=variant == "official")
    theirs.backward()
    assert mine.dtype == torch.float64 and math.isclose(float(mine), float(theirs), rel_tol=1e-10)
    mine_grads = [raw_mine.grad, P.grad, method.base_loss.head.linear.weight.grad, method.base_loss.head.linear.bias.grad,
                  method.directions.grad]  # fmt: skip
    for name, a, b in zip(["embeddings", "proxies", "head weight", "head bias", "directions"], mine_grads, leaves):
        assert (a - b.grad).abs().max() <= 1e-9 * b.grad.abs().max(), (name, (a - b.grad).abs().max())
        assert b.grad.abs().max() > 0, name
    # The base loss alone is not the answer: the synthesis term is there and weighs.
    assert abs(float(mine) - float(method.base_loss(raw, labels))) > 1e-3


def test_official_and_paper_differ_where_the_released_code_contradicts_itself():
    """Graded norms (paper) vs unit perturbations (as released), every sample's pull vs the last one's."""
    official, paper = official_sgar("official"), official_sgar("paper")
    raw, labels = embeddings_near_proxies(official)
    assert float(official(raw, labels)) != pytest.approx(float(paper(raw, labels)), rel=1e-6)
    from dmlsynth.methods.sgar import perturbations

    order = torch.tensor([2, 0, 4, 1, 3])
    d = official.directions.detach()
    released = perturbations(d, order, 1.0, graded=False)
    graded = perturbations(d, order, 1.0, graded=True)
    assert torch.allclose(released.norm(dim=1), torch.ones(5, dtype=d.dtype))
    assert torch.allclose(graded.norm(dim=1), torch.arange(1, 6, dtype=d.dtype))
    assert torch.allclose(torch.nn.functional.normalize(graded, dim=1), torch.nn.functional.normalize(d[order], dim=1))


def test_a_sample_exactly_at_the_gate_is_synthesised():
    """gen_mrg selects cos_px >= gen_mrg (losses.py:289): a sample at the threshold takes part."""
    method = official_sgar("official")
    raw, labels = embeddings_near_proxies(method)
    points = torch.nn.functional.normalize(raw, dim=1)
    dots = (points * method.base_loss.loss.proxies.detach()[labels]).sum(dim=1)
    only = int(torch.argmax(dots))
    method.gate = float(dots[only])
    value = method.synthesis_loss(raw, labels)
    assert value is not None  # the one sample at the gate
    method.gate = math.nextafter(float(dots[only]), math.inf)
    assert method.synthesis_loss(raw, labels) is None


def test_directions_are_permuted_per_class_from_the_runs_generator():
    """Every class with selected samples draws its own order (np.random.shuffle per get_gen_loss3 call);
    the same seed gives the same loss, another seed another one."""
    method = official_sgar("official", seed=3)
    raw, labels = embeddings_near_proxies(method)
    before = method.context.generator.get_state()
    first = float(method(raw, labels))
    drawn = torch.Generator()
    drawn.set_state(before)
    classes = int(torch.unique(labels[(torch.nn.functional.normalize(raw, dim=1) * method.base_loss.loss.proxies.detach()[labels]).sum(1) >= 0.05]).numel())
    for _ in range(classes):
        torch.randperm(5, generator=drawn)
    assert torch.equal(drawn.get_state(), method.context.generator.get_state())
    assert float(official_sgar("official", seed=3)(raw, labels)) == first
    assert float(official_sgar("official", seed=4)(raw, labels)) != first


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_weight_zero_is_exactly_its_control_with_the_head(variant):
    """The off switch: the base loss through the same head, i.e. the control `baseline+projection_head=true`."""
    config = filled({"method_params": {"sgar": {"variant": variant}}})
    assert registry.control_label(config, "sgar", "proxy_anchor") == "baseline+projection_head=true"
    assert registry.control_label(filled({}), "sgar", "proxy_anchor") == "baseline"  # project: the plain loss
    off = official_sgar(variant, params={"weight": 0.0})
    raw, labels = embeddings_near_proxies(off)
    torch.manual_seed(11)
    control = build_loss("proxy_anchor", registry.loss_params("proxy_anchor", config, "sgar"), CLASSES, DIM).double()
    a, b = raw.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    mine, theirs = off(a, labels), control(b, labels)
    mine.backward(), theirs.backward()
    assert float(mine) == float(theirs) and torch.equal(a.grad, b.grad)
    on = official_sgar(variant)
    assert float(on(raw, labels)) != float(theirs)


def test_the_head_carries_the_base_loss_and_is_orthogonal_at_the_start():
    torch.manual_seed(0)
    with_head = build_loss("proxy_anchor", {"projection_head": True}, CLASSES, DIM)
    torch.manual_seed(0)
    plain = build_loss("proxy_anchor", {}, CLASSES, DIM)
    weight = with_head.head.linear.weight.detach()
    assert torch.allclose(weight @ weight.T, torch.eye(DIM), atol=1e-5) and not with_head.head.linear.bias.any()
    raw, labels = torch.randn(12, DIM), torch.arange(CLASSES).repeat(3)
    plain.loss.proxies.data.copy_(with_head.loss.proxies.data)
    projected = with_head.head(raw)
    assert torch.equal(with_head(raw, labels), plain(projected, labels))
    assert (projected >= 0).all()  # ReLU after the normalisation


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_variants_need_proxy_anchor_with_its_head(config, variant):
    config = dict(config, methods=["sgar"], losses=["multi_similarity"], method_params={"sgar": {"variant": variant}})
    with pytest.raises(ConfigError, match=f"method 'sgar' with variant {variant} works only with loss proxy_anchor"):
        validate(config)
    config.update(losses=["proxy_anchor"], method_loss_params={"sgar": {"proxy_anchor": {"projection_head": False}}})
    with pytest.raises(ConfigError, match="method 'sgar' needs proxy_anchor with projection_head: true"):
        validate(config)
    with pytest.raises(ValueError, match="through the proxy_anchor loss's projection head"):
        official_sgar(variant, loss_params={"projection_head": False})
    del config["method_loss_params"]
    validate(config)


def test_the_head_and_directions_train_at_the_proxies_lr_and_are_checkpointed():
    from dmlsynth.training.build import _optimizer
    from torch import nn

    method = official_sgar("official").float()
    model = nn.Module()
    model.embedding = nn.Linear(3, DIM)
    training = {"lr": 1e-4, "optimizer": "adamw", "weight_decay": 1e-4}
    groups = _optimizer(training, model, method, method.base_loss).param_groups
    fast = next(g for g in groups if g["lr"] == pytest.approx(1e-2))
    ids = {id(p) for p in fast["params"]}
    for p in (method.directions, method.base_loss.head.linear.weight, method.base_loss.head.linear.bias, method.base_loss.loss.proxies):
        assert id(p) in ids
    state = method.state_dict()
    assert {"directions", "base_loss.head.linear.weight", "base_loss.head.linear.bias"} <= set(state)


def test_switched_off_trains_exactly_as_its_control_and_on_trains_otherwise(config, digits_manifest, tmp_path):
    """Through train_run with the official recipe's random batches and clipping: sgar official with weight 0
    and its control `baseline+projection_head=true` give the same loss every epoch, weights and test
    embeddings; switched on, the synthesis changes them, and the head and directions are in the checkpoint."""
    from dmlsynth.config import run_params
    from dmlsynth.layout import RunFolder
    from dmlsynth.training.loop import train_run

    config = dict(config, methods=["sgar"], losses=["proxy_anchor"])
    config["training"] = {**config["training"], "batch_sampling": "random", "grad_clip_value": 10}
    results, states = {}, {}
    for label, weight in [("sgar", 0.0), ("baseline+projection_head=true", None), ("on", 0.23)]:
        config["method_params"] = {"sgar": {"variant": "official", **({"weight": weight} if weight is not None else {})}}
        checked = validate(config)
        params = run_params(checked, "digits", "sgar" if label == "on" else label, "proxy_anchor", 0)
        results[label] = train_run(params, digits_manifest, tmp_path / label, progress=False)
        states[label] = torch.load(RunFolder(str(tmp_path / label)).model, weights_only=True)
    off, control, on = results["sgar"], results["baseline+projection_head=true"], results["on"]
    assert [row["loss"] for row in off["history"]] == [row["loss"] for row in control["history"]]
    assert all(torch.equal(states["sgar"]["model"][k], states["baseline+projection_head=true"]["model"][k]) for k in states["sgar"]["model"])
    assert torch.equal(off["embeddings"], control["embeddings"])
    assert [row["loss"] for row in on["history"]] != [row["loss"] for row in control["history"]]
    assert not torch.equal(on["embeddings"], control["embeddings"])
    assert {"directions", "base_loss.head.linear.weight"} <= set(states["on"]["method"])


def test_directions_start_kaiming_normal_with_fan_out_n():
    """losses.py:53-54: kaiming_normal_(mode='fan_out') on an (N, D) parameter: std √(2/N), mean 0."""
    context = MethodContext(
        num_classes=CLASSES, embedding_dim=2_000, num_epochs=1, generator=torch.Generator().manual_seed(0),
        embed_training_set=lambda **_: None, device=torch.device("cpu"),
    )  # fmt: skip
    torch.manual_seed(11)
    base = build_loss("proxy_anchor", {"projection_head": True}, CLASSES, 2_000)
    method = GradedRanking(base, registry.METHODS["sgar"].resolve({"variant": "official"}), context)
    directions = method.directions.detach()
    assert directions.shape == (5, 2_000)
    assert float(directions.std()) == pytest.approx(math.sqrt(2 / 5), rel=0.04) and abs(float(directions.mean())) < 0.02
