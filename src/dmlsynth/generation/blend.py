"""Set operators on classifier-free-guidance residuals (docs/methods.md §7).

``residuals`` is a tensor ``(K, B, ...)``: for each of K prompt conditions and
B images, ``d_k = eps(x_t, c_k) - eps(x_t, ∅)``. Every operator works per
image and returns ``(B, ...)``; the guided noise prediction is
``eps_∅ + w * op(d)``. All functions here are pure: tensors in, tensors out.

The paper (Kolf et al., arXiv 2601.20246) says: "The union operation
encourages any attribute present across multiple prompts, while the
intersection extracts the common direction through a principal component
surrogate." Its exact formulas are not public. The operators:

- **intersection**, ``rule="principal_component"`` (the paper's surrogate, the default):
  per image, v is the top right-singular vector of the stacked flattened residuals
  ``[d_1; …; d_K]`` (signed so that ``Σ_k ⟨d_k, v⟩ ≥ 0``) and
  ``∩(d) = ((1/K) Σ_k ⟨d_k, v⟩) · v``: the common direction at the residuals' mean
  strength along it. ``rule="elementwise"`` **[project definition]** reads each element
  (latent channel x pixel) as a signed membership degree: ``sign · min_k |d_k|`` where
  all K residuals agree in sign, 0 where any two disagree (or one is 0).
- **union** **[project definition]**, "any attribute present, once", as a per-element
  fuzzy union of the signed memberships: ``∪(d) = max_k max(d_k, 0) + min_k min(d_k, 0)``.
  Where the residuals agree in sign that is the largest-magnitude value (an attribute
  any prompt asks for, at the strength of the prompt that asks most, counted once);
  where they disagree, the strongest push each way, which partly cancel. The union is
  not linear: a linear rule that treats the prompts alike is a multiple of their mean,
  and could not differ from the common direction.
- **conjunction**: ``Σ_k d_k`` (Composable Diffusion's AND), an ablation.
- **inclusion_exclusion**: ``Σ_k d_k − (K − 1)·∩(d)``, the project's earlier union, an
  ablation; exact inclusion–exclusion only for K = 2 (with K = 3 an attribute present in
  two of the residuals counts twice).

**Strength control** (``guidance_norm``) **[project definition]**: with ``"mean"``
each image's combined residual ``op(d)`` is rescaled to the norm of its mean residual
``(1/K) Σ_k d_k`` (a zero ``op(d)`` stays zero), so operators differ in direction, not
in how hard they guide; ``"none"`` applies ``op(d)`` as it is.

K = 1 is ordinary classifier-free guidance for every operator, rule and norm, exactly:
:func:`combine` returns the residual itself. Checks: tests/unit/generation/test_blend.py.
The operators cost O(K·N) per image (the principal component through the K x K Gram
matrix), a negligible share of a denoising step (benchmarks/bench_blend_sampler.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from dmlsynth.registry import BLEND_OPERATORS, GUIDANCE_NORMS, INTERSECTION_RULES

OPERATORS = BLEND_OPERATORS
# Names of the per-image guidance statistics (:func:`guidance_statistics`, results/generation.csv).
STATISTICS = ("guidance_ratio", "difference_along_mean", "applied_difference_along_mean")


def _work_dtype(residuals: torch.Tensor) -> torch.dtype:
    # Half-precision residuals (fp16 UNets) are combined in float32; float64 stays float64.
    return torch.promote_types(residuals.dtype, torch.float32)


def _check(residuals: torch.Tensor) -> None:
    if residuals.dim() < 2:
        raise ValueError(f"residuals must be shaped (K, B, ...), got shape {tuple(residuals.shape)}")
    if residuals.shape[0] < 1:
        raise ValueError("residuals need at least one prompt condition (K >= 1)")


def _check_rule(rule: str) -> None:
    if rule not in INTERSECTION_RULES:
        raise ValueError(f"unknown intersection rule {rule!r}; known: {', '.join(INTERSECTION_RULES)}")


def _check_norm(norm: str) -> None:
    if norm not in GUIDANCE_NORMS:
        raise ValueError(f"unknown guidance_norm {norm!r}; known: {', '.join(GUIDANCE_NORMS)}")


def _elementwise_intersection(work: torch.Tensor) -> torch.Tensor:
    """Per element: the value closest to 0 where all K agree in sign, else 0 (``work``: (K, B, ...))."""
    all_positive = (work > 0).all(dim=0)
    all_negative = (work < 0).all(dim=0)
    zero = torch.zeros((), dtype=work.dtype, device=work.device)
    smallest = torch.where(all_positive, work.amin(dim=0), zero)
    return torch.where(all_negative, work.amax(dim=0), smallest)


def _principal_component_intersection(work: torch.Tensor) -> torch.Tensor:
    """Per image ``((1/K) Σ_k ⟨d_k, v⟩) v``, v the top right-singular vector of ``[d_1; …; d_K]``.

    v comes from the K x K Gram matrix (its top eigenvector u gives ``v ∝ Σ_k u_k d_k``), in
    float64: O(K²·N) per image instead of an SVD of a K x N matrix. The result does not depend
    on v's sign (``(1/K) Σ⟨d_k, v⟩ v`` is unchanged when v flips), so signing v so that
    ``Σ_k ⟨d_k, v⟩ ≥ 0`` only fixes which v is reported. All-zero residuals give 0.
    """
    k, b = work.shape[:2]
    flat = work.reshape(k, b, -1).transpose(0, 1).double()  # (B, K, N)
    gram = flat @ flat.transpose(1, 2)  # (B, K, K)
    top = torch.linalg.eigh(gram).eigenvectors[..., -1]  # (B, K): eigenvalues ascend
    v = torch.einsum("bk,bkn->bn", top, flat)
    length = v.norm(dim=1, keepdim=True)
    v = torch.where(length > 0, v / length.clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(v))
    projections = torch.einsum("bkn,bn->bk", flat, v)  # ⟨d_k, v⟩
    sign = torch.where(projections.sum(1, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)
    shared = (sign * projections).mean(1, keepdim=True) * (sign * v)
    return shared.reshape(work.shape[1:]).to(work.dtype)


def _intersection(work: torch.Tensor, rule: str) -> torch.Tensor:
    _check_rule(rule)
    return _principal_component_intersection(work) if rule == "principal_component" else _elementwise_intersection(work)


def _union(work: torch.Tensor) -> torch.Tensor:
    """Per element the largest positive membership plus the most negative one (0 where none)."""
    return work.clamp(min=0).amax(dim=0) + work.clamp(max=0).amin(dim=0)


def intersection(residuals: torch.Tensor, rule: str = "principal_component") -> torch.Tensor:
    """``∩(d)`` under ``rule``: ``principal_component`` (the paper's surrogate) or ``elementwise``."""
    _check(residuals)
    return _intersection(residuals.to(_work_dtype(residuals)), rule).to(residuals.dtype)


def union(residuals: torch.Tensor) -> torch.Tensor:
    """``∪(d) = max_k max(d_k, 0) + min_k min(d_k, 0)`` per element: every attribute present, once."""
    _check(residuals)
    return _union(residuals.to(_work_dtype(residuals))).to(residuals.dtype)


def conjunction(residuals: torch.Tensor) -> torch.Tensor:
    """``Σ_k d_k`` (Composable Diffusion's conjunction)."""
    _check(residuals)
    return residuals.to(_work_dtype(residuals)).sum(dim=0).to(residuals.dtype)


def inclusion_exclusion(residuals: torch.Tensor, rule: str = "principal_component") -> torch.Tensor:
    """``Σ_k d_k − (K − 1) ∩(d)``: the earlier union, kept as an ablation."""
    _check(residuals)
    work = residuals.to(_work_dtype(residuals))
    return (work.sum(dim=0) - (work.shape[0] - 1) * _intersection(work, rule)).to(residuals.dtype)


def _norms(x: torch.Tensor) -> torch.Tensor:
    """Per-image Euclidean norms of ``(B, ...)``."""
    return x.flatten(1).norm(dim=1)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def rescale_to_mean(combined: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
    """``combined`` (B, ...) with each image's norm set to that of its mean residual; zero stays zero."""
    target = _norms(residuals.to(combined.dtype).mean(dim=0))
    current = _norms(combined)
    factor = torch.where(current > 0, target / current.clamp_min(torch.finfo(current.dtype).tiny), torch.zeros_like(current))
    return combined * _per_image(factor, combined)


def _choices(work: torch.Tensor, names: set[str], rule: str) -> dict[str, torch.Tensor]:
    """The operators in ``names`` on ``work`` (K, B, ...); the intersection is computed once for all."""
    out: dict[str, torch.Tensor] = {}
    if names & {"conjunction", "inclusion_exclusion"}:
        out["conjunction"] = work.sum(dim=0)
    if names & {"intersection", "inclusion_exclusion"}:
        out["intersection"] = _intersection(work, rule)
    if "inclusion_exclusion" in names:
        out["inclusion_exclusion"] = out["conjunction"] - (work.shape[0] - 1) * out["intersection"]
    if "union" in names:
        out["union"] = _union(work)
    return out


def _check_operators(residuals: torch.Tensor, operators: Sequence[str]) -> None:
    _check(residuals)
    b = residuals.shape[1]
    if len(operators) != b:
        raise ValueError(f"got {len(operators)} operators for a batch of {b} images; give one per image")
    unknown = sorted(set(operators) - set(OPERATORS))
    if unknown:
        raise ValueError(f"unknown operator(s) {unknown}; known: {', '.join(OPERATORS)}")


def _pick(choices: dict[str, torch.Tensor], operators: Sequence[str]) -> torch.Tensor:
    if len(set(operators)) == 1:
        return choices[operators[0]]
    return torch.stack([choices[name][i] for i, name in enumerate(operators)])


def combine(
    residuals: torch.Tensor,
    operators: Sequence[str],
    intersection_rule: str,
    guidance_norm: str,
) -> torch.Tensor:
    """Apply ``operators[b]`` to image b's residuals, then the strength control; returns ``(B, ...)``.

    Each operator the batch uses is computed once for the whole batch, so mixing operators
    costs no more than using them one by one. K = 1 returns the residual itself.
    """
    _check_operators(residuals, operators)
    _check_rule(intersection_rule)
    _check_norm(guidance_norm)
    work = residuals.to(_work_dtype(residuals))
    if residuals.shape[0] == 1:
        return work[0].to(residuals.dtype)  # K = 1: plain classifier-free guidance for every operator
    combined = _pick(_choices(work, set(operators), intersection_rule), operators)
    if guidance_norm == "mean":
        combined = rescale_to_mean(combined, work)
    return combined.to(residuals.dtype)


def _share_along(difference: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per image ``⟨u, m̂⟩² / ‖u‖²``: the share of ``‖u‖²`` along ``direction`` (NaN where u or m is 0)."""
    u, m = difference.flatten(1), direction.flatten(1)
    along = (u * m).sum(1) ** 2 / (m * m).sum(1)
    return along / (u * u).sum(1)


def guidance_statistics(
    residuals: torch.Tensor,
    operators: Sequence[str],
    intersection_rule: str,
    guidance_norm: str,
) -> dict[str, torch.Tensor]:
    """Per image of one denoising step, float64 tensors ``(B,)``:

    - ``guidance_ratio``: ``‖op(d)‖ / ‖mean residual‖`` of the image's own operator, before any
      rescaling (how hard the operator guides compared with the mean residual; 1 for K = 1);
    - ``difference_along_mean``: the share of ``‖∪(d) − ∩(d)‖²`` that lies along the mean residual
      (both operators as they are; NaN where they are equal, e.g. K = 1);
    - ``applied_difference_along_mean``: the same share for the two as applied under
      ``guidance_norm`` (equal to the previous one with ``none``).
    """
    _check_operators(residuals, operators)
    _check_rule(intersection_rule)
    _check_norm(guidance_norm)
    work = residuals.to(_work_dtype(residuals))
    b = work.shape[1]
    mean = work.mean(dim=0)
    if work.shape[0] == 1:
        nan = torch.full((b,), math.nan, dtype=torch.float64, device=work.device)
        return {"guidance_ratio": torch.ones(b, dtype=torch.float64, device=work.device),
                "difference_along_mean": nan, "applied_difference_along_mean": nan.clone()}  # fmt: skip
    choices = _choices(work, set(operators) | {"union", "intersection"}, intersection_rule)
    mean_norm = _norms(mean).double()
    ratio = _norms(_pick(choices, operators)).double() / mean_norm
    raw = _share_along(choices["union"] - choices["intersection"], mean).double()
    if guidance_norm == "mean":
        applied = rescale_to_mean(choices["union"], work) - rescale_to_mean(choices["intersection"], work)
        applied_share = _share_along(applied, mean).double()
    else:
        applied_share = raw.clone()
    return {"guidance_ratio": ratio, "difference_along_mean": raw, "applied_difference_along_mean": applied_share}


class GuidanceRecord:
    """Running means over the denoising steps of :func:`guidance_statistics`, per image.

    Call it with each step's residuals (the sampler's ``on_step``); :meth:`means` gives, per
    statistic, one value per image (NaN steps are left out of its mean).
    """

    def __init__(self, operators: Sequence[str], intersection_rule: str, guidance_norm: str):
        self.operators, self.rule, self.norm = list(operators), intersection_rule, guidance_norm
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.steps = 0

    def __call__(self, step: int, residuals: torch.Tensor) -> None:
        del step
        for name, values in guidance_statistics(residuals, self.operators, self.rule, self.norm).items():
            finite = torch.isfinite(values)
            self.sums[name] = self.sums.get(name, 0) + torch.where(finite, values, torch.zeros_like(values))
            self.counts[name] = self.counts.get(name, 0) + finite.double()
        self.steps += 1

    def means(self) -> dict[str, list[float]]:
        if not self.steps:
            return {name: [math.nan] * len(self.operators) for name in STATISTICS}
        out = {}
        for name in STATISTICS:
            counts = self.counts[name]
            mean = torch.where(counts > 0, self.sums[name] / counts.clamp_min(1), torch.full_like(counts, math.nan))
            out[name] = mean.cpu().tolist()
        return out
