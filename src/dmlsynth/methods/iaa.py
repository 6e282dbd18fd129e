"""``iaa``: Intra-class Adaptive Augmentation with Neighbor Correction (Fu et al., TMM 2022; docs/methods.md §5).

Each training class is modelled as a Gaussian with diagonal covariance in
the *un-normalised* embedding space, re-estimated over the whole training
set every ``update_every`` epochs (eqs. 7–8) and merged with the previous
estimate (``statistics_update``). Classes with few samples (n ≤ τ) borrow
variance from their nearest classes and from the global average
(eqs. 11–16, :func:`corrected_variance`; switch with ``neighbor_correction``).
The paper applies the correction on SOP and In-Shop and credits it with
+2.7 R@1 on SOP (Table IX); the released code has the function
(``intra.py``'s ``distribution_calibration``) but never calls it, so its
runs, which produced the published numbers, sample from the uncorrected Σ.

Each original embedding z gets ``num_synthetic`` samples from
N(z, λ Σ^cr_y). Only originals are anchors; originals and synthetics are
the candidates, and an anchor's own synthetic copies (and itself) are not
its positives; Multi-Similarity's miner sets each anchor's thresholds from
these allowed positives only (:func:`multi_similarity_pairs`, the official
``losses.py``). λ is annealed (×1.0 / 0.9 / 0.75 / 0.6 from 0 / 40 / 60 /
80 % of training). With triplet, every (anchor, positive) pair gets the
anchor's hardest negative among the candidates (``triplet_negatives``).

The paper and the released code (which produced the published numbers)
differ; ``variant: paper | official`` picks the defaults of these keys
(registry ``METHODS['iaa'].variants``), each of which can be set alone:

============================  ==========================  =====================================
key                           paper                       official code
============================  ==========================  =====================================
``update_every``              4 (the paper's)             2 (``update_every_M_epoch``)
``start_fraction``            0 (+ ``warmup_epochs`` 1)   0.3 (synthesis from epoch 31 of 100)
``statistics_update``         ``momentum`` (0.5)          ``count_weighted`` (momentum 0.2)
``estimation_images``         ``centre_crop``             ``augmented`` (its train transform)
``copy_spread``               ``equal``: √λ·Σ^½           ``repeated_root``: √λ·Σ^½, Σ^¼, Σ^⅛
``neighbor_correction``       true                        false (released code never calls it)
============================  ==========================  =====================================

Statistics updates (:func:`merge_statistics`): ``momentum`` keeps
new = momentum·old + (1 − momentum)·fresh for means and variances
**[project definition]**; ``count_weighted`` is the official code's:
w = max(n / (n + n_seen), 1 − momentum) (w = 1 for the first estimate),
μ = (1 − w)μ_old + wμ, Σ = (1 − w)Σ_old + wΣ + w(1 − w)(μ_old − μ)².

[project definition] details: the first estimate is taken as is; a class
with no candidate neighbor uses Σ_global as its neighbor variance; K is
capped at the number of candidates (digits has five training classes).
Losses that take no reference set (Proxy-Anchor, whose anchors are the
proxies; N-pair; Potential-Field; the unit forms of N-pair and angular) get
the synthetics as extra samples of their class in the batch.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from pytorch_metric_learning import miners

from dmlsynth.methods.base import Method, MethodContext

# λ multipliers from these fractions of training on (the official code's ``intra.py`` ``lamda_epoch``).
LAMBDA_SCHEDULE = ((0.0, 1.0), (0.4, 0.9), (0.6, 0.75), (0.8, 0.6))


def class_statistics(embeddings: torch.Tensor, classes: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class mean (eq. 7), diagonal variance (eq. 8, biased 1/n) and count."""
    embeddings = embeddings.double()
    counts = torch.bincount(classes, minlength=num_classes).to(embeddings.dtype)
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype).index_add_(0, classes, embeddings)
    means = sums / counts.clamp(min=1)[:, None]
    squares = torch.zeros_like(sums).index_add_(0, classes, (embeddings - means[classes]) ** 2)
    variances = squares / counts.clamp(min=1)[:, None]
    return means, variances, counts


