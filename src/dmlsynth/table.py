"""The results table: one row per dataset x method x loss, aggregated over seeds, compared with baseline.

Input: run folders (``results/runs/<dataset>/<method>/<loss>/seed<N>/``). A
run's identity (dataset, method, loss, seed), params hash and code version
are read from its ``run.yaml``, its metrics from ``metrics.json`` and its
per-query results from ``queries.npz``; a folder without these files is
refused with the job to re-run.

For every metric the row holds the mean over seeds with its spread and two
95 % intervals, and — for every method but ``baseline`` — the paired
difference to ``baseline`` with a t interval over seeds, a query-bootstrap
interval, a p-value and whether the difference is significant after Holm
correction over the methods compared. README ("What you get") defines every
column; :mod:`dmlsynth.stats` holds the statistics.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from dmlsynth import stats
from dmlsynth.metrics import METRIC_KEYS
from dmlsynth.io import atomic_write_text, save_figure
from dmlsynth.layout import RunFolder

BASELINE = "baseline"
BOOKKEEPING = {"queries", "eval_seconds"}
# What the table reads of a run (it refuses a run that lacks one), and the job that writes it.
RUN_FILES = {"record": "training", "embeddings": "training", "metrics": "evaluation", "queries": "evaluation"}
NOT_AVAILABLE = "n/a"
IDENTITY = ["dataset", "method", "loss"]
# Per metric, in this order (README, "What you get", defines each).
METRIC_STATS = (
    "mean", "std", "ci_low", "ci_high", "boot_low", "boot_high",
    "delta", "delta_ci_low", "delta_ci_high", "delta_boot_low", "delta_boot_high", "p", "p_holm", "significant",
)  # fmt: skip
ROW_COLUMNS = ["seeds", "pairs", "test", "seed_list", "chosen_epochs", "params_hashes", "git_commits"]


class TableError(ValueError):
    """The runs given to the table are missing, incomplete or inconsistent."""


@dataclass
class Run:
    folder: Path
    dataset: str
    method: str
    loss: str
    seed: int
    params_hash: str
    git_commit: str
    git_dirty: bool
    metrics: dict[str, float]
    train_seconds: float
    device: str
    chosen_epoch: int | None  # the epoch whose test embeddings are reported (chosen on validation, else the last)
    _per_query: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dataset, self.method, self.loss, self.seed)

    @property
    def code_version(self) -> str:
        return self.git_commit + ("+dirty" if self.git_dirty else "")

    def per_query(self) -> dict[str, np.ndarray]:
        """The run's per-query results, checked against its metrics."""
        if self._per_query is None:
            path = RunFolder(str(self.folder)).queries
            try:
                with np.load(path, allow_pickle=False) as data:
                    arrays = {name: data[name] for name in data.files}
            except (OSError, ValueError) as exc:
                raise TableError(f"cannot read {path} ({exc}); {_rerun_evaluation(self.folder)}") from exc
            kept = arrays.get("kept")
            for name, value in self.metrics.items():
                if kept is not None and name in arrays and kept.any():
                    if not math.isclose(float(arrays[name][kept].mean()), value, abs_tol=1e-9):
                        raise TableError(
                            f"{self.folder}: {Path(path).name} and {Path(RunFolder(str(self.folder)).metrics).name} "
                            f"disagree on {name}; they come from different evaluations: {_rerun_evaluation(self.folder)}"
                        )
            self._per_query = arrays
        return self._per_query


def _rerun_evaluation(folder: Path) -> str:
    return f"re-run its evaluation (snakemake --cores 1 --forcerun evaluate {RunFolder(str(folder)).metrics})"


def _how_to_make(folder: Path, job: str) -> str:
    run = RunFolder(str(folder))
    return f"run its {job} job (snakemake --cores 1 {run.record if job == 'training' else run.metrics})"


