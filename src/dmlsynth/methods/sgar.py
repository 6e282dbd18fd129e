"""``sgar``: intra-class ranking with graded synthesis (Liu et al., EAAI 2024; METHODS.md §6).

Published idea: synthesise intra-class samples at several intensities and
add a ranking loss that keeps their order. The concrete rule is a
**[project definition]** (METHODS.md §6): for every same-class pair (a, p)
of the batch whose similarity is above the batch median of positive
similarities, J graded samples ``g_j = normalise(p̂ + j·δ·u)`` (u a random
unit vector ⟂ p̂) are made and

    L_rank = mean over (a, p) of Σ_{j=0..J−1} [ s(a, g_{j+1}) − s(a, g_j) + m ]₊ ,  g_0 = p̂

is added to the base loss with weight w. One direction u is drawn per
sample and step (``context.generator``) and shared by every anchor that has
that sample as positive; the similarities s(a, g_j) are evaluated in closed
form (:func:`graded_similarity_matrix`, equal in value and gradient to
dotting the explicit :func:`graded_positives`). The ranking term uses only the
batch's labels, so it works with every base loss (the paper used it on
Proxy-Anchor).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from dmlsynth.methods.base import Method, MethodContext


def random_tangent(p_hat: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random unit vector ⟂ each row of the unit vectors ``p_hat`` (a fixed draw: no gradient)."""
    fixed = p_hat.detach()
    direction = torch.randn(fixed.shape, generator=generator, dtype=torch.float32).to(fixed.device, fixed.dtype)
    return F.normalize(direction - (direction * fixed).sum(dim=1, keepdim=True) * fixed, dim=1)


def graded_positives(p: torch.Tensor, steps: int = 4, delta: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(steps, N, D)`` unit vectors ``normalise(p̂ + j·δ·u)``, j = 1..steps.

    ``u`` is one random unit vector ⟂ p̂ per row, so the similarity to ``p``
    is 1/√(1 + (jδ)²): strictly falling with j. Gradients reach ``p``
    through p̂; the direction u is a fixed random draw (from ``generator``,
    on the CPU).
    """
    _check(p, steps, delta)
    p_hat = F.normalize(p, dim=1)
    direction = random_tangent(p_hat, generator)
    offsets = torch.arange(1, steps + 1, device=p.device, dtype=p.dtype) * delta
    return F.normalize(p_hat[None] + offsets[:, None, None] * direction[None], dim=2)


def graded_similarity_matrix(
    embeddings: torch.Tensor, steps: int = 4, delta: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(steps + 1, N, N)``: entry [j, i, k] is s(x_i, g_j(x_k)), g_0(x_k) = x̂_k.

    The same values and gradients as ``graded_positives(embeddings, ...)``
    (same random draws: one direction u per row) dotted with every x̂_i, in
    closed form and without materialising the ``(steps, N, D)`` samples:
    with t = jδ, s(a, g_j) = (â·p̂ + t â·u) / ‖p̂ + t u‖ and
    ‖p̂ + t u‖² = 1 + 2t p̂·u + t² (p̂·u is 0 in value, kept for its gradient).
    """
    _check(embeddings, steps, delta)
    x_hat = F.normalize(embeddings, dim=1)
    direction = random_tangent(x_hat, generator)
    sims = x_hat @ x_hat.T
    toward = x_hat @ direction.T  # [i, k] = x̂_i · u_k
    self_u = (x_hat * direction).sum(dim=1)  # [k] = x̂_k · u_k
    t = torch.arange(1, steps + 1, device=embeddings.device, dtype=embeddings.dtype)[:, None, None] * delta
    graded = (sims[None] + t * toward[None]) / torch.sqrt(1 + 2 * t * self_u[None, None, :] + t**2)
    return torch.cat([sims[None], graded])


def _check(p: torch.Tensor, steps: int, delta: float) -> None:
    if p.dim() != 2:
        raise ValueError(f"p must be an (N, D) tensor, got shape {tuple(p.shape)}")
    if steps < 1 or delta <= 0:
        raise ValueError(f"steps must be >= 1 and delta > 0, got steps={steps}, delta={delta}")


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
        """L_rank over the same-class pairs (a, p) whose similarity is above the batch median."""
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        if not same.any():
            return embeddings.sum() * 0.0
        # One graded direction per sample, shared by every anchor that has it as positive.
        similarities = graded_similarity_matrix(embeddings, self.steps, self.delta, self.context.generator)
        anchors, positives = torch.nonzero(same, as_tuple=True)
        positive_sims = similarities[0, anchors, positives].detach()
        # The "condition": pairs more similar than the batch median of positive similarities.
        chosen = positive_sims > torch.quantile(positive_sims, 0.5)
        return ranking_loss(similarities[:, anchors[chosen], positives[chosen]], self.margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.base_loss(embeddings, labels)
        if self.weight == 0:
            return loss
        return loss + self.weight * self.rank_loss(embeddings, labels)
