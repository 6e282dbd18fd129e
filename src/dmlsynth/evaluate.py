"""Zero-shot retrieval metrics on the test split (METHODS.md §2).

Every test image is a query against all other test images (itself
excluded); similarity is the inner product of L2-normalised embeddings,
searched exactly with faiss ``IndexFlatIP``; ties are broken by index.
A query whose class has no other image cannot retrieve anything relevant
and is left out of every metric (as pytorch-metric-learning does).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from dmlsynth.config import atomic_write_text

METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"embeddings must be a (N >= 2, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    x = x.copy()
    faiss.normalize_L2(x)
    return x


def nearest_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest neighbours of every row of ``x`` in ``x``, self excluded."""
    n = len(x)
    k = min(k, n - 1)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores, neighbours = index.search(x, k + 1)
    # Ties broken by index: order each row by (score desc, index asc).
    order = np.lexsort((neighbours, -scores), axis=1)
    neighbours = np.take_along_axis(neighbours, order, axis=1)
    # Drop the query itself; where duplicates pushed it out of the list, drop the last entry instead.
    is_self = neighbours == np.arange(n)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True
    return neighbours[~is_self].reshape(n, k)


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: Iterable[int],
    ks: Iterable[int] = (1, 2, 4, 8),
    include_nmi: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Recall@K, MAP@R, R-Precision and NMI of ``embeddings`` as floats in [0, 1]."""
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
    neighbours = nearest_neighbours(x, k)[keep]
    r = relevant_total[keep]
    relevant = labels[neighbours] == labels[keep][:, None]

    metrics: dict[str, float] = {}
    for kk in ks:
        metrics[f"recall@{kk}"] = float(relevant[:, :kk].any(axis=1).mean())
    ranks = np.arange(1, relevant.shape[1] + 1)
    within_r = ranks[None, :] <= r[:, None]
    hits_in_r = relevant & within_r
    metrics["r_precision"] = float((hits_in_r.sum(axis=1) / r).mean())
    precision_at_i = np.cumsum(relevant, axis=1) / ranks[None, :]
    metrics["map@r"] = float(((precision_at_i * hits_in_r).sum(axis=1) / r).mean())
    if include_nmi:
        metrics["nmi"] = nmi(x, labels, seed=seed)
    return metrics


def nmi(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI between k-means clusters (k = number of classes) and the labels.

    k-means++ seeding with three restarts: faiss' random seeding often merges
    well-separated classes, which would make NMI depend on luck.
    """
    from sklearn.cluster import KMeans

    n_classes = len(np.unique(labels))
    assignment = KMeans(n_clusters=n_classes, n_init=3, random_state=seed).fit_predict(x)
    return float(normalized_mutual_info_score(labels, assignment))


def evaluate_run(run_dir: str | Path, ks: Iterable[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """Metrics of a run's test embeddings -> ``metrics.json``; plus its embedding and training plots."""
    run_dir = Path(run_dir)
    embeddings_file = run_dir / "embeddings.npz"
    if not embeddings_file.is_file():
        raise FileNotFoundError(f"{embeddings_file} does not exist: run the training job first")
    started = time.perf_counter()
    with np.load(embeddings_file, allow_pickle=False) as data:
        embeddings, labels = data["embeddings"], data["labels"]
    metrics = retrieval_metrics(embeddings, labels, ks=ks)
    metrics["queries"] = int(len(labels))
    metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
    plot_embeddings(embeddings, labels, run_dir / "embeddings.png", title=f"{run_dir.as_posix()} — R@1 {metrics[f'recall@{min(ks)}']:.3f}")
    plot_training_curve(run_dir / "train_log.csv", run_dir / "train_curve.png")
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def _save_figure(fig, out: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)


def plot_embeddings(embeddings: np.ndarray, labels: np.ndarray, out: Path, title: str = "") -> None:
    """The test embeddings (L2-normalised) projected on their first two principal components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _normalised(embeddings)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for label in np.unique(labels):
        chosen = labels == label
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=6, alpha=0.7, label=str(label))
    if len(np.unique(labels)) <= 20:
        ax.legend(markerscale=2, fontsize=7, title="class")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    _save_figure(fig, out)


def plot_training_curve(history_file: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    history = pd.read_csv(history_file)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(history["epoch"], history["loss"], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(history_file.parent.as_posix(), fontsize=8)
    fig.tight_layout()
    _save_figure(fig, out)
