"""Set operators on classifier-free-guidance residuals (METHODS.md §7).

``residuals`` is a tensor ``(K, B, ...)``: for each of K prompt conditions and
B images, ``d_i = eps(x_t, c_i) - eps(x_t, ∅)``. Every operator works per
image and returns ``(B, ...)``. The guided noise prediction is
``eps_∅ + w * op(d)``.

The intersection and union are the project's own definitions **[project
definition]** (the paper's exact rule was not available):

- intersection: ``v`` = top right-singular vector of ``D = [d_1; …; d_K]``
  (rows flattened), signed so that ``Σ_i <d_i, v> >= 0``;
  ``∩(d) = ((1/K) Σ_i <d_i, v>) v`` — the component all prompts share.
- union: ``∪(d) = Σ_i d_i - (K - 1) ∩(d)`` (inclusion–exclusion: each
  prompt's own part once, the shared part once).
- conjunction: ``Σ_i d_i`` (Composable Diffusion's AND), kept as an ablation.

With all residuals equal every operator returns that residual, and with
K = 1 all of them are ordinary classifier-free guidance.
"""

from __future__ import annotations

import torch

OPERATORS = ("union", "intersection", "conjunction")


def _work_dtype(residuals: torch.Tensor) -> torch.dtype:
    # Half-precision residuals (fp16 UNets) are combined in float32; float64 stays float64.
    return torch.promote_types(residuals.dtype, torch.float32)


def _check(residuals: torch.Tensor) -> None:
    if residuals.dim() < 2:
        raise ValueError(f"residuals must be shaped (K, B, ...), got shape {tuple(residuals.shape)}")
    if residuals.shape[0] < 1:
        raise ValueError("residuals need at least one prompt condition (K >= 1)")


def principal_direction(residuals: torch.Tensor) -> torch.Tensor:
    """Per image, the top right-singular vector of the K x N residual matrix, signed as §7 says.

    Returns ``(B, N)`` unit vectors (zero where every residual is zero). It is
    computed from the K x K Gram matrix ``D Dᵀ = U S² Uᵀ`` (``v = Dᵀ u / s``),
    which is exact and costs O(K² N) instead of an SVD of a K x N matrix.
    """
    _check(residuals)
    k, b = residuals.shape[:2]
    flat = residuals.reshape(k, b, -1).transpose(0, 1).to(_work_dtype(residuals))  # (B, K, N)
    gram = flat @ flat.transpose(1, 2)  # (B, K, K)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
    top = eigenvectors[:, :, -1]  # (B, K)
    singular = eigenvalues[:, -1].clamp_min(0).sqrt()  # (B,)
    direction = (top.unsqueeze(1) @ flat).squeeze(1)  # (B, N) = u^T D = s v
    safe = torch.where(singular > 0, singular, torch.ones_like(singular))
    direction = direction / safe.unsqueeze(1)
    direction = torch.where((singular > 0).unsqueeze(1), direction, torch.zeros_like(direction))
    # Sign: the shared direction points the way the residuals point on average.
    total = (flat @ direction.unsqueeze(2)).squeeze(2).sum(dim=1)  # Σ_i <d_i, v>
    sign = torch.where(total < 0, -torch.ones_like(total), torch.ones_like(total))
    return direction * sign.unsqueeze(1)


def intersection(residuals: torch.Tensor) -> torch.Tensor:
    """``∩(d) = ((1/K) Σ_i <d_i, v>) v``: the part of the residuals that all prompts share."""
    _check(residuals)
    k, b = residuals.shape[:2]
    flat = residuals.reshape(k, b, -1).transpose(0, 1).to(_work_dtype(residuals))  # (B, K, N)
    direction = principal_direction(residuals)  # (B, N)
    coefficient = (flat @ direction.unsqueeze(2)).squeeze(2).mean(dim=1)  # (B,)
    result = coefficient.unsqueeze(1) * direction
    return result.reshape(residuals.shape[1:]).to(residuals.dtype)


def conjunction(residuals: torch.Tensor) -> torch.Tensor:
    """``Σ_i d_i`` (Composable Diffusion's conjunction)."""
    _check(residuals)
    return residuals.to(_work_dtype(residuals)).sum(dim=0).to(residuals.dtype)


def union(residuals: torch.Tensor) -> torch.Tensor:
    """``∪(d) = Σ_i d_i − (K − 1) ∩(d)``: each prompt's own part once, the shared part once."""
    _check(residuals)
    k = residuals.shape[0]
    result = residuals.to(_work_dtype(residuals)).sum(dim=0) - (k - 1) * intersection(residuals).to(_work_dtype(residuals))
    return result.to(residuals.dtype)


def combine(residuals: torch.Tensor, operators: list[str] | tuple[str, ...]) -> torch.Tensor:
    """Apply ``operators[b]`` to image b's residuals; returns ``(B, ...)``.

    The conjunction and the intersection are computed once for the whole batch
    (the union is derived from both), so mixing operators in a batch costs no
    more than using one.
    """
    _check(residuals)
    b = residuals.shape[1]
    if len(operators) != b:
        raise ValueError(f"got {len(operators)} operators for a batch of {b} images; give one per image")
    unknown = sorted(set(operators) - set(OPERATORS))
    if unknown:
        raise ValueError(f"unknown operator(s) {unknown}; known: {', '.join(OPERATORS)}")
    k = residuals.shape[0]
    total = residuals.to(_work_dtype(residuals)).sum(dim=0)
    if k == 1:
        return total.to(residuals.dtype)  # plain classifier-free guidance for every operator
    if set(operators) == {"conjunction"}:
        return total.to(residuals.dtype)  # no shared part needed
    shared = intersection(residuals).to(_work_dtype(residuals))
    choices = {"conjunction": total, "intersection": shared, "union": total - (k - 1) * shared}
    pick = torch.stack([choices[name][i] for i, name in enumerate(operators)])
    return pick.to(residuals.dtype)
