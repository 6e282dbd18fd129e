"""Zero-shot retrieval metrics on the test split (docs/methods.md §2).

Every test image is a query against all other test images (itself
excluded); similarity is the inner product of L2-normalised embeddings,
searched exactly with faiss ``IndexFlatIP``; ties are broken by index.
A query whose class has no other image cannot retrieve anything relevant
and is left out of every metric (as pytorch-metric-learning does).

Query/gallery benchmarks (In-Shop): with ``queries`` (a boolean mask over
the test images) each query image is searched among the gallery images
(the others) only, and R counts the gallery images of its class; gallery
images are no queries (``kept`` false). Queries are searched in blocks of
:data:`QUERY_BLOCK`, so memory stays bounded at Stanford Online Products'
60,502 queries with K = 1000. ``device="cuda"`` searches with torch on the
GPU (exact: a matrix product and top-k), the same neighbours up to ties of
float rounding.
"""

from __future__ import annotations

from typing import Iterable

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score


METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")
# A run's per-query results (RunFolder.queries, npz) hold these arrays, one entry per test image:
# ``labels``, k-means ``clusters``, ``kept`` (the image is a query: its class has another image),
# and the per-query ``recall@K`` (0/1), ``map@r`` and ``r_precision`` (0 where not kept); a
# query/gallery benchmark adds ``queries`` (the image is a query image, not a gallery image).
PER_QUERY_ARRAYS = ("labels", "clusters", "kept", "recall@K", "map@r", "r_precision", "queries")
# Queries searched at once: the neighbour lists of a block are QUERY_BLOCK x (K + 1) entries.
QUERY_BLOCK = 4096


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"embeddings must be a (N >= 2, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    x = x.copy()
    faiss.normalize_L2(x)
    return x