def corrected_variance(
    means: torch.Tensor,
    variances: torch.Tensor,
    counts: torch.Tensor,
    k: int = 25,
    sigma_m: float = 1.0,
    sigma_cv: float = 1.0,
    tau: float = 40,
    beta: float = 0.1,
    gamma: float = 0.1,
) -> torch.Tensor:
    """Neighbor-corrected class variances Σ^cr (IAA eqs. 11–16), ``(C, D)``.

    ``means`` and ``variances`` are ``(C, D)`` (diagonal covariances as
    vectors), ``counts`` ``(C,)``. Classes with more than ``tau`` samples are
    returned unchanged. For the others: candidates are the classes i ≠ k with
    n_i > 1; D_m = ‖μ_i² − μ_k²‖², D_cv = ‖Σ_i − Σ_k‖², both min–max
    normalised over the candidates; N_k = the ``k`` candidates with the
    smallest D_m (all of them if fewer); w_i = n_i exp(−D̃_m/(2σ_m²) −
    D̃_cv/(2σ_cv²)); Σ_nb = Σ w_i Σ_i / Σ w_i over N_k; Σ_global = Σ n Σ / Σ n;
    α = 1/(1 + log(1 + β(n_k − 1))); Σ^cr = (1−α)Σ_k + α[(1−γ)Σ_nb + γΣ_global].
    """
    num_classes = means.shape[0]
    if variances.shape != means.shape or counts.shape != (num_classes,):
        raise ValueError(
            f"means and variances must be (C, D) and counts (C,), got {tuple(means.shape)}, "
            f"{tuple(variances.shape)}, {tuple(counts.shape)}"
        )
    counts = counts.to(variances.dtype)
    global_variance = (counts[:, None] * variances).sum(0) / counts.sum().clamp(min=1e-12)  # (14)

    squared_means = means**2
    d_m = torch.cdist(squared_means, squared_means) ** 2  # (C, C): row k, column i
    d_cv = torch.cdist(variances, variances) ** 2
    candidate = (counts[None, :] > 1) & ~torch.eye(num_classes, dtype=torch.bool, device=means.device)

    def min_max(d: torch.Tensor) -> torch.Tensor:
        low = d.masked_fill(~candidate, float("inf")).min(dim=1, keepdim=True).values
        high = d.masked_fill(~candidate, float("-inf")).max(dim=1, keepdim=True).values
        span = (high - low).clamp(min=torch.finfo(d.dtype).tiny)
        return ((d - low) / span).masked_fill(~candidate, 0.0)

    d_m_norm, d_cv_norm = min_max(d_m), min_max(d_cv)
    num_candidates = candidate.sum(dim=1)
    # (11): the K candidates with the smallest D_m (non-candidates sort last).
    k_eff = max(1, min(int(k), num_classes))
    nearest = d_m.masked_fill(~candidate, float("inf")).topk(k_eff, dim=1, largest=False).indices
    in_neighborhood = torch.zeros_like(candidate).scatter_(1, nearest, True) & candidate
    weights = counts[None, :] * torch.exp(-d_m_norm / (2 * sigma_m**2) - d_cv_norm / (2 * sigma_cv**2))  # (13)
    weights = weights * in_neighborhood
    neighbor_variance = (weights @ variances) / weights.sum(dim=1, keepdim=True).clamp(min=1e-300)  # (12)
    neighbor_variance = torch.where((num_candidates > 0)[:, None], neighbor_variance, global_variance[None, :])

    few = counts <= tau
    alpha = torch.where(
        few, 1.0 / (1.0 + torch.log1p(beta * (counts - 1).clamp(min=0))), torch.zeros_like(counts)
    )  # (16)
    mixed = (1 - gamma) * neighbor_variance + gamma * global_variance[None, :]
    corrected = (1 - alpha[:, None]) * variances + alpha[:, None] * mixed  # (15)
    return torch.where(few[:, None], corrected, variances)


def lambda_at(epoch: int, num_epochs: int, base: float) -> float:
    """λ annealed by the fraction of training done (``LAMBDA_SCHEDULE``: ×1.0 / 0.9 / 0.75 / 0.6 from 0 / 40 / 60 / 80 %)."""
    fraction = epoch / max(1, num_epochs)
    factor = 1.0
    for start, value in LAMBDA_SCHEDULE:
        if fraction >= start:
            factor = value
    return base * factor


def spread_powers(copy_spread: str, num: int) -> list[float]:
    """The power p of Σ in each copy's standard deviation √λ·Σ^p.

    ``equal`` (paper: every copy from N(z, λΣ)): ½ for all copies;
    ``repeated_root`` (official code, which takes the square root again for
    every further copy): ½, ¼, ⅛, …
    """
    if copy_spread == "equal":
        return [0.5] * num
    if copy_spread == "repeated_root":
        return [0.5 ** (i + 1) for i in range(num)]
    raise ValueError(f"copy_spread must be 'equal' or 'repeated_root', got {copy_spread!r}")


