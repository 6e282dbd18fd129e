"""The interface every method implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from dmlsynth.losses import BaseLoss


@dataclass
class MethodContext:
    """What the training loop offers a method.

    ``generator`` is the method's own seeded random stream (its state is
    checkpointed with the run, so a resumed run draws the same samples).
    ``embed_training_set()`` returns the un-normalised embeddings of every
    training image and their class indices, computed in eval mode without
    gradients (IAA re-estimates its class statistics with it).
    """

    num_classes: int
    embedding_dim: int
    num_epochs: int
    generator: torch.Generator
    embed_training_set: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    device: torch.device


class Method(nn.Module):
    """A training objective built on a base loss.

    Subclasses override :meth:`forward` and, if they keep statistics or
    schedules, :meth:`on_epoch_start`. State that must survive a resume is
    kept in registered buffers (it travels with ``state_dict``).
    """

    def __init__(self, base_loss: BaseLoss, params: Mapping[str, Any], context: MethodContext):
        super().__init__()
        self.base_loss = base_loss
        self.params = dict(params)
        self.context = context

    def on_epoch_start(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (0-based) of ``context.num_epochs``."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.base_loss(embeddings, labels)