def _ordered(scores: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Neighbour lists ordered by (score desc, index asc): ties broken by index."""
    order = np.lexsort((neighbors, -scores), axis=1)
    return np.take_along_axis(neighbors, order, axis=1)


class ExactSearch:
    """Exact inner-product search among ``references`` (rows): faiss ``IndexFlatIP`` on the CPU; with
    ``device`` cuda a matrix product and ``torch.topk`` on the GPU."""

    def __init__(self, references: np.ndarray, device: str = "cpu"):
        self.size = len(references)
        self.device = device
        if device.startswith("cuda"):
            import torch

            self.gallery = torch.as_tensor(references, device=device)
        else:
            self.index = faiss.IndexFlatIP(references.shape[1])
            self.index.add(references)

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices) of the top ``k`` references of every query row."""
        k = min(k, self.size)
        if not self.device.startswith("cuda"):
            return self.index.search(queries, k)
        import torch

        top = torch.topk(torch.as_tensor(queries, device=self.device) @ self.gallery.T, k, dim=1)
        return top.values.cpu().numpy(), top.indices.cpu().numpy()


def _neighbor_blocks(x: np.ndarray, k: int, device: str = "cpu"):
    """(start, neighbour lists of rows start..) of every row of ``x`` in ``x``, self excluded, in blocks."""
    n = len(x)
    k = min(k, n - 1)
    search = ExactSearch(x, device)
    for start in range(0, n, QUERY_BLOCK):
        rows = x[start : start + QUERY_BLOCK]
        scores, neighbors = search(rows, k + 1)
        neighbors = _ordered(scores, neighbors)
        # Drop the query itself; where duplicates pushed it out of the list, drop the last entry instead.
        is_self = neighbors == np.arange(start, start + len(rows))[:, None]
        missing = ~is_self.any(axis=1)
        is_self[missing, -1] = True
        yield start, neighbors[~is_self].reshape(len(rows), k)


def nearest_neighbors(x: np.ndarray, k: int, device: str = "cpu") -> np.ndarray:
    """Indices of the ``k`` nearest neighbors of every row of ``x`` in ``x``, self excluded."""
    return np.concatenate([block for _, block in _neighbor_blocks(x, k, device)])


def _block_metrics(relevant: np.ndarray, r: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """Per-query Recall@K, R-Precision and AP@R of one block: ``relevant`` (queries x neighbours), R per query."""
    out = {f"recall@{kk}": relevant[:, :kk].any(axis=1).astype(np.float64) for kk in ks}
    ranks = np.arange(1, relevant.shape[1] + 1)
    hits_in_r = relevant & (ranks[None, :] <= r[:, None])
    out["r_precision"] = hits_in_r.sum(axis=1) / r
    precision_at_i = np.cumsum(relevant, axis=1) / ranks[None, :]
    out["map@r"] = (precision_at_i * hits_in_r).sum(axis=1) / r
    return out


def per_query_metrics(
    embeddings: np.ndarray,
    labels: Iterable[int],
    ks: Iterable[int] = (1, 2, 4, 8),
    queries: np.ndarray | None = None,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """Every query's own Recall@K hit, AP@R and R-Precision, plus ``kept`` (the queries that count).

    Arrays have one entry per test image, in the order of ``labels``; a query
    that is not ``kept`` (no other image of its class; with ``queries``: a
    gallery image, or a query whose class has no gallery image) holds 0
    everywhere. A metric is the mean of its array over the kept queries, so
    the table can resample queries (bootstrap) without searching again.
    ``queries``: the query images of a query/gallery benchmark (see the module docstring).
    """
    x = _normalised(embeddings)
    labels = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels).reshape(-1)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
    ks = sorted(set(int(k) for k in ks))
    per_query: dict[str, np.ndarray] = {name: np.zeros(len(labels), dtype=np.float64) for name in [*(f"recall@{k}" for k in ks), "r_precision", "map@r"]}
    if queries is None:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        relevant_total = counts[inverse] - 1  # R: same-class references of each query
        keep = relevant_total > 0
        if not keep.any():
            raise ValueError("no class has two or more images; retrieval metrics are undefined")
        k = max(max(ks), int(relevant_total.max()))
        for start, neighbors in _neighbor_blocks(x, k, device):
            rows = np.arange(start, start + len(neighbors))
            chosen = keep[rows]
            relevant = labels[neighbors[chosen]] == labels[rows[chosen]][:, None]
            for name, values in _block_metrics(relevant, relevant_total[rows[chosen]], ks).items():
                per_query[name][rows[chosen]] = values
    else:
        queries = np.asarray(queries, dtype=bool).reshape(-1)
        if len(queries) != len(labels):
            raise ValueError(f"{len(labels)} test images but a query mask of {len(queries)}")
        gallery = np.flatnonzero(~queries)
        if len(gallery) == 0 or not queries.any():
            raise ValueError("a query/gallery evaluation needs query and gallery images")
        gallery_labels, gallery_counts = np.unique(labels[gallery], return_counts=True)
        in_gallery = dict(zip(gallery_labels.tolist(), gallery_counts.tolist()))
        relevant_total = np.array([in_gallery.get(int(label), 0) for label in labels])
        keep = queries & (relevant_total > 0)
        if not keep.any():
            raise ValueError("no query's class has a gallery image; retrieval metrics are undefined")
        k = min(max(max(ks), int(relevant_total[keep].max())), len(gallery))
        query_rows = np.flatnonzero(keep)
        search = ExactSearch(x[gallery], device)
        for start in range(0, len(query_rows), QUERY_BLOCK):
            rows = query_rows[start : start + QUERY_BLOCK]
            scores, found = search(x[rows], k)
            neighbors = gallery[_ordered(scores, found)]
            relevant = labels[neighbors] == labels[rows][:, None]
            for name, values in _block_metrics(relevant, relevant_total[rows], ks).items():
                per_query[name][rows] = values
        per_query["queries"] = queries
    per_query["kept"] = keep
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
    metrics = {name: float(values[keep].mean()) for name, values in per_query.items() if name != "queries"}
    if include_nmi:
        metrics["nmi"] = nmi(_normalised(embeddings), np.asarray(labels), seed=seed)
    return metrics


# k-means restarts of NMI: with one start, NMI of the same embeddings moves by up to
# ±0.1 with the initialisation alone (docs/statistics.md, "Metrics"); ten k-means++ starts pin it.
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
