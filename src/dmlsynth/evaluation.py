"""Evaluating a run: its test metrics (:mod:`dmlsynth.metrics`), per-query results and plots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from dmlsynth.io import atomic_output, atomic_write_text, save_figure
from dmlsynth.layout import RunFolder
from dmlsynth.metrics import _normalised, nmi, per_query_metrics, nmi_clusters


# Prefix of the metrics (and per-query arrays) of the last epoch, when the reported epoch was
# chosen on validation classes (dmlsynth.training.validation).
LAST_EPOCH = "last_epoch."


def _test_results(
    embeddings: np.ndarray, labels: np.ndarray, ks: Iterable[int], queries: np.ndarray | None = None
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics of test embeddings and the per-query arrays behind them (with k-means ``clusters``).

    ``queries``: a query/gallery benchmark's query images (In-Shop); NMI clusters every test image.
    """
    per_query = per_query_metrics(embeddings, labels, ks, queries=queries)
    keep = per_query["kept"]
    metrics = {name: float(values[keep].mean()) for name, values in per_query.items() if name not in ("kept", "queries")}
    x = _normalised(embeddings)
    per_query["clusters"] = nmi_clusters(x, labels)
    metrics["nmi"] = nmi(x, labels, clusters=per_query["clusters"])
    return metrics, per_query


def evaluate_run(run_dir: str | Path, ks: Iterable[int] = (1, 2, 4, 8)) -> dict[str, float]:
    """Metrics of a run's test embeddings (its ``metrics`` file) and the per-query results behind them
    (its ``queries`` file, :data:`dmlsynth.metrics.PER_QUERY_ARRAYS`), which the results table resamples for its
    bootstrap intervals; plus its embedding and training plots.

    A run that chose its epoch on validation classes also has test embeddings of its last epoch:
    their metrics and arrays are added under the :data:`LAST_EPOCH` prefix (``last_epoch.recall@1``).
    """
    folder = RunFolder(str(run_dir))
    if not Path(folder.embeddings).is_file():
        raise FileNotFoundError(f"{folder.embeddings} does not exist: run the training job first")
    started = time.perf_counter()
    with np.load(folder.embeddings, allow_pickle=False) as data:
        embeddings, labels = data["embeddings"], data["labels"]
        # A query/gallery benchmark's embeddings file says which test images are queries (training.outputs).
        queries = data["queries"] if "queries" in data.files else None
    metrics, per_query = _test_results(embeddings, labels, ks, queries)
    if Path(folder.last_epoch_embeddings).is_file():
        with np.load(folder.last_epoch_embeddings, allow_pickle=False) as data:
            if not np.array_equal(data["labels"], labels):
                raise ValueError(f"{folder.last_epoch_embeddings} and {folder.embeddings} hold different test images; train the run again")
            last_metrics, last_per_query = _test_results(data["embeddings"], labels, ks, queries)
        metrics.update({LAST_EPOCH + name: value for name, value in last_metrics.items()})
        per_query.update({LAST_EPOCH + name: values for name, values in last_per_query.items() if name not in ("kept", "queries")})
    metrics["queries"] = int(len(labels) if queries is None else np.count_nonzero(queries))
    metrics["eval_seconds"] = round(time.perf_counter() - started, 3)
    with atomic_output(folder.queries) as tmp:
        np.savez_compressed(tmp, labels=labels, **per_query)
    name = run_title(folder)
    plot_embeddings(embeddings, labels, Path(folder.embedding_plot), title=f"{name} — R@{min(ks)} {metrics[f'recall@{min(ks)}']:.3f}")
    plot_training_curve(Path(folder.history), Path(folder.training_curve), title=name)
    # Written last: a run whose metrics file exists has all its evaluation files.
    atomic_write_text(folder.metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def run_title(folder: RunFolder) -> str:
    """``dataset · method · loss · seed N`` of a run, from its record (the method as the table names it, e.g. a
    control ``baseline+beta=40``); the folder when the record cannot be read."""
    import yaml

    try:
        params = yaml.safe_load(Path(folder.record).read_text())["params"]
        method = params.get("label", params["method"])
        return f"{params['dataset']} · {method} · {params['loss']} · seed {params['seed']}"
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return folder.path


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
    save_figure(fig, out)


def plot_training_curve(history_file: Path, out: Path, title: str = "") -> None:
    """Training loss per epoch; with validation classes also validation R@1 and MAP@R and the chosen epoch.
    ``title`` names the run (:func:`run_title`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    history = pd.read_csv(history_file)
    fig, ax = plt.subplots(figsize=(5.5 if "val_map@r" in history else 5, 3))
    ax.plot(history["epoch"], history["loss"], marker="o", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(title or history_file.parent.as_posix(), fontsize=9)
    if "val_map@r" in history:
        validation = ax.twinx()
        validation.plot(history["epoch"], 100 * history["val_recall@1"], color="#55a868", marker=".", label="val R@1")
        validation.plot(history["epoch"], 100 * history["val_map@r"], color="#c44e52", marker=".", label="val MAP@R")
        chosen = int(history.loc[history["val_map@r"].idxmax(), "epoch"])  # the first best epoch, as chosen
        validation.axvline(chosen, color="#c44e52", linestyle=":", label=f"chosen epoch {chosen}")
        validation.set_ylabel("validation classes (%)")
        validation.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    save_figure(fig, out)
