"""Each base loss's defining rule against its paper's formula written out on a fixed batch: a loss built with
a neighbouring rule (hard instead of semi-hard triplets, swapped margins) fails here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dmlsynth import registry
from dmlsynth.losses import build_loss


def fixed_batch(seed: int = 0, classes: int = 4, per_class: int = 4, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    embeddings = centres[labels] + 0.9 * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return embeddings, labels


def distances(embeddings: torch.Tensor) -> np.ndarray:
    """Euclidean distances between the L2-normalised embeddings (what both losses use)."""
    unit = (embeddings / embeddings.norm(dim=1, keepdim=True)).numpy()
    return np.sqrt(np.maximum(((unit[:, None] - unit[None]) ** 2).sum(-1), 0))


def facenet_triplet_loss(embeddings, labels, margin: float, rule: str) -> float:
    """Mean over the chosen triplets with a positive loss of [d(a,p) − d(a,n) + margin]₊. FaceNet's
    ``semihard``: d(a,p) < d(a,n) ≤ d(a,p) + margin (Schroff et al. 2015, eq. 4); ``hard``: d(a,n) ≤ d(a,p)."""
    d, y = distances(embeddings), labels.numpy()
    terms = []
    for a, p, n in itertools.product(range(len(y)), repeat=3):
        if a == p or y[a] != y[p] or y[a] == y[n]:
            continue
        gap = d[a, n] - d[a, p]
        chosen = 0 < gap <= margin if rule == "semihard" else gap <= 0
        if chosen and d[a, p] - d[a, n] + margin > 0:
            terms.append(d[a, p] - d[a, n] + margin)
    return float(np.mean(terms))


def test_semihard_triplet_takes_the_semihard_triplets():
    embeddings, labels = fixed_batch()
    margin = registry.LOSSES["semihard_triplet"].defaults["margin"]
    loss = build_loss("semihard_triplet", {}, 4, embeddings.shape[1])
    expected = facenet_triplet_loss(embeddings, labels, margin, "semihard")
    assert float(loss(embeddings, labels)) == pytest.approx(expected, rel=1e-9)
    # The batch has hard triplets whose loss differs: mining them instead would fail the line above.
    assert abs(facenet_triplet_loss(embeddings, labels, margin, "hard") - expected) > 0.01


def lifted_structure_loss(embeddings, labels, alpha: float) -> float:
    """Song et al. 2016, eqs. 3-4: for every positive pair {i, j}, J_ij = log(Σ_{k∈N(i)} exp(α − D_ik) +
    Σ_{l∈N(j)} exp(α − D_jl)) + D_ij; the loss is Σ max(0, J_ij)² / (2|P|)."""
    d, y = distances(embeddings), labels.numpy()
    terms = []
    for i, j in itertools.combinations(range(len(y)), 2):
        if y[i] != y[j]:
            continue
        negatives = [math.exp(alpha - d[i, k]) for k in range(len(y)) if y[k] != y[i]]
        negatives += [math.exp(alpha - d[j, k]) for k in range(len(y)) if y[k] != y[j]]
        terms.append(max(0.0, math.log(sum(negatives)) + d[i, j]) ** 2)
    return sum(terms) / (2 * len(terms))


def test_lifted_structure_is_the_papers_loss_with_its_negative_margin():
    embeddings, labels = fixed_batch(1)
    defaults = registry.LOSSES["lifted_structure"].defaults
    assert defaults["pos_margin"] == 0  # the paper's J_ij has no positive margin
    loss = build_loss("lifted_structure", {}, 4, embeddings.shape[1])
    expected = lifted_structure_loss(embeddings, labels, defaults["neg_margin"])
    assert float(loss(embeddings, labels)) == pytest.approx(expected, rel=1e-9)
    # A second margin, to tell them apart: α = 0.5 in the log-sum-exp, no positive margin.
    loss = build_loss("lifted_structure", {"neg_margin": 0.5}, 4, embeddings.shape[1])
    assert float(loss(embeddings, labels)) == pytest.approx(lifted_structure_loss(embeddings, labels, 0.5), rel=1e-9)
