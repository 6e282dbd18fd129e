"""The contract every registry entry keeps, as checks a user can run on their own plugin.

``dmlsynth check-method NAME`` (``check-loss``, ``check-dataset``) prints one pass/fail line per
check with what to fix; the project's own contract tests (``tests/unit/test_registry_contract.py``)
call the same functions on the built-in entries, so a plugin is held to exactly the project's rules:

- the registry entry is valid (its defaults and off params fit its own params schema, its losses exist);
- with each loss it claims, a training step runs forward and backward to finite gradients;
- with its ``off_params`` it trains bit-identically to its control (``baseline`` with the loss params the
  method's runs use): the loss of every step and the final weights;
- its state checkpoints and resumes: a run stopped half-way, saved (``torch.save``, loaded with
  ``weights_only=True`` as training does) and continued in fresh objects gives the same numbers;
- the same seed gives the same numbers.

The training here is a tiny model (a linear trunk and embedding head) on a fixed batch of a few classes,
stepped by SGD, each step one "epoch" past the middle of training (past any warm-up, with the statistics
a method estimates through ``embed_training_set``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from dmlsynth import registry
from dmlsynth.losses import BaseLoss, build_loss
from dmlsynth.methods import MethodContext, build_method
from dmlsynth.models import EmbeddingNet

CLASSES, PER_CLASS, IN_DIM, FEATURES, DIM, EPOCHS = 4, 6, 10, 12, 8, 10
STEPS = 4  # steps of the bit-identity and resume checks (resumed after STEPS // 2)
LR = 0.05


@dataclass(frozen=True)
class Result:
    """One check: its name, whether it passed, and (failed) what is wrong and what to fix."""

    check: str
    passed: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.check}" + (f": {self.detail}" if self.detail else "")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of ``CLASSES`` x ``PER_CLASS`` inputs and their class indices (as MPerClassSampler gives)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    centres = torch.randn(CLASSES, IN_DIM, generator=g)
    return centres[labels] + 0.5 * torch.randn(len(labels), IN_DIM, generator=g), labels


@dataclass
class Trainee:
    """A tiny model, a method on its base loss and their optimizer, as training builds them."""

    model: EmbeddingNet
    method: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator


def build(method_name: str, loss_name: str, method_params: Mapping[str, Any], seed: int, loss_params=None) -> Trainee:
    """``loss_params``: default, the loss params the method's runs use (its registry ``loss_params``)."""
    torch.manual_seed(7)
    model = EmbeddingNet(nn.Sequential(nn.Linear(IN_DIM, FEATURES), nn.ReLU()), nn.Linear(FEATURES, DIM))
    inputs, labels = batch()
    if loss_params is None:  # a variant may set loss params of its own (sgar official: the projection head)
        config = {"method_params": {method_name: {"variant": method_params["variant"]}}} if "variant" in method_params else {}
        from dmlsynth.config import filled  # here: a training's gate of a built-in method imports no config code

        loss_params = registry.loss_params(loss_name, filled(config), method_name)
    base = build_loss(loss_name, loss_params, CLASSES, DIM)

    @torch.no_grad()
    def embed_training_set(**_):
        return model(inputs), labels

    generator = torch.Generator().manual_seed(seed)
    context = MethodContext(
        num_classes=CLASSES, embedding_dim=DIM, num_epochs=EPOCHS, generator=generator,
        embed_training_set=embed_training_set, device=torch.device("cpu"), embedding_layer=model.embedding,
    )  # fmt: skip
    method = build_method(method_name, base, registry.METHODS[method_name].resolve(method_params), context)
    optimizer = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=LR)
    return Trainee(model, method, optimizer, generator)


def step(trainee: Trainee, epoch: int) -> tuple[float, list[torch.Tensor]]:
    """One training step in epoch ``epoch``: its loss and the gradients of the model's parameters."""
    inputs, labels = batch()
    trainee.method.on_epoch_start(epoch)
    trainee.optimizer.zero_grad()
    features = trainee.model.trunk(inputs)
    loss = trainee.method(trainee.model.embedding(features), labels, features=features)
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainee.model.parameters()]
    trainee.optimizer.step()
    return float(loss.detach()), grads


