"""Zero-shot retrieval metrics on the test split (docs/methods.md §2).

Every test image is a query against all other test images (itself
excluded); similarity is the inner product of L2-normalised embeddings,
searched exactly with faiss ``IndexFlatIP``; ties are broken by index.
A query whose class has no other image cannot retrieve anything relevant
and is left out of every metric (as pytorch-metric-learning does).
"""

from __future__ import annotations

from typing import Iterable

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score


METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")
# A run's per-query results (RunFolder.queries, npz) hold these arrays, one entry per test image:
# ``labels``, k-means ``clusters``, ``kept`` (the image is a query: its class has another image),
# and the per-query ``recall@K`` (0/1), ``map@r`` and ``r_precision`` (0 where not kept).
PER_QUERY_ARRAYS = ("labels", "clusters", "kept", "recall@K", "map@r", "r_precision")


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"embeddings must be a (N >= 2, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    x = x.copy()
    faiss.normalize_L2(x)
    return x


def nearest_neighbors(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest neighbors of every row of ``x`` in ``x``, self excluded."""
    n = len(x)
    k = min(k, n - 1)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores, neighbors = index.search(x, k + 1)
    # Ties broken by index: order each row by (score desc, index asc).
    order = np.lexsort((neighbors, -scores), axis=1)
    neighbors = np.take_along_axis(neighbors, order, axis=1)
    # Drop the query itself; where duplicates pushed it out of the list, drop the last entry instead.
    is_self = neighbors == np.arange(n)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    return neighbors[~is_self].reshape(n, k)


def per_query_metrics(embeddings: np.ndarray, labels: Iterable[int], ks: Iterable[int] = (1, 2, 4, 8)) -> dict[str, np.ndarray]:
    """Every query's own Recall@K hit, AP@R and R-Precision, plus ``kept`` (the queries that count).

    Arrays have one entry per test image, in the order of ``labels``; a query
    that is not ``kept`` (no other image of its class) holds 0 everywhere.
    A metric is the mean of its array over the kept queries, so the table can
    resample queries (bootstrap) without searching again.
    """
    x = _normalised(embeddings)
    labels = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels).reshape(-1)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
    ks = sorted(set(int(k) for k in ks))
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant_total = counts[inverse] - 1  # R: same-class references of each query
    keep = relevant_total > 0
    if not keep.any():
        raise ValueError("no class has two or more images; retrieval metrics are undefined")

    k = max(max(ks), int(relevant_total.max()))
    neighbors = nearest_neighbors(x, k)[keep]
    r = relevant_total[keep]
    relevant = labels[neighbors] == labels[keep][:, None]

    def full(values: np.ndarray) -> np.ndarray:
        out = np.zeros(len(labels), dtype=np.float64)
        out[keep] = values
        return out

    per_query: dict[str, np.ndarray] = {"kept": keep}
    for kk in ks:
        per_query[f"recall@{kk}"] = full(relevant[:, :kk].any(axis=1))
    ranks = np.arange(1, relevant.shape[1] + 1)
    within_r = ranks[None, :] <= r[:, None]
    hits_in_r = relevant & within_r
    per_query["r_precision"] = full(hits_in_r.sum(axis=1) / r)
    precision_at_i = np.cumsum(relevant, axis=1) / ranks[None, :]
    per_query["map@r"] = full((precision_at_i * hits_in_r).sum(axis=1) / r)
    return per_query


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: Iterable[int],
    ks: Iterable[int] = (1, 2, 4, 8),
    include_nmi: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Recall@K, MAP@R, R-Precision and NMI of ``embeddings`` as floats in [0, 1]."""
    per_query = per_query_metrics(embeddings, labels, ks)
    keep = per_query.pop("kept")
    metrics = {name: float(values[keep].mean()) for name, values in per_query.items()}
    if include_nmi:
        metrics["nmi"] = nmi(_normalised(embeddings), np.asarray(labels), seed=seed)
    return metrics


# k-means restarts of NMI: with one start, NMI of the same embeddings moves by up to
# ±0.1 with the initialisation alone (README, "Metrics"); ten k-means++ starts pin it.
KMEANS_RESTARTS = 10


def kmeans_clusters(x: np.ndarray, n_clusters: int, seed: int = 0, restarts: int = KMEANS_RESTARTS) -> np.ndarray:
    """Cluster id of every row of ``x``: scikit-learn k-means++, best of ``restarts`` runs by inertia."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=restarts, random_state=seed).fit_predict(x)


def nmi_clusters(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The k-means clusters NMI is computed on: k = the number of classes in ``labels``, on ``x``."""
    return kmeans_clusters(x, len(np.unique(np.asarray(labels).reshape(-1))), seed=seed)


def nmi(x: np.ndarray, labels: np.ndarray, seed: int = 0, clusters: np.ndarray | None = None) -> float:
    """NMI between the k-means clusters of ``x`` (:func:`nmi_clusters`: k = number of classes) and the labels.

    ``x`` are the L2-normalised embeddings (the space retrieval searches); NMI
    is scikit-learn's (mutual information over the arithmetic mean of the two
    entropies), the same formula pytorch-metric-learning calls. ``clusters``:
    the :func:`nmi_clusters` of ``x`` when the caller keeps them (the
    evaluation does, for the table's bootstrap), so k-means runs once.
    """
    labels = np.asarray(labels).reshape(-1)
    if clusters is None:
        clusters = nmi_clusters(x, labels, seed=seed)
    return float(normalized_mutual_info_score(labels, clusters))
