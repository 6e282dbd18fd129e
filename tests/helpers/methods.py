"""Helpers shared by the method tests: a tiny backbone, a method built as train.py builds it."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from dmlsynth import registry
from dmlsynth.config import filled
from dmlsynth.losses import build_loss
from dmlsynth.methods.base import MethodContext

NUM_CLASSES = 5
PER_CLASS = 8
IN_DIM = 12
FEATURE_DIM = 24
EMB_DIM = 16


def batch(seed: int = 0, per_class: int = PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs for a tiny linear backbone and their class indices, M per class like MPerClassSampler."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    centres = torch.randn(NUM_CLASSES, IN_DIM, generator=g)
    inputs = centres[labels] + 0.7 * torch.randn(len(labels), IN_DIM, generator=g)
    return inputs, labels


def backbone(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN_DIM, EMB_DIM)


def trunk_and_head(seed: int = 0) -> tuple[nn.Module, nn.Linear]:
    """A tiny two-stage model: a trunk to ``FEATURE_DIM`` backbone features and a linear embedding head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_DIM, FEATURE_DIM), nn.ReLU()), nn.Linear(FEATURE_DIM, EMB_DIM)


def build(
    method: str,
    loss: str,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    embed_training_set: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    num_epochs: int = 10,
    embedding_layer: nn.Module | None = None,
    loss_params: dict[str, Any] | None = None,
):
    """A method on a base loss with its registry defaults updated by ``params`` (proxies seeded).

    The base loss gets the loss params the method's runs use (``registry.loss_params(loss, filled({}), method)``,
    e.g. symm's unit form of n_pairs), updated by ``loss_params``."""
    spec = registry.METHODS[method]
    torch.manual_seed(1234)  # same proxies for every method
    base = build_loss(loss, {**registry.loss_params(loss, filled({}), method), **(loss_params or {})}, NUM_CLASSES, EMB_DIM)
    context = MethodContext(
        num_classes=NUM_CLASSES,
        embedding_dim=EMB_DIM,
        num_epochs=num_epochs,
        generator=torch.Generator().manual_seed(seed),
        embed_training_set=embed_training_set or (lambda **_: (_ for _ in ()).throw(AssertionError("not expected"))),
        device=torch.device("cpu"),
        embedding_layer=embedding_layer,
    )
    return registry.load_object(spec.module)(base, spec.resolve(params), context)


def loss_and_grad(method_module, inputs: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[float, torch.Tensor]:
    """Loss of one step through a fresh linear backbone and the gradient on its weight."""
    model = backbone(seed)
    loss = method_module(model(inputs), labels)
    loss.backward()
    return float(loss.detach()), model.weight.grad.clone()


def two_stage_step(method: str, loss: str, inputs: torch.Tensor, labels: torch.Tensor, params=None, seed: int = 0):
    """Loss of one step through a fresh trunk + embedding head (the method also gets the features and the
    head, as in training) and the gradients on all their parameters."""
    trunk, head = trunk_and_head(seed)
    module = build(method, loss, params, embedding_layer=head)
    features = trunk(inputs)
    value = module(head(features), labels, features=features)
    value.backward()
    return float(value.detach()), [p.grad.clone() for part in (trunk, head) for p in part.parameters()]


def train_digits(method: str, loss: str, config: dict, manifest, run_dir, method_params=None, **kwargs):
    """A real :func:`dmlsynth.training.loop.train_run` of ``method`` on the prepared digits (config fixture budget)."""
    from dmlsynth.config import run_params, validate
    from dmlsynth.training.loop import train_run

    config = dict(config)
    config["methods"] = [method]
    config["losses"] = [loss]
    config["method_params"] = {method: dict(method_params or {})}
    config = validate(config)
    params = run_params(config, "digits", method, loss, 0)
    return train_run(params, manifest, run_dir, progress=False, **kwargs)

