"""Synthesis methods. Each wraps a base loss (:class:`dmlsynth.losses.BaseLoss`).

A method is an ``nn.Module`` built as ``Method(base_loss, params, context)``
whose ``forward(embeddings, labels)`` returns the training loss of a batch.
Feature-space methods synthesise embeddings inside ``forward``; data-level
methods (BLenDeR) add generated images to the training set and otherwise
behave like ``baseline``. Methods are listed in :data:`dmlsynth.registry.METHODS`.
"""

from dmlsynth.methods.base import Method, MethodContext

__all__ = ["Method", "MethodContext"]
