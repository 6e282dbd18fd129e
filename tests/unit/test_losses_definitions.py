"""Each base loss's defining rule against its paper's formula written out on a fixed batch: a loss built with
a neighbouring rule (hard instead of semi-hard triplets, swapped margins or scales, a margin's sign) fails here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dmlsynth import registry
from dmlsynth.losses import build_loss
from tests.helpers.losses import official_multi_similarity


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
        chosen = {"semihard": 0 < gap <= margin, "hard": gap <= 0, "all": True}[rule]
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


def test_triplet_takes_every_triplet_of_the_batch():
    embeddings, labels = fixed_batch(2)
    margin = registry.LOSSES["triplet"].defaults["margin"]
    loss = build_loss("triplet", {}, 4, embeddings.shape[1])
    assert float(loss(embeddings, labels)) == pytest.approx(facenet_triplet_loss(embeddings, labels, margin, "all"), rel=1e-9)


def test_multi_similarity_is_the_papers_loss_with_its_mining():
    embeddings, labels = fixed_batch(3)
    p = registry.LOSSES["multi_similarity"].defaults
    loss = build_loss("multi_similarity", {}, 4, embeddings.shape[1])
    owner = torch.arange(len(labels))  # a plain batch: each anchor owns only itself
    expected = official_multi_similarity(embeddings, labels, embeddings, labels, owner, p["alpha"], p["beta"], p["base"], p["miner_epsilon"])
    assert float(loss(embeddings, labels)) == pytest.approx(float(expected), rel=1e-9)


def cosine(embeddings, others=None) -> np.ndarray:
    unit = (embeddings / embeddings.norm(dim=1, keepdim=True)).detach().numpy()
    other = unit if others is None else (others / others.norm(dim=1, keepdim=True)).detach().numpy()
    return unit @ other.T


def test_contrastive_takes_each_margin_on_its_side():
    """[pos_margin − s]₊ over positive pairs and [s − neg_margin]₊ over negative pairs (cosine similarity),
    each averaged over its non-zero terms (pytorch-metric-learning's AvgNonZeroReducer)."""
    embeddings, labels = fixed_batch(4)
    p = registry.LOSSES["contrastive"].defaults
    s, y = cosine(embeddings), labels.numpy()
    off_diagonal = ~np.eye(len(y), dtype=bool)
    positive = np.maximum(p["pos_margin"] - s[(y[:, None] == y[None]) & off_diagonal], 0)
    negative = np.maximum(s[y[:, None] != y[None]] - p["neg_margin"], 0)
    expected = positive[positive > 0].mean() + negative[negative > 0].mean()
    loss = build_loss("contrastive", {}, 4, embeddings.shape[1])
    assert float(loss(embeddings, labels)) == pytest.approx(expected, rel=1e-9)


def test_proxy_anchor_is_the_papers_loss():
    """Kim et al. 2020, eq. 4: (1/|P⁺|) Σ_{p∈P⁺} log(1 + Σ_{x∈X_p⁺} e^{−α(s(x,p)−δ)}) + (1/|P|) Σ_{p∈P} log(1 +
    Σ_{x∈X_p⁻} e^{α(s(x,p)+δ)}), s the cosine similarity, P⁺ the proxies with a positive in the batch."""
    embeddings, labels = fixed_batch(5, classes=3)
    p = registry.LOSSES["proxy_anchor"].defaults
    torch.manual_seed(0)
    loss = build_loss("proxy_anchor", {}, 5, embeddings.shape[1])  # 5 classes: two proxies without a sample
    s, y = cosine(embeddings, loss.loss.proxies.double()), labels.numpy()
    alpha, delta = p["alpha"], p["margin"]
    with_positive = sorted(set(y))
    positive = sum(math.log1p(np.exp(-alpha * (s[y == c, c] - delta)).sum()) for c in with_positive) / len(with_positive)
    negative = sum(math.log1p(np.exp(alpha * (s[y != c, c] + delta)).sum()) for c in range(5)) / 5
    assert float(loss(embeddings, labels).detach()) == pytest.approx(positive + negative, rel=1e-6)