def warm_up(trainee: Trainee) -> None:
    """The epoch hooks of the first half of training (warm-ups over, statistics estimated)."""
    for epoch in range(EPOCHS // 2):
        trainee.method.on_epoch_start(epoch)


def one_step(method: str, loss: str, method_params: Mapping[str, Any], seed: int = 0, loss_params=None):
    """The loss and gradients of the first step after the warm-up."""
    trainee = build(method, loss, method_params, seed, loss_params)
    warm_up(trainee)
    return step(trainee, EPOCHS // 2)


def train(method: str, loss: str, method_params: Mapping[str, Any], seed: int = 0, loss_params=None, steps: int = STEPS):
    """The loss of each of ``steps`` steps and the final weights (model and method)."""
    trainee = build(method, loss, method_params, seed, loss_params)
    warm_up(trainee)
    losses = [step(trainee, EPOCHS // 2 + i)[0] for i in range(steps)]
    return losses, _weights(trainee)


def _weights(trainee: Trainee) -> list[torch.Tensor]:
    """The model's weights (a method's own parameters show in the losses of the steps after)."""
    return [p.detach().clone() for p in trainee.model.parameters()]


def _checkpoint(trainee: Trainee) -> dict[str, Any]:
    """What training's checkpoint keeps of a run, through torch.save and torch.load(weights_only=True)."""
    state = {
        "model": trainee.model.state_dict(), "method": trainee.method.state_dict(),
        "optimizer": trainee.optimizer.state_dict(), "generator": trainee.generator.get_state(),
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def train_resumed(method: str, loss: str, method_params: Mapping[str, Any], seed: int = 0, steps: int = STEPS):
    """:func:`train` stopped after ``steps // 2`` steps, checkpointed, and continued in fresh objects."""
    first = build(method, loss, method_params, seed)
    warm_up(first)
    half = steps // 2
    losses = [step(first, EPOCHS // 2 + i)[0] for i in range(half)]
    state = _checkpoint(first)
    second = build(method, loss, method_params, seed + 1)  # another seed: the checkpoint must restore it
    second.model.load_state_dict(state["model"])
    second.method.load_state_dict(state["method"])
    second.optimizer.load_state_dict(state["optimizer"])
    second.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    losses += [step(second, EPOCHS // 2 + i)[0] for i in range(half, steps)]
    return losses, _weights(second)


def _same(a: tuple[list[float], list[torch.Tensor]], b: tuple[list[float], list[torch.Tensor]]) -> bool:
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def _guarded(check: str, run: Callable[[], str | None], fix: str) -> Result:
    """Run one check: ``run`` returns None when it holds, else what differs; an exception fails it too."""
    try:
        problem = run()
    except Exception as exc:  # the plugin's code raised: that is the check's finding, reported, not re-raised
        problem = f"raised {type(exc).__name__}: {exc}"
    return Result(check, problem is None, "" if problem is None else f"{problem} — {fix}")


def entry_problems(kind: str, name: str) -> str | None:
    """Why the registry entry ``name`` of ``kind`` ("methods", "losses") does not fit its params schema."""
    import jsonschema

    from dmlsynth.config import _schema

    properties = _schema()["properties"][{"methods": "method_params", "losses": "loss_params"}[kind]]["properties"]
    if kind == "losses":
        jsonschema.validate(dict(registry.LOSSES[name].defaults), properties[name])
        return None
    spec = registry.METHODS[name]
    jsonschema.validate(dict(spec.defaults), properties[name])
    jsonschema.validate(spec.resolve(dict(spec.off_params)), properties[name])
    for variant in spec.variants:
        jsonschema.validate(spec.resolve({"variant": variant}), properties[name])
    unknown = set(spec.compatible_losses or ()) - set(registry.LOSSES)
    if unknown:
        return f"compatible_losses names unknown losses {sorted(unknown)}"
    if spec.synthetic_images is not None and spec.synthetic_images not in registry.IMAGE_SETS:
        return f"synthetic_images {spec.synthetic_images!r} is no image set ({', '.join(registry.IMAGE_SETS)})"
    if name != registry.BASELINE and not spec.off_params:
        return "it declares no off_params (the params that switch its synthesis off)"
    return None


def step_problem(method: str, loss: str) -> str | None:
    value, grads = one_step(method, loss, {})
    if not torch.isfinite(torch.tensor(value)):
        return f"the loss is {value}"
    if not all(torch.isfinite(g).all() for g in grads):
        return "a gradient is not finite"
    if not any(g.abs().sum() > 0 for g in grads):
        return "no gradient reaches the model"
    return None


def off_problem(method: str, loss: str) -> str | None:
    off = dict(registry.METHODS[method].off_params)
    switched_off = train(method, loss, off)
    from dmlsynth.config import filled

    control = train(registry.BASELINE, loss, {}, loss_params=registry.loss_params(loss, filled({}), method))
    if switched_off[0] != control[0]:
        return f"losses per step {switched_off[0]} differ from the control's {control[0]}"
    if not _same(switched_off, control):
        return "the final weights differ from the control's"
    return None


def resume_problem(method: str, loss: str) -> str | None:
    whole, resumed = train(method, loss, {}), train_resumed(method, loss, {})
    if whole[0] != resumed[0]:
        return f"losses per step {resumed[0]} after resuming, {whole[0]} without"
    return None if _same(whole, resumed) else "the final weights differ after resuming"


def seed_problem(method: str, loss: str) -> str | None:
    first, again = train(method, loss, {}), train(method, loss, {})
    return None if _same(first, again) else f"losses per step {first[0]}, then {again[0]} with the same seed"


FIXES = {
    "entry": "fix the spec's params_schema, defaults, off_params or compatible_losses",
    "step": "forward(embeddings, labels, features) must return a finite scalar loss built from the embeddings",
    "off": "with off_params the method must call exactly base_loss(embeddings, labels) and draw no random numbers",
    "resume": "keep state in registered buffers (state_dict) and draw random numbers from context.generator",
    "seed": "draw random numbers only from context.generator; no unseeded or global state",
}


def pair_checks(name: str, loss: str) -> list[Result]:
    """The checks of method ``name`` trained with ``loss``: step, off ≡ control (not for baseline), resume, seed."""
    checks = [
        ("one step forward and backward", step_problem, "step"),
        ("off params train bit-identically to the control", off_problem, "off"),
        ("checkpoint and resume give the same numbers", resume_problem, "resume"),
        ("same seed, same numbers", seed_problem, "seed"),
    ]
    return [
        _guarded(f"{name} + {loss}: {title}", lambda problem=problem: problem(name, loss), FIXES[key])
        for title, problem, key in checks
        if not (key == "off" and name == registry.BASELINE)
    ]


def check_method(name: str) -> list[Result]:
    """Every check of method ``name`` (the entry, then per compatible loss: step, off, resume, seed)."""
    if name not in registry.METHODS:
        return [Result(f"method {name}", False, f"no such method; known: {', '.join(sorted(registry.METHODS))}")]
    results = [_guarded(f"{name}: registry entry", lambda: entry_problems("methods", name), FIXES["entry"])]
    for loss in (loss for loss in registry.LOSSES if registry.METHODS[name].is_compatible(loss)):
        results += pair_checks(name, loss)
    return results


def loss_problem(name: str) -> str | None:
    loss = build_loss(name, registry.LOSSES[name].defaults, CLASSES, DIM)
    if not isinstance(loss, BaseLoss):
        return f"its builder returned a {type(loss).__name__}, not a dmlsynth.losses.BaseLoss"
    if loss.pair_based != registry.LOSSES[name].pair_based:
        return f"the built loss says pair_based={loss.pair_based}, its LossSpec {registry.LOSSES[name].pair_based}"
    return None


def check_loss(name: str) -> list[Result]:
    """Every check of loss ``name``: the entry, its builder, and baseline's step, resume and seed checks with it."""
    if name not in registry.LOSSES:
        return [Result(f"loss {name}", False, f"no such loss; known: {', '.join(sorted(registry.LOSSES))}")]
    results = [
        _guarded(f"{name}: registry entry", lambda: entry_problems("losses", name), "fix the LossSpec's defaults"),
        _guarded(f"{name}: builds a BaseLoss", lambda: loss_problem(name),
                 "LossSpec.build(params, num_classes, embedding_dim) must return a dmlsynth.losses.BaseLoss"),
    ]  # fmt: skip
    return results + pair_checks(registry.BASELINE, name)


def dataset_entry_problem(name: str) -> str | None:
    from dmlsynth import layout

    spec = registry.dataset(name)
    for field_name in ("prepare", "prompts"):
        if not callable(registry.load_object(getattr(spec, field_name))):
            return f"its {field_name} {getattr(spec, field_name)!r} is not a function"
    if spec.default_backbone not in registry.BACKBONES:
        return f"default_backbone {spec.default_backbone!r} is none of {', '.join(registry.BACKBONES)}"
    if spec.default_generator not in registry.GENERATORS:
        return f"default_generator {spec.default_generator!r} is none of {', '.join(registry.GENERATORS)}"
    if layout.MANIFEST not in spec.outputs:
        return f"outputs must include {layout.MANIFEST!r}"
    if not 0 < spec.train_classes < spec.num_classes:
        return f"train_classes must be between 0 and num_classes ({spec.num_classes}), not {spec.train_classes}"
    return None if spec.image_mode in ("L", "RGB") else f"image_mode must be 'L' or 'RGB', not {spec.image_mode!r}"


def prepared_problem(name: str, settings: Mapping[str, Any]) -> str | None:
    """Prepare the dataset into a temporary folder and compare its manifest with the entry."""
    import tempfile
    from pathlib import Path

    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.data.prepare import prepare

    spec = registry.dataset(name)
    with tempfile.TemporaryDirectory(prefix=f"dmlsynth-check-{name}-") as tmp:
        frame = read_manifest(prepare(name, settings, Path(tmp) / "data", Path(tmp) / "raw"))
    classes, train = frame["label"].nunique(), frame.loc[frame["split"] == "train", "label"].nunique()
    if (classes, train) != (spec.num_classes, spec.train_classes):
        return (
            f"the prepared manifest has {classes} classes ({train} train), its DatasetSpec says {spec.num_classes} "
            f"({spec.train_classes} train)"
        )
    return None


def check_dataset(name: str, config: Mapping[str, Any]) -> list[Result]:
    """The checks of dataset ``name``: its entry, then preparing it with ``config``'s dataset settings (a dataset
    the config declares, ``dataset_settings.<name>.source``, is resolved from them first)."""
    from dmlsynth.data import declared

    undeclarable = [p.strip(" -") for p in declared.declare({**config, "datasets": [name]}) if p.startswith(f"  - at dataset_settings.{name}")]
    if undeclarable:
        return [Result(f"dataset {name}", False, "; ".join(undeclarable))]
    if name not in registry.datasets():
        return [Result(f"dataset {name}", False, f"no such dataset; known: {', '.join(sorted(registry.datasets()))}")]
    entry = _guarded(f"{name}: registry entry", lambda: dataset_entry_problem(name), "fix the DatasetSpec")
    settings = registry.dataset_settings(config, name)
    prepared = _guarded(
        f"{name}: prepares into a manifest that matches its entry", lambda: prepared_problem(name, settings),
        f"fix dataset_settings.{name} or the DatasetSpec's num_classes and train_classes",
    )  # fmt: skip
    return [entry, prepared]


def gate(method: str, loss: str) -> None:
    """Before a plugin's method trains: its checks with the run's loss (:func:`pair_checks`); raise a
    :class:`dmlsynth.plugins.PluginError` naming the plugin and each failed check, so it does not train.
    The built-in methods pass the same checks in the project's tests, so they are not run again here."""
    from dmlsynth import plugins

    plugin = plugins.plugin_of("methods", method)
    if plugin is None:
        return
    failed = [result for result in pair_checks(method, loss) if not result.passed]
    if failed:
        raise plugins.PluginError(
            f"method {method!r} of {plugin.label} breaks the contract with loss {loss!r}, so it does not train:\n  "
            + "\n  ".join(result.line() for result in failed)
            + f"\n(dmlsynth check-method {method} runs every check)"
        )