def run_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders from ``paths``: run folders, files inside them, or folders holding run folders."""
    folders: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            folders.append(path.parent)
        elif path.is_dir():
            run = RunFolder(str(path))
            if any(Path(getattr(run, name)).exists() for name in RUN_FILES):
                folders.append(path)
            else:
                # A folder below with a record or metrics is a run (an incomplete one is refused later).
                markers = {Path(getattr(RunFolder("."), name)).name for name in ("record", "metrics")}
                found = sorted({p.parent for name in markers for p in path.rglob(name)})
                if not found:
                    raise TableError(
                        f"{path} holds no run folders (no run.yaml or metrics.json below it); give run folders "
                        f"such as results/runs/<dataset>/<method>/<loss>/seed<N>, or the folder containing them"
                    )
                folders.extend(found)
        else:
            raise TableError(
                f"{path} does not exist; give run folders such as results/runs/<dataset>/<method>/<loss>/seed<N> "
                f"(or results/runs for all of them)"
            )
    # The same folder given twice counts once; paths stay as given (relative ones stay relative).
    seen: set[Path] = set()
    unique = []
    for folder in folders:
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            unique.append(folder)
    return unique


def read_run(folder: str | Path) -> Run:
    """One run's identity, provenance and metrics; :class:`TableError` if any of its files is missing."""
    folder = Path(folder)
    run = RunFolder(str(folder))
    missing = [name for name in RUN_FILES if not Path(getattr(run, name)).is_file()]
    if missing:
        names = ", ".join(Path(getattr(run, name)).name for name in missing)
        raise TableError(f"run {folder} is incomplete: {names} missing; {_how_to_make(folder, RUN_FILES[missing[0]])}")
    try:
        record = yaml.safe_load(Path(run.record).read_text())
        params = record["params"]
        identity = {key: params[key] for key in ("dataset", "method", "loss", "seed")}
        code = record.get("code") or {}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise TableError(f"{run.record} is not a run record ({exc}); {_how_to_make(folder, 'training')}") from exc
    try:
        metrics = json.loads(Path(run.metrics).read_text())
        values = {k: float(v) for k, v in metrics.items() if k not in BOOKKEEPING}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise TableError(f"cannot read {run.metrics} ({exc}); {_rerun_evaluation(folder)}") from exc
    return Run(
        folder=folder,
        dataset=str(identity["dataset"]),
        method=str(identity["method"]),
        loss=str(identity["loss"]),
        seed=int(identity["seed"]),
        params_hash=str(record.get("params_hash", "unknown")),
        git_commit=str(code.get("git_commit", "unknown")),
        git_dirty=bool(code.get("git_dirty", False)),
        metrics=values,
        train_seconds=float((record.get("wall_seconds") or {}).get("train", float("nan"))),
        device=str((record.get("environment") or {}).get("device", "unknown")),
        chosen_epoch=_chosen_epoch(record),
    )


def _chosen_epoch(record: Mapping[str, Any]) -> int | None:
    if record.get("validation"):
        return int(record["validation"]["chosen_epoch"])
    epochs = (record["params"].get("training") or {}).get("epochs")
    return int(epochs) if epochs is not None else None