def sample_synthetic(
    embeddings: torch.Tensor,
    variances: torch.Tensor,
    num: int,
    generator: torch.Generator,
    scale: float = 1.0,
    powers: list[float] | None = None,
) -> torch.Tensor:
    """``num`` draws per row, ``(N * num, D)`` in row-major order: copy k of z_i is
    z_i + √scale · variances_i^powers[k] · ε (default powers ½: N(z_i, scale·diag(variances_i))).

    Reparameterised, so gradients reach ``embeddings``; ε comes from
    ``generator`` on the CPU (reproducible on every device).
    """
    n, d = embeddings.shape
    powers = [0.5] * num if powers is None else list(powers)
    if len(powers) != num:
        raise ValueError(f"need one spread power per copy: {num} copies, {len(powers)} powers")
    noise = torch.randn((n, num, d), generator=generator, dtype=torch.float32).to(embeddings.device, embeddings.dtype)
    variances = variances.to(embeddings.dtype)
    std = torch.stack([variances**p for p in powers], dim=1) * math.sqrt(scale)  # (N, num, D)
    return (embeddings[:, None, :] + std * noise).reshape(n * num, d)


def merge_statistics(
    rule: str,
    old: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    fresh: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge a fresh estimate (means, variances, counts) into the previous one ``old`` (means,
    variances, counts seen so far); returns (means, variances, counts seen).

    ``momentum``: μ = m·μ_old + (1 − m)·μ, Σ = m·Σ_old + (1 − m)·Σ **[project definition]**.
    ``count_weighted`` (official code): w = max(n / (n + n_seen), 1 − m), 0 for a class with no
    fresh sample; μ = (1 − w)μ_old + wμ; Σ = (1 − w)Σ_old + wΣ + w(1 − w)(μ_old − μ)².
    """
    old_means, old_variances, seen = old
    means, variances, counts = fresh
    if rule == "momentum":
        return momentum * old_means + (1 - momentum) * means, momentum * old_variances + (1 - momentum) * variances, seen + counts
    if rule == "count_weighted":
        w = (counts / (counts + seen).clamp(min=1e-12)).clamp(min=1 - momentum) * (counts > 0)
        w = w[:, None]
        merged_variances = (1 - w) * old_variances + w * variances + w * (1 - w) * (old_means - means) ** 2
        return (1 - w) * old_means + w * means, merged_variances, seen + counts
    raise ValueError(f"statistics_update must be 'momentum' or 'count_weighted', got {rule!r}")


@torch.no_grad()
def multi_similarity_pairs(
    miner: miners.MultiSimilarityMiner,
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-Similarity's hard pairs ``(a1, p, a2, n)`` of each anchor among its allowed candidates only.

    ``positive`` / ``negative`` ``(N, N_candidates)`` say which candidates are each anchor's positives
    (not itself, not its own synthetic copies) and negatives. With s the miner's similarity and ε its
    ``epsilon``: a negative is hard when s + ε > the anchor's least similar positive, a positive when
    s − ε < its most similar negative (Wang et al. 2019, eqs. 5–6). The thresholds come from the allowed
    positives only, as in the official IAA ``losses.py`` (``MultiSimilarityLoss``, whose positive mask
    removes every copy of the anchor before mining); pytorch-metric-learning's miner run over all
    candidates would let an own copy set the threshold.
    """
    if not miner.distance.is_inverted:
        raise ValueError("multi_similarity_pairs needs a similarity (larger = closer), as MultiSimilarityMiner's default")
    similarity = miner.distance(anchors, candidates)
    least_positive = similarity.masked_fill(~positive, float("inf")).amin(dim=1, keepdim=True)
    most_negative = similarity.masked_fill(~negative, float("-inf")).amax(dim=1, keepdim=True)
    hard_positive = positive & (similarity - miner.epsilon < most_negative)
    hard_negative = negative & (similarity + miner.epsilon > least_positive)
    return (*torch.nonzero(hard_positive, as_tuple=True), *torch.nonzero(hard_negative, as_tuple=True))


def start_epoch(start_fraction: float, warmup_epochs: int, num_epochs: int) -> int:
    """The first (0-based) epoch with synthesis: at least ``warmup_epochs`` and a fraction
    ``start_fraction`` of training done (official code: 30 of 100 epochs, synthesis from epoch 31)."""
    return max(int(warmup_epochs), math.ceil(float(start_fraction) * num_epochs - 1e-9))


class IntraClassAdaptiveAugmentation(Method):
    """IAA: Gaussian synthetic embeddings with neighbor-corrected class variances."""

    def __init__(self, base_loss, params: Mapping[str, Any], context: MethodContext):
        super().__init__(base_loss, params, context)
        p = self.params
        self.num_synthetic = int(p["num_synthetic"])
        self.base_lambda = float(p["lambda"])
        self.update_every = int(p["update_every"])
        self.start = start_epoch(p["start_fraction"], p["warmup_epochs"], context.num_epochs)
        self.statistics_update = str(p["statistics_update"])
        self.momentum = float(p["momentum"])
        self.augmented_estimation = p["estimation_images"] == "augmented"
        self.powers = spread_powers(str(p["copy_spread"]), self.num_synthetic)
        self.neighbor_correction = bool(p["neighbor_correction"])
        self.correction = {key: float(p[key]) for key in ("sigma_m", "sigma_cv", "tau", "beta", "gamma")}
        self.correction["k"] = int(p["k"])
        # Triplet: the hardest negative of each anchor among all candidates, with every positive.
        self.hardest_negative = (
            miners.BatchEasyHardMiner(pos_strategy="all", neg_strategy="hard")
            if base_loss.name == "triplet" and p["triplet_negatives"] == "hardest"
            else None
        )
        c, d = context.num_classes, context.embedding_dim
        self.register_buffer("means", torch.zeros(c, d, dtype=torch.float64))
        self.register_buffer("variances", torch.zeros(c, d, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("seen_counts", torch.zeros(c, dtype=torch.float64))
        self.register_buffer("sampling_variances", torch.zeros(c, d))  # Σ^cr (or Σ), float32
        self.register_buffer("estimated", torch.zeros((), dtype=torch.bool))
        self.register_buffer("current_lambda", torch.zeros(()))

    @property
    def active(self) -> bool:
        return self.num_synthetic > 0 and bool(self.estimated) and float(self.current_lambda) > 0

    def on_epoch_start(self, epoch: int) -> None:
        if epoch < self.start:
            self.current_lambda.fill_(0.0)
            return
        if (epoch - self.start) % self.update_every == 0 and self.num_synthetic > 0 and self.base_lambda > 0:
            estimate = self.context.embed_training_set
            embeddings, classes = estimate(augmented=True) if self.augmented_estimation else estimate()
            self.update_statistics(embeddings, classes)
        self.current_lambda.fill_(lambda_at(epoch, self.context.num_epochs, self.base_lambda))

    @torch.no_grad()
    def update_statistics(self, embeddings: torch.Tensor, classes: torch.Tensor) -> None:
        fresh = class_statistics(embeddings.cpu(), classes.cpu().long(), self.context.num_classes)
        means, variances, counts = (t.to(self.means.device) for t in fresh)
        seen = self.seen_counts + counts
        if bool(self.estimated):
            means, variances, seen = merge_statistics(
                self.statistics_update, (self.means, self.variances, self.seen_counts), (means, variances, counts), self.momentum
            )
        self.means.copy_(means)
        self.variances.copy_(variances)
        self.counts.copy_(counts)
        self.seen_counts.copy_(seen)
        sampling = corrected_variance(means, variances, counts, **self.correction) if self.neighbor_correction else variances
        self.sampling_variances.copy_(sampling.float())
        self.estimated.fill_(True)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if not self.active:
            return self.base_loss(embeddings, labels)
        n, m = embeddings.shape[0], self.num_synthetic
        synthetic = sample_synthetic(
            embeddings,
            self.sampling_variances[labels],
            m,
            self.context.generator,
            scale=float(self.current_lambda),
            powers=self.powers,
        )
        synthetic_labels = labels.repeat_interleave(m)
        if not self.base_loss.pair_based:
            # No reference set (proxies are the anchors, or the loss takes the whole batch): the
            # synthetics are extra samples of their class.
            return self.base_loss(torch.cat([embeddings, synthetic]), torch.cat([labels, synthetic_labels]))

        candidates = torch.cat([embeddings, synthetic])
        candidate_labels = torch.cat([labels, synthetic_labels])
        owner = torch.cat([torch.arange(n, device=labels.device), torch.arange(n, device=labels.device).repeat_interleave(m)])
        same = labels[:, None] == candidate_labels[None, :]
        positive = same & (owner[None, :] != torch.arange(n, device=labels.device)[:, None])
        negative = ~same
        if self.hardest_negative is not None:
            # Triplets (a, p, n*(a)): every allowed positive with the anchor's hardest negative candidate.
            a1, p, a2, neg = self.hardest_negative(embeddings, labels, candidates, candidate_labels)
            hardest = torch.full((n,), -1, dtype=torch.long, device=labels.device)
            hardest[a2] = neg
            keep = positive[a1, p] & (hardest[a1] >= 0)
            indices = (a1[keep], p[keep], hardest[a1[keep]])
            return self.base_loss(embeddings, labels, indices_tuple=indices, ref_emb=candidates, ref_labels=candidate_labels)
        if isinstance(self.base_loss.miner, miners.MultiSimilarityMiner):
            indices = multi_similarity_pairs(self.base_loss.miner, embeddings, candidates, positive, negative)
        elif self.base_loss.miner is not None:
            raise NotImplementedError(f"IAA has no rule for mining {self.base_loss.name!r} without an anchor's own copies")
        elif self.base_loss.name == "triplet":
            indices = torch.nonzero(positive[:, :, None] & negative[:, None, :], as_tuple=True)
        else:
            indices = (*torch.nonzero(positive, as_tuple=True), *torch.nonzero(negative, as_tuple=True))
        return self.base_loss(embeddings, labels, indices_tuple=indices, ref_emb=candidates, ref_labels=candidate_labels)
