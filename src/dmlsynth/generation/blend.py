"""Set operators on classifier-free-guidance residuals (docs/methods.md §7).

``residuals`` is a tensor ``(K, B, ...)``: for each of K prompt conditions and
B images, ``d_k = eps(x_t, c_k) - eps(x_t, ∅)``. Every operator works per
image and returns ``(B, ...)``; the guided noise prediction is
``eps_∅ + w * op(d)``.

The paper (Kolf et al., arXiv 2601.20246) names the operations (the union
"encourages any attribute present across multiple prompts", the intersection
"extracts the common direction through a principal component surrogate") but
its exact rule is not public. The definitions below are the project's own
**[project definition]**. They treat every element of the residual (latent
channel x pixel) as a signed membership degree, as fuzzy set operations do:

- intersection: per element, ``∩(d) = sign · min_k |d_k|`` where all K
  residuals have the same sign, and 0 where any two disagree (or any is 0):
  how far *every* prompt pushes that element, in the direction they all agree on.
- union (inclusion–exclusion): ``∪(d) = ∩(d) + Σ_k (d_k − ∩(d)) = Σ_k d_k − (K − 1) ∩(d)``:
  the shared part once, plus each prompt's own excess over it at full strength.
- conjunction: ``Σ_k d_k`` (Composable Diffusion's AND), kept as an ablation.

Why per element, and not a principal component: a rule that treats all
directions alike (built from inner products and linear combinations of the
``d_k``, like the top singular vector the project used before) can only
return vectors in the span of the residuals. For ``d_k = s + a_k`` with
attributes ``a_k`` orthogonal to ``s`` and to each other, ``s`` is not in
that span; the nearest such rule gives ``s + (1/K) Σ a_k`` for the
intersection and union alike (measured: the two then differ by about 1 % of
the residual on the digits generator). Image attributes are local (a
thicker stroke, a blue wing change some latent pixels and channels, not
others), and on residuals whose attributes occupy different elements the
rules above are exact: ``∩ = s`` and ``∪ = s + Σ_k a_k``.

Checks (tests/unit/generation/test_blend.py): all residuals equal ⇒ every
operator but the conjunction returns that residual; K = 1 ⇒ every operator is
ordinary classifier-free guidance; ``∩`` is symmetric in the prompts and
``∩(c·d) = c·∩(d)`` for every real c. The operators cost O(K·N) per image,
a negligible share of a denoising step (benchmarks/bench_blend_sampler.py).
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


def _intersection(work: torch.Tensor) -> torch.Tensor:
    """Per element: the value closest to 0 where all K agree in sign, else 0 (``work``: (K, B, ...))."""
    all_positive = (work > 0).all(dim=0)
    all_negative = (work < 0).all(dim=0)
    smallest = torch.where(all_positive, work.amin(dim=0), torch.zeros((), dtype=work.dtype, device=work.device))
    return torch.where(all_negative, work.amax(dim=0), smallest)


def intersection(residuals: torch.Tensor) -> torch.Tensor:
    """``∩(d)``: per element, ``sign · min_k |d_k|`` where all residuals agree in sign, else 0."""
    _check(residuals)
    return _intersection(residuals.to(_work_dtype(residuals))).to(residuals.dtype)


def conjunction(residuals: torch.Tensor) -> torch.Tensor:
    """``Σ_k d_k`` (Composable Diffusion's conjunction)."""
    _check(residuals)
    return residuals.to(_work_dtype(residuals)).sum(dim=0).to(residuals.dtype)


def union(residuals: torch.Tensor) -> torch.Tensor:
    """``∪(d) = Σ_k d_k − (K − 1) ∩(d)``: the shared part once, each prompt's own part at full strength."""
    _check(residuals)
    work = residuals.to(_work_dtype(residuals))
    k = residuals.shape[0]
    return (work.sum(dim=0) - (k - 1) * _intersection(work)).to(residuals.dtype)


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
    work = residuals.to(_work_dtype(residuals))
    total = work.sum(dim=0)
    if k == 1 or set(operators) == {"conjunction"}:
        return total.to(residuals.dtype)  # K = 1: plain classifier-free guidance for every operator
    shared = _intersection(work)
    choices = {"conjunction": total, "intersection": shared, "union": total - (k - 1) * shared}
    if len(set(operators)) == 1:
        return choices[operators[0]].to(residuals.dtype)
    pick = torch.stack([choices[name][i] for i, name in enumerate(operators)])
    return pick.to(residuals.dtype)