def collect(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under ``paths``; two folders of the same dataset/method/loss/seed are an error."""
    runs = [read_run(folder) for folder in run_folders(paths)]
    if not runs:
        raise TableError("no runs given")
    seen: dict[tuple, Path] = {}
    for run in runs:
        if run.key in seen:
            raise TableError(
                f"{seen[run.key]} and {run.folder} are the same run ({'/'.join(map(str, run.key))}); give only one of them"
            )
        seen[run.key] = run.folder
    return runs


def metric_names(runs: Iterable[Run]) -> list[str]:
    """Metrics of the runs, in the order of METRIC_KEYS first (recall@K ascending), then any others."""
    names = list(dict.fromkeys(name for run in runs for name in run.metrics))
    known = {key: i for i, key in enumerate(METRIC_KEYS)}

    def order(name: str) -> tuple:
        if name.startswith("recall@"):
            return (0, int(name.split("@")[1]), name)
        return (1, known.get(name, len(known)), name)

    return sorted(names, key=order)


def bootstrap_replicates(runs: list[Run], metrics: list[str], settings: Mapping[str, Any]) -> dict[tuple, dict[str, np.ndarray]]:
    """Each run's metrics on the same query resamples of its dataset's test set."""
    out: dict[tuple, dict[str, np.ndarray]] = {}
    for dataset in dict.fromkeys(run.dataset for run in runs):
        members = [run for run in runs if run.dataset == dataset]
        reference = members[0]
        labels = reference.per_query()["labels"]
        for run in members[1:]:
            if not np.array_equal(run.per_query()["labels"], labels) or not _same_queries(run, reference):
                raise TableError(
                    f"{run.folder} and {reference.folder} were evaluated on different test images "
                    f"(their queries.npz labels or query images differ); re-run the training and evaluation of the older one"
                )
        positions = query_positions(reference.per_query())
        resamples = stats.QueryBootstrap(len(positions), int(settings["bootstrap_samples"]), int(settings["bootstrap_seed"]))
        for run in members:
            out[run.key] = resamples.replicates(resampled_arrays(run.per_query(), positions), metrics)
    return out


def query_positions(per_query: Mapping[str, np.ndarray]) -> np.ndarray:
    """The test images the bootstrap resamples: every one, or a query/gallery benchmark's query images only
    (its gallery is the fixed set the queries are searched in, not a sample of queries)."""
    if "queries" in per_query:
        return np.flatnonzero(per_query["queries"])
    return np.arange(len(per_query["labels"]))


def resampled_arrays(per_query: Mapping[str, np.ndarray], positions: np.ndarray) -> dict[str, np.ndarray]:
    """The per-query arrays at ``positions``. A query/gallery benchmark's NMI clusters query and gallery images
    together, so resampling queries says nothing about it: its clusters are left out (no NMI interval)."""
    if "queries" not in per_query:
        return dict(per_query)
    n = len(per_query["labels"])
    return {
        name: values[positions]
        for name, values in per_query.items()
        if len(values) == n and name != "queries" and not name.endswith("clusters")
    }


def _same_queries(run: Run, reference: Run) -> bool:
    a, b = run.per_query().get("queries"), reference.per_query().get("queries")
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _mean_of(arrays: list[np.ndarray]) -> np.ndarray | None:
    return np.mean(arrays, axis=0) if arrays and all(a is not None for a in arrays) else None


def aggregate(runs: list[Run], settings: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The table (one row per dataset x method x loss) from runs; NaN where a value does not exist."""
    settings = {**stats.DEFAULTS, **(settings or {})}
    confidence, alpha = float(settings["confidence"]), float(settings["alpha"])
    metrics = metric_names(runs)
    replicates = bootstrap_replicates(runs, metrics, settings)
    rows: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], dict[str, dict[int, Run]]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.loss), {}).setdefault(run.method, {})[run.seed] = run
    for (dataset, loss), methods in groups.items():
        baseline = methods.get(BASELINE)
        group_rows = []
        # Baseline first, then the methods in the order their runs were given.
        for method, by_seed in sorted(methods.items(), key=lambda item: item[0] != BASELINE):
            seeds = sorted(by_seed)
            members = [by_seed[s] for s in seeds]
            pairs = sorted(set(seeds) & set(baseline)) if baseline is not None and method != BASELINE else []
            test = ("paired-t" if len(pairs) >= 2 else "bootstrap") if pairs else NOT_AVAILABLE
            row: dict[str, Any] = {
                "dataset": dataset, "method": method, "loss": loss, "seeds": len(seeds),
                "pairs": len(pairs) if method != BASELINE and baseline is not None else np.nan, "test": test,
                "seed_list": ";".join(map(str, seeds)),
                "chosen_epochs": ";".join(NOT_AVAILABLE if r.chosen_epoch is None else str(r.chosen_epoch) for r in members),
                "params_hashes": ";".join(r.params_hash for r in members),
                "git_commits": ";".join(r.code_version for r in members),
            }  # fmt: skip
            for name in metrics:
                values = [r.metrics.get(name, np.nan) for r in members]
                spread = stats.t_interval(values, confidence)
                row[f"{name}_mean"] = spread.estimate
                row[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = spread.low, spread.high
                boot = _mean_of([replicates[r.key].get(name) for r in members])
                row[f"{name}_boot_low"], row[f"{name}_boot_high"] = (
                    stats.percentile_interval(boot, confidence) if boot is not None else (np.nan, np.nan)
                )
                delta = stats.NOT_AVAILABLE
                boot_delta = None
                if pairs:
                    differences = [by_seed[s].metrics.get(name, np.nan) - baseline[s].metrics.get(name, np.nan) for s in pairs]
                    delta = stats.t_interval(differences, confidence)
                    boot_delta = _mean_of(
                        [
                            replicates[by_seed[s].key][name] - replicates[baseline[s].key][name]
                            if name in replicates[by_seed[s].key] and name in replicates[baseline[s].key]
                            else None
                            for s in pairs
                        ]
                    )
                row[f"{name}_delta"] = delta.estimate
                row[f"{name}_delta_ci_low"], row[f"{name}_delta_ci_high"] = delta.low, delta.high
                row[f"{name}_delta_boot_low"], row[f"{name}_delta_boot_high"] = (
                    stats.percentile_interval(boot_delta, confidence) if boot_delta is not None else (np.nan, np.nan)
                )
                if len(pairs) >= 2:
                    row[f"{name}_p"] = delta.p
                elif pairs and boot_delta is not None:
                    row[f"{name}_p"] = stats.bootstrap_p(boot_delta)
                else:
                    row[f"{name}_p"] = np.nan
            group_rows.append(row)
        # Holm over the methods compared with this baseline, one family per metric.
        for name in metrics:
            adjusted = stats.holm([row[f"{name}_p"] for row in group_rows])
            for row, p_holm in zip(group_rows, adjusted):
                row[f"{name}_p_holm"] = p_holm
                row[f"{name}_significant"] = None if np.isnan(p_holm) else bool(p_holm < alpha)
        rows.extend(group_rows)
    columns = IDENTITY + ROW_COLUMNS + [f"{name}_{stat}" for name in metrics for stat in METRIC_STATS]
    return pd.DataFrame(rows)[columns]


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: identity, metrics and provenance."""
    return pd.DataFrame(
        [
            {
                "dataset": r.dataset, "method": r.method, "loss": r.loss, "seed": r.seed, **r.metrics,
                "params_hash": r.params_hash, "git_commit": r.code_version,
                "train_seconds": r.train_seconds, "device": r.device, "chosen_epoch": r.chosen_epoch,
                "folder": r.folder.as_posix(),
            }  # fmt: skip
            for r in runs
        ]
    )


def table_csv(table: pd.DataFrame) -> str:
    """The CSV text: floats with 6 decimals, significance as yes/no, 'n/a' where a value does not exist."""
    out = table.copy()
    for column in out.columns:
        if column.endswith("_significant"):
            out[column] = out[column].map({True: "yes", False: "no"})
    if "pairs" in out:
        out["pairs"] = out["pairs"].astype("Int64")
    return out.to_csv(index=False, float_format="%.6f", na_rep=NOT_AVAILABLE)


def read_table(path: str | Path) -> pd.DataFrame:
    """``results/table.csv`` back as a frame ('n/a' -> NaN, yes/no -> True/False)."""
    table = pd.read_csv(path, na_values=[NOT_AVAILABLE], keep_default_na=False, dtype={"seed_list": str, "chosen_epochs": str})
    for column in table.columns:
        if column.endswith("_significant"):
            table[column] = table[column].map({"yes": True, "no": False})
    return table


def summary_metrics(table: pd.DataFrame) -> dict[str, float]:
    """The table's numbers as MLflow metrics ``<dataset>/<method>/<loss>/<column>`` ('@' spelled '_at_').

    Significance is 1 or 0; values that do not exist (n/a) are left out.
    """
    out: dict[str, float] = {}
    numeric = [c for c in table.columns if c not in IDENTITY and c not in ("test", "seed_list", "chosen_epochs", "params_hashes", "git_commits")]
    for record in table.to_dict(orient="records"):
        prefix = f"{record['dataset']}/{record['method']}/{record['loss']}/"
        for column in numeric:
            value = record[column]
            if isinstance(value, (bool, np.bool_)):
                value = float(value)
            if value is None or not np.isfinite(float(value)):
                continue
            out[prefix + column.replace("@", "_at_")] = float(value)
    return out


def _json_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NOT_AVAILABLE
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def nested(frame: pd.DataFrame, keys: list[str]) -> dict:
    """``{dataset: {method: {loss: {...}}}}``: the shape ``dvc metrics show`` flattens into readable keys."""
    out: dict = {}
    for record in frame.to_dict(orient="records"):
        node = out
        for key in keys[:-1]:
            node = node.setdefault(str(record.pop(key)), {})
        last = record.pop(keys[-1])
        node[f"seed{last}" if keys[-1] == "seed" else str(last)] = {k: _json_value(v) for k, v in record.items()}
    return out


def write_table(
    paths: Iterable[str | Path],
    out_csv: str | Path,
    out_json: str | Path,
    out_figure: str | Path,
    settings: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    runs = collect(paths)
    table = aggregate(runs, settings)
    payload = {"table": nested(table, IDENTITY), "runs": nested(runs_frame(runs), [*IDENTITY, "seed"])}
    plot_recall(table, out_figure, confidence=float({**stats.DEFAULTS, **(settings or {})}["confidence"]))
    atomic_write_text(out_json, json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out_csv, table_csv(table))
    return table


def plot_recall(table: pd.DataFrame, out: str | Path, metric: str = "recall@1", confidence: float = 0.95) -> None:
    """Horizontal bars from 0 % per method, one panel per dataset and loss, with confidence intervals.

    The interval is the t interval over seeds where a row has two or more
    seeds, else the query bootstrap's (which covers the test queries only).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    groups = list(table.groupby(["dataset", "loss"], sort=False))
    methods = max(len(part) for _, part in groups)
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9.0, 1.2 + 0.45 * methods * len(groups) + 0.6 * len(groups)), squeeze=False
    )
    level = f"{100 * confidence:g} %"
    for ax, ((dataset, loss), part) in zip(axes[:, 0], groups):
        part = part.iloc[::-1]  # first method on top
        mean = 100 * part[f"{metric}_mean"].to_numpy(dtype=float)
        use_t = part["seeds"].to_numpy() >= 2
        low = 100 * np.where(use_t, part[f"{metric}_ci_low"], part[f"{metric}_boot_low"]).astype(float)
        high = 100 * np.where(use_t, part[f"{metric}_ci_high"], part[f"{metric}_boot_high"]).astype(float)
        y = np.arange(len(part))
        colors = ["#8c8c8c" if m == BASELINE else "#4c72b0" for m in part["method"]]
        error = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])
        ax.barh(y, mean, xerr=error, color=colors, capsize=3, height=0.6, error_kw={"elinewidth": 1})
        for yi, m, lo, hi, seeds in zip(y, mean, low, high, part["seeds"]):
            interval = f" [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) else ""
            ax.text(101, yi, f"{m:.1f}{interval} · {seeds} seed{'s' if seeds != 1 else ''}", va="center", fontsize=8)
        ax.set_yticks(y, part["method"])
        ax.set_xlim(0, 100)
        ax.set_title(f"{dataset} · {loss}", fontsize=10, loc="left")
        ax.set_xlabel(f"{metric} (%) on the test classes — mean over seeds, {level} CI")
    fig.text(
        0.01, 0.005,
        f"Error bars: {level} t interval over seeds (rows with >= 2 seeds), else {level} bootstrap over test queries.",
        fontsize=7, color="#555555",
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.02, 0.78, 1))
    save_figure(fig, out, dpi=120)
