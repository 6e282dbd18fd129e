"""``sgar``: intra-class ranking over graded synthetic samples (after Liu et al., EAAI 2024; METHODS.md §6).

What the paper's abstract fixes: samples are synthesised at several intensities (with diversity,
"for samples satisfying certain conditions") and a ranking loss keeps them ordered by intensity,
next to a supervised base loss. The paper's equations and the official code could not be read
(docs/methods.md §6 says what was searched), so **the rule here is a [project definition]**:
for every sample k of the batch with backbone features r_k (before the embedding layer), J
graded features

    r_{k,j} = r_k + j·α·‖r_k‖·u_{k,j},   j = 1..J,

are made, with a fresh random unit direction u_{k,j} for every level (drawn
from ``context.generator`` each step), and sent through the model's
embedding layer: g_{k,j} = embedding_layer(r_{k,j}); g_{k,0} is the sample's
own embedding. For every same-class pair (a, k), a ≠ k, of the batch the
similarities to the anchor must fall with the intensity, by a margin m:

    L_rank = mean over (a, k) of Σ_{j=0..J−1} [ s(e_a, g_{k,j+1}) − s(e_a, g_{k,j}) + m ]₊

(s: cosine similarity), and the training loss is base loss + w·L_rank.

Its parts: the step is relative to the feature norm (α·‖r_k‖, ‖r_k‖ without
gradient, so α means the same for every backbone); every sample is
synthesised and every same-class pair is ranked (the abstract's conditions
are not known); the hinge with margin m between consecutive levels; the
directions are uniform on the unit sphere of the feature space. Gradients
reach the backbone through r_k and e_a and the embedding layer through
every g_{k,j}. The ranking term uses only the batch's labels, so it works
with every base loss (the paper used it on Proxy-Anchor).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from dmlsynth.methods.base import Method, MethodContext


def graded_features(
    features: torch.Tensor, steps: int = 5, alpha: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``(steps, N, F)``: r + j·α·‖r‖·u_j for j = 1..steps, a fresh unit direction u_j per row and level.

    The directions come from ``generator`` on the CPU (the same draws on
    every device) and carry no gradient; ‖r‖ is taken without gradient.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be an (N, F) tensor, got shape {tuple(features.shape)}")
    if steps < 1 or alpha <= 0:
        raise ValueError(f"steps must be >= 1 and alpha > 0, got steps={steps}, alpha={alpha}")
    n, width = features.shape
    directions = torch.randn((steps, n, width), generator=generator, dtype=torch.float32)
    directions = F.normalize(directions, dim=2).to(features.device, features.dtype)
    scale = features.detach().norm(dim=1)[None, :, None]
    levels = torch.arange(1, steps + 1, device=features.device, dtype=features.dtype)[:, None, None] * alpha
    return features[None] + levels * scale * directions


def graded_similarities(embeddings: torch.Tensor, graded: torch.Tensor) -> torch.Tensor:
    """``(J + 1, N, N)``: entry [j, a, k] = cos(e_a, g_{k,j}), with g_{k,0} = e_k and ``graded`` ``(J, N, D)``."""
    anchors = F.normalize(embeddings, dim=1)
    samples = F.normalize(torch.cat([embeddings[None], graded]), dim=2)
    return torch.einsum("ad,jkd->jak", anchors, samples)


def ranking_loss(similarities: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over columns of Σ_j [s_{j+1} − s_j + margin]₊ for ``(J + 1, P)`` similarities (row 0: the real sample)."""
    if similarities.shape[1] == 0:
        return similarities.sum()
    return F.relu(similarities[1:] - similarities[:-1] + margin).sum(dim=0).mean()


class GradedRanking(Method):
    """Base loss + ``weight`` × the ranking loss over samples graded in the backbone's feature space."""

    def __init__(self, base_loss, params: Mapping[str, Any], context: MethodContext):
        super().__init__(base_loss, params, context)
        self.steps = int(self.params["steps"])
        self.alpha = float(self.params["alpha"])
        self.margin = float(self.params["margin"])
        self.weight = float(self.params["weight"])
        if self.weight and context.embedding_layer is None:
            raise ValueError("method 'sgar' synthesises before the embedding layer: the MethodContext needs embedding_layer")

    def rank_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """L_rank over every same-class pair (a, k), a ≠ k, of the batch."""
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        if not same.any():
            return embeddings.sum() * 0.0
        graded = self.context.embedding_layer(graded_features(features, self.steps, self.alpha, self.context.generator))
        similarities = graded_similarities(embeddings, graded.to(embeddings.dtype))
        anchors, samples = torch.nonzero(same, as_tuple=True)
        return ranking_loss(similarities[:, anchors, samples], self.margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.base_loss(embeddings, labels)
        if self.weight == 0:
            return loss
        if features is None:
            raise ValueError("method 'sgar' needs the backbone features of the batch: call it as method(embeddings, labels, features=...)")
        return loss + self.weight * self.rank_loss(embeddings, labels, features)
