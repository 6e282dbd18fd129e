"""``sgar``: intra-class ranking with graded synthesis (Liu et al., EAAI 2024; METHODS.md §6).

Published idea: synthesise intra-class samples at several intensities and
add a ranking loss that keeps their order. The concrete rule is a
**[project definition]** (METHODS.md §6): for every same-class pair (a, p)
of the batch whose similarity is above the batch median of positive
similarities, J graded samples ``g_j = normalise(p̂ + j·δ·u)`` (u a random
unit vector ⟂ p̂) are made and

    L_rank = mean over (a, p) of Σ_{j=0..J−1} [ s(a, g_{j+1}) − s(a, g_j) + m ]₊ ,  g_0 = p̂

is added to the base loss with weight w. The ranking term uses only the
batch's labels, so it works with every base loss (the paper used it on
Proxy-Anchor).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from dmlsynth.methods.base import Method, MethodContext


def graded_positives(p: torch.Tensor, steps: int = 4, delta: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(steps, N, D)`` unit vectors ``normalise(p̂ + j·δ·u)``, j = 1..steps.

    ``u`` is one random unit vector ⟂ p̂ per row, so the similarity to ``p``
    is 1/√(1 + (jδ)²): strictly falling with j. Gradients reach ``p``
    through p̂; the direction u is a fixed random draw (from ``generator``,
    on the CPU).
    """
    if p.dim() != 2:
        raise ValueError(f"p must be an (N, D) tensor, got shape {tuple(p.shape)}")
    if steps < 1 or delta <= 0:
        raise ValueError(f"steps must be >= 1 and delta > 0, got steps={steps}, delta={delta}")
    p_hat = F.normalize(p, dim=1)
    direction = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
    fixed = p_hat.detach()
    direction = F.normalize(direction - (direction * fixed).sum(dim=1, keepdim=True) * fixed, dim=1)
    offsets = torch.arange(1, steps + 1, device=p.device, dtype=p.dtype) * delta
    return F.normalize(p_hat[None] + offsets[:, None, None] * direction[None], dim=2)


def ranking_loss(similarities: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over columns of Σ_j [s_{j+1} − s_j + margin]₊ for ``(J + 1, P)`` similarities (row 0: g_0 = p̂)."""
    if similarities.shape[1] == 0:
        return similarities.sum()
    return F.relu(similarities[1:] - similarities[:-1] + margin).sum(dim=0).mean()


class GradedRanking(Method):
    """Base loss + ``weight`` × the ranking loss over graded synthetic positives."""

    def __init__(self, base_loss, params: Mapping[str, Any], context: MethodContext):
        super().__init__(base_loss, params, context)
        self.steps = int(self.params.get("steps", 4))
        self.delta = float(self.params.get("delta", 0.1))
        self.margin = float(self.params.get("margin", 0.01))
        self.weight = float(self.params.get("weight", 1.0))

    def rank_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normalised = F.normalize(embeddings, dim=1)
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        anchors, positives = torch.nonzero(same, as_tuple=True)
        if anchors.numel() == 0:
            return embeddings.sum() * 0.0
        positive_sims = (normalised[anchors] * normalised[positives]).sum(dim=1)
        # The "condition": pairs more similar than the batch median of positive similarities.
        chosen = positive_sims.detach() > torch.quantile(positive_sims.detach(), 0.5)
        anchors, positives, positive_sims = anchors[chosen], positives[chosen], positive_sims[chosen]
        graded = graded_positives(embeddings[positives], self.steps, self.delta, self.context.generator)
        graded_sims = (graded * normalised[anchors][None]).sum(dim=2)  # (J, P)
        return ranking_loss(torch.cat([positive_sims[None], graded_sims]), self.margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.base_loss(embeddings, labels)
        if self.weight == 0:
            return loss
        return loss + self.weight * self.rank_loss(embeddings, labels)
