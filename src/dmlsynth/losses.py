"""Base losses from pytorch-metric-learning with the papers' defaults (METHODS.md §3)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from pytorch_metric_learning import distances, losses, miners
from torch import nn

from dmlsynth import registry


class BaseLoss(nn.Module):
    """A pml loss plus its optional miner, called like a pml loss.

    ``forward(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None)``:
    when no ``indices_tuple`` is given and the loss has a miner, the miner
    picks the pairs. Methods wrap this object (see :mod:`dmlsynth.methods`).
    """

    def __init__(self, name: str, loss: nn.Module, miner: nn.Module | None, lr_multiplier: float = 1.0):
        super().__init__()
        self.name = name
        self.loss = loss
        self.miner = miner
        self.pair_based = registry.LOSSES[name].pair_based
        # Learning rate of the loss's own parameters (proxies) relative to the backbone's.
        self.lr_multiplier = lr_multiplier

    def mine(self, embeddings, labels, ref_emb=None, ref_labels=None):
        if self.miner is None:
            return None
        return self.miner(embeddings, labels, ref_emb, ref_labels)

    def forward(self, embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None) -> torch.Tensor:
        if indices_tuple is None:
            indices_tuple = self.mine(embeddings, labels, ref_emb, ref_labels)
        return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)


def build_loss(name: str, params: Mapping[str, Any], num_classes: int, embedding_dim: int) -> BaseLoss:
    if name not in registry.LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(registry.LOSSES))}")
    p = dict(registry.LOSSES[name].defaults)
    p.update(params)
    if name == "multi_similarity":
        return BaseLoss(
            name,
            losses.MultiSimilarityLoss(alpha=p["alpha"], beta=p["beta"], base=p["base"]),
            miners.MultiSimilarityMiner(epsilon=p["miner_epsilon"]),
        )
    if name == "proxy_anchor":
        return BaseLoss(
            name,
            losses.ProxyAnchorLoss(num_classes, embedding_dim, margin=p["margin"], alpha=p["alpha"]),
            None,
            lr_multiplier=p["proxy_lr_multiplier"],
        )
    if name == "contrastive":
        return BaseLoss(
            name,
            losses.ContrastiveLoss(
                pos_margin=p["pos_margin"], neg_margin=p["neg_margin"], distance=distances.CosineSimilarity()
            ),
            None,
        )
    if name == "triplet":
        return BaseLoss(name, losses.TripletMarginLoss(margin=p["margin"]), None)
    raise AssertionError(f"loss {name!r} is registered but has no builder")
