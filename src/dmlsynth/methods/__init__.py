"""Synthesis methods. Each wraps a base loss (:class:`dmlsynth.losses.BaseLoss`).

A method is an ``nn.Module`` built as ``Method(base_loss, params, context)``
whose ``forward(embeddings, labels)`` returns the training loss of a batch.
Feature-space methods synthesise embeddings inside ``forward``; data-level
methods (BLenDeR) add generated images to the training set and otherwise
behave like ``baseline``. Methods are listed in :data:`dmlsynth.registry.METHODS`.
"""

from typing import Any, Mapping

from dmlsynth import registry
from dmlsynth.losses import BaseLoss
from dmlsynth.methods.base import Method, MethodContext

__all__ = ["Method", "MethodContext", "build_method", "method_class"]


def method_class(name: str) -> type[Method]:
    if name not in registry.METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(registry.METHODS))}")
    return registry.load_object(registry.METHODS[name].module)


def build_method(name: str, base_loss: BaseLoss, params: Mapping[str, Any], context: MethodContext) -> Method:
    """The method ``name`` of the registry around ``base_loss`` (``params``: its resolved method params)."""
    return method_class(name)(base_loss, params, context)
