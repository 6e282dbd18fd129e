"""The interface every method implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import pandas as pd
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
    gradients (IAA re-estimates its class statistics with it); with
    ``augmented=True`` the images go through the training augmentation
    instead of the evaluation view. ``embedding_layer`` is the model's head
    that maps backbone features to embeddings (SGAR synthesises before it).
    """

    num_classes: int
    embedding_dim: int
    num_epochs: int
    generator: torch.Generator
    embed_training_set: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    device: torch.device
    embedding_layer: nn.Module | None = None


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

    @classmethod
    def training_frame(
        cls, train_frame: pd.DataFrame, generated_frame: pd.DataFrame | None, params: Mapping[str, Any], seed: int
    ) -> pd.DataFrame:
        """The training images of a run (manifest rows): the real ones, unless a data-level method adds some."""
        if generated_frame is not None:
            raise ValueError(f"{cls.__name__} does not train with generated images")
        return train_frame

    def on_epoch_start(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (0-based) of ``context.num_epochs``."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a batch: ``embeddings`` ``(B, D)``, ``labels`` ``(B,)``, and the backbone
        ``features`` ``(B, F)`` the embeddings were computed from (``embedding_layer(features)``)."""
        return self.base_loss(embeddings, labels)
