"""The results table: one row per dataset x method x loss, aggregated over seeds.

Columns: ``dataset, method, loss, seeds`` then for every metric
``<metric>_mean``, ``<metric>_std`` (sample std over seeds; 0 for one seed)
and ``<metric>_delta`` (mean minus the mean of ``baseline`` with the same
dataset and loss; empty when baseline was not run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from dmlsynth.config import atomic_write_text
from dmlsynth.evaluate import METRIC_KEYS

RUN_PATTERN = re.compile(r"(?P<dataset>[^/]+)/(?P<method>[^/]+)/(?P<loss>[^/]+)/seed(?P<seed>\d+)/metrics\.json$")
BOOKKEEPING = {"queries", "eval_seconds"}


def collect(metric_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run, read from ``.../{dataset}/{method}/{loss}/seed{seed}/metrics.json`` files."""
    rows = []
    for file in metric_files:
        file = Path(file)
        match = RUN_PATTERN.search(file.as_posix())
        if not match:
            raise ValueError(f"{file} is not a run's metrics file ({{dataset}}/{{method}}/{{loss}}/seed{{N}}/metrics.json)")
        try:
            metrics = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {file} ({exc}); re-run its evaluation job") from exc
        row = {**match.groupdict(), **{k: v for k, v in metrics.items() if k not in BOOKKEEPING}}
        row["seed"] = int(row["seed"])
        rows.append(row)
    if not rows:
        raise ValueError("no metrics files given")
    return pd.DataFrame(rows)


def metric_names(runs: pd.DataFrame) -> list[str]:
    """Metric columns, in the order of METRIC_KEYS first (recall@K ascending), then any others."""
    names = [c for c in runs.columns if c not in {"dataset", "method", "loss", "seed"}]
    known = {key: i for i, key in enumerate(METRIC_KEYS)}

    def order(name: str) -> tuple:
        if name.startswith("recall@"):
            return (0, int(name.split("@")[1]), name)
        return (1, known.get(name, len(known)), name)

    return sorted(names, key=order)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    metrics = metric_names(runs)
    grouped = runs.groupby(["dataset", "method", "loss"], sort=False)
    table = grouped.size().rename("seeds").reset_index()
    for name in metrics:
        stats = grouped[name].agg(["mean", "std"]).reset_index(drop=True)
        table[f"{name}_mean"] = stats["mean"].to_numpy()
        table[f"{name}_std"] = stats["std"].fillna(0.0).to_numpy()
    baseline = table[table.method == "baseline"].set_index(["dataset", "loss"])
    for name in metrics:
        reference = [baseline[f"{name}_mean"].get((d, l), np.nan) for d, l in zip(table["dataset"], table["loss"])]
        table[f"{name}_delta"] = table[f"{name}_mean"] - np.asarray(reference, dtype=float)
    columns = ["dataset", "method", "loss", "seeds"] + [f"{n}_{s}" for n in metrics for s in ("mean", "std", "delta")]
    return table[columns]


def write_table(
    metric_files: Iterable[str | Path], out_csv: str | Path, out_json: str | Path, out_figure: str | Path
) -> pd.DataFrame:
    runs = collect(metric_files)
    table = aggregate(runs)
    atomic_write_text(out_csv, table.to_csv(index=False, float_format="%.6f"))
    payload = {"table": nested(table, ["dataset", "method", "loss"]), "runs": nested(runs, ["dataset", "method", "loss", "seed"])}
    atomic_write_text(out_json, json.dumps(payload, indent=2) + "\n")
    plot_recall(table, out_figure)
    return table


def nested(frame: pd.DataFrame, keys: list[str]) -> dict:
    """``{dataset: {method: {loss: {...}}}}``: the shape ``dvc metrics show`` flattens into readable keys."""
    out: dict = {}
    for record in json.loads(frame.to_json(orient="records")):
        node = out
        for key in keys[:-1]:
            node = node.setdefault(str(record.pop(key)), {})
        last = record.pop(keys[-1])
        node[f"seed{last}" if keys[-1] == "seed" else str(last)] = record
    return out


def plot_recall(table: pd.DataFrame, out: str | Path, metric: str = "recall@1") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = list(table.groupby(["dataset", "loss"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(max(4.0, 1.0 + 0.7 * table.method.nunique()) * len(groups), 3.6), squeeze=False)
    for ax, ((dataset, loss), part) in zip(axes[0], groups):
        ax.bar(part["method"], 100 * part[f"{metric}_mean"], yerr=100 * part[f"{metric}_std"], capsize=3, color="#4c72b0")
        ax.set_title(f"{dataset} · {loss}")
        ax.set_ylabel(f"{metric} (%) — mean ± std over seeds")
        low = 100 * (part[f"{metric}_mean"] - part[f"{metric}_std"]).min()
        ax.set_ylim(max(0.0, low - 5), 100)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
