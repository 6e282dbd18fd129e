"""The results table: one row per dataset x method x loss, aggregated over seeds, compared with its control.

Input: run folders (``results/runs/<dataset>/<method>/<loss>/seed<N>/``). A
run's identity (dataset, row, loss, seed), its control, params, params hash,
code version, threads, device and step budget are read from its ``run.yaml``,
its metrics from ``metrics.json`` and its per-query results from
``queries.npz``; a folder without these files is refused with the job to re-run.

For every metric the row holds the mean over seeds with its spread and two
95 % intervals, and — for every method row — the paired difference to its
*control* (``baseline`` with the method's loss params,
:func:`dmlsynth.registry.control_label`) with a t interval over seeds, a
query-bootstrap interval (the same resamples for a run and its control), a
p-value and whether the difference is significant after Holm correction over
the methods compared in the dataset x loss. A pair whose runs differ in
anything but the synthesis (params, steps, threads, device) is refused, and so
are seeds of one row made with different settings. docs/outputs.md ("results/table.csv")
defines every column; :mod:`dmlsynth.stats` holds the statistics.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from dmlsynth import cost, html_pages, recovery, registry, stats
from dmlsynth.metrics import METRIC_KEYS
from dmlsynth.io import atomic_write_text, save_figure
from dmlsynth.layout import RunFolder, TableFiles
from dmlsynth.errors import DmlsynthError

log = logging.getLogger("dmlsynth.table")

BASELINE = registry.BASELINE
BOOKKEEPING = {"queries", "eval_seconds"}
# What the table reads of a run (it refuses a run that lacks one), and the job that writes it.
RUN_FILES = {"record": "training", "embeddings": "training", "metrics": "evaluation", "queries": "evaluation"}
NOT_AVAILABLE = "n/a"
IDENTITY = ["dataset", "method", "loss"]
# Per metric, in this order (docs/statistics.md, "Metrics", defines each).
METRIC_STATS = (
    "mean", "std", "ci_low", "ci_high", "boot_low", "boot_high",
    "delta", "delta_std", "delta_ci_low", "delta_ci_high", "delta_boot_low", "delta_boot_high", "p", "p_holm", "significant",
    "delta_adj_low", "delta_adj_high", "mdd", "seeds_needed",
)  # fmt: skip
# What each row was trained and compared with: its control (the same runs with the synthesis off), the
# settings that change numbers without being params (threads, device kind), and the step budget.
ROW_COLUMNS = ["control", "seeds", "pairs", "test"]
# After the numbers: the settings the row was made with, and where its runs came from.
PROVENANCE_COLUMNS = [
    "optimisation_steps", "batch_size", "threads", "device", "cpu_isa", "seed_list", "chosen_epochs", "params_hashes", "git_commits",
]  # fmt: skip
# The stats of a metric that are on the metric's scale (the rest: p-values and significance). The files say them in
# percentage points (metric x 100; NMI too), one unit for every number of results/; the frame in memory, like the
# run folders' metrics.json, holds the metric's own scale, [0, 1] (table_csv and read_table convert at the file).
POINT_STATS = tuple(stat for stat in METRIC_STATS if stat not in ("p", "p_holm", "significant", "seeds_needed"))
POINTS = 100.0
INTEGER_COLUMNS = ("seeds", "pairs", "optimisation_steps", "batch_size", "threads")
# Params in which a method's run may differ from its control's: everything else (dataset settings,
# training, loss params, evaluation) must be equal, or the delta would mix the synthesis with something else.
METHOD_PARAMS = ("method", "label", "control", "method_params")


class TableError(DmlsynthError, ValueError):
    """The runs given to the table are missing, incomplete or inconsistent."""


@dataclass
class Run:
    folder: Path
    dataset: str
    method: str  # the run's row: a method, or a control with other loss params ("baseline+beta=40")
    loss: str
    seed: int
    params_hash: str
    git_commit: str
    git_dirty: bool
    metrics: dict[str, float]
    train_seconds: float  # over every attempt of the run (resumes and retries included)
    device: str
    chosen_epoch: int | None  # the epoch whose test embeddings are reported (chosen on validation, else the last)
    control: str | None = None  # the row this run is compared with (None: it is a control)
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)
    threads: int | None = None
    optimisation_steps: int | None = None
    cpu_isa: str | None = None  # the instruction set its CPU libraries were pinned to (None: not recorded)
    _per_query: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dataset, self.method, self.loss, self.seed)

    @property
    def code_version(self) -> str:
        return self.git_commit + ("+dirty" if self.git_dirty else "")

    @property
    def device_kind(self) -> str:
        """``cpu`` or ``cuda`` (float results differ between kinds, not between two GPUs of one kind)."""
        return self.device.split(":")[0]

    @property
    def batch_size(self) -> int | None:
        value = (self.params.get("training") or {}).get("batch_size")
        return None if value is None else int(value)

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
    return f"re-run its evaluation ({recovery.remake(RunFolder(str(folder)).metrics)})"


def _how_to_make(folder: Path, job: str) -> str:
    run = RunFolder(str(folder))
    return f"run its {job} job ({recovery.make(run.record if job == 'training' else run.metrics)})"


def _retrain(folder: Path) -> str:
    # The broken record is newer than the training's inputs: `snakemake <record>` would find nothing to do.
    return f"train it again ({recovery.remake(RunFolder(str(folder)).record)})"


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
        raise TableError(f"{run.record} is not a run record ({exc}); {_retrain(folder)}") from exc
    try:
        metrics = json.loads(Path(run.metrics).read_text())
        values = {k: float(v) for k, v in metrics.items() if k not in BOOKKEEPING}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise TableError(f"cannot read {run.metrics} ({exc}); {_rerun_evaluation(folder)}") from exc
    label = str(params.get("label", identity["method"]))
    # Records from before controls existed: every method was compared with plain baseline.
    control = params["control"] if "control" in params else (None if identity["method"] == BASELINE else BASELINE)
    environment = record.get("environment") or {}
    threads = record.get("threads", environment.get("torch.threads"))
    steps = (record.get("budget") or {}).get("optimisation_steps")
    return Run(
        folder=folder,
        dataset=str(identity["dataset"]),
        method=label,
        loss=str(identity["loss"]),
        seed=int(identity["seed"]),
        params_hash=str(record.get("params_hash", "unknown")),
        git_commit=str(code.get("git_commit", "unknown")),
        git_dirty=bool(code.get("git_dirty", False)),
        metrics=values,
        train_seconds=float((record.get("wall_seconds") or {}).get("train", float("nan"))),
        device=str(environment.get("device", "unknown")),
        chosen_epoch=_chosen_epoch(record),
        control=None if control is None else str(control),
        params=params,
        threads=None if threads is None else int(threads),
        optimisation_steps=None if steps is None else int(steps),
        cpu_isa=record.get("cpu_isa", environment.get("cpu_isa")),
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


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


_MISSING = object()


def _differences(run: Run, other: Run, ignore: Iterable[str]) -> list[str]:
    """What differs between two runs' params (less ``ignore``), step budgets, thread counts and device kinds."""
    ignore = set(ignore)
    mine = _flat({k: v for k, v in run.params.items() if k not in ignore})
    theirs = _flat({k: v for k, v in other.params.items() if k not in ignore})
    found = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key, _MISSING), theirs.get(key, _MISSING)
        if a != b:
            found.append(f"{key} ({'unset' if a is _MISSING else a!r} vs {'unset' if b is _MISSING else b!r})")
    for name, what in (
        ("optimisation_steps", "optimisation steps"), ("threads", "threads"), ("device_kind", "device"),
        ("cpu_isa", "CPU instruction set"),
    ):  # fmt: skip
        a, b = getattr(run, name), getattr(other, name)
        if a is not None and b is not None and a != b:
            found.append(f"{what} ({a} vs {b})")
    return found


def check_like_for_like(run: Run, control: Run) -> None:
    """Refuse to compare a method's run with a control that differs in more than the synthesis."""
    differ = _differences(run, control, METHOD_PARAMS)
    if differ:
        raise TableError(
            f"{run.folder} cannot be compared with its control {control.folder}: besides the synthesis they differ in "
            f"{'; '.join(differ)}. A delta must isolate the synthesis: train both with the same settings "
            f"(snakemake re-trains them from one config; give the table runs of one config)"
        )


def check_row(members: list[Run]) -> None:
    """Refuse to average runs of one row that were made with different settings (threads, device, params)."""
    first = members[0]
    for run in members[1:]:
        differ = _differences(run, first, ("seed",))
        if differ:
            raise TableError(
                f"{run.folder} and {first.folder} are seeds of one row ({run.dataset}/{run.method}/{run.loss}) but "
                f"differ in {'; '.join(differ)}: their mean would mix settings. Re-run them with the same settings "
                f"(thread count: dataset_settings.<dataset>.resources.threads; device: training.device; instruction set: "
                f"reproducibility.cpu_isa)"
            )


def _row_value(members: list[Run], name: str) -> Any:
    """The value the row's runs share (check_row made sure they agree); NaN where no run records it."""
    values = {getattr(r, name) for r in members} - {None}
    return values.pop() if values else np.nan


def aggregate(runs: list[Run], settings: Mapping[str, Any]) -> pd.DataFrame:
    """The table (one row per dataset x method x loss) from runs; NaN where a value does not exist.

    Each method's row is compared with its control's (``Run.control``, seed by seed); the control must
    differ from it in nothing but the synthesis (:func:`check_like_for_like`). A run that lacks a metric
    its row's other runs have is refused, never left out of the mean.
    """
    confidence, alpha = float(settings["confidence"]), float(settings["alpha"])
    metrics = metric_names(runs)
    for run in runs:
        missing = [name for name in metrics if name not in run.metrics]
        if missing:
            raise TableError(
                f"{run.folder}: its metrics lack {', '.join(missing)}, which other runs have; a mean without it would "
                f"be over fewer seeds than the row says: {_rerun_evaluation(run.folder)}"
            )
    replicates = bootstrap_replicates(runs, metrics, settings)
    rows: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], dict[str, dict[int, Run]]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.loss), {}).setdefault(run.method, {})[run.seed] = run
    for (dataset, loss), methods in groups.items():
        group_rows = []
        # Controls first (plain baseline, then those with a method's loss params), then the methods in the
        # order their runs were given.
        for method, by_seed in sorted(methods.items(), key=lambda item: (item[0] != BASELINE, not registry.is_control_label(item[0]))):
            seeds = sorted(by_seed)
            members = [by_seed[s] for s in seeds]
            check_row(members)
            control_name = members[0].control
            control = methods.get(control_name) if control_name is not None else None
            pairs = sorted(set(seeds) & set(control)) if control is not None else []
            for s in pairs:
                check_like_for_like(by_seed[s], control[s])
            test = ("paired-t" if len(pairs) >= 2 else "bootstrap") if pairs else NOT_AVAILABLE
            row: dict[str, Any] = {
                "dataset": dataset, "method": method, "loss": loss,
                "control": NOT_AVAILABLE if control_name is None else control_name, "seeds": len(seeds),
                "pairs": len(pairs) if control_name is not None else np.nan, "test": test,
                "optimisation_steps": _row_value(members, "optimisation_steps"),
                "batch_size": _row_value(members, "batch_size"),
                "threads": _row_value(members, "threads"),
                "device": _row_value(members, "device_kind"),
                "cpu_isa": _row_value(members, "cpu_isa"),
                "seed_list": ";".join(map(str, seeds)),
                "chosen_epochs": ";".join(NOT_AVAILABLE if r.chosen_epoch is None else str(r.chosen_epoch) for r in members),
                "params_hashes": ";".join(r.params_hash for r in members),
                "git_commits": ";".join(r.code_version for r in members),
            }  # fmt: skip
            for name in metrics:
                row.update(_metric_stats(name, members, by_seed, control, pairs, replicates, confidence))
            group_rows.append(row)
        _judge_family(group_rows, metrics, alpha)
        rows.extend(group_rows)
    columns = IDENTITY + ROW_COLUMNS + [f"{name}_{stat}" for name in metrics for stat in METRIC_STATS] + PROVENANCE_COLUMNS
    return pd.DataFrame(rows)[columns]


def _metric_stats(
    name: str, members: list[Run], by_seed: Mapping[int, Run], control: Mapping[int, Run] | None, pairs: list[int],
    replicates: Mapping[tuple, Mapping[str, np.ndarray]], confidence: float,
) -> dict[str, Any]:
    """One metric's numbers of a row: its mean over seeds with the t and query-bootstrap intervals, and the paired
    difference to the control (t over seeds; the bootstrap's paired replicates) with its spread and p. The p of two
    or more pairs is the paired t-test's; of one pair, the query bootstrap's (which leaves training randomness out)."""
    values = [r.metrics[name] for r in members]
    spread = stats.t_interval(values, confidence)
    out: dict[str, Any] = {"mean": spread.estimate, "std": float(np.std(values, ddof=1)) if len(values) > 1 else np.nan}
    out["ci_low"], out["ci_high"] = _within(spread.low, spread.high, 0.0, 1.0)
    boot = _mean_of([replicates[r.key].get(name) for r in members])
    out["boot_low"], out["boot_high"] = stats.percentile_interval(boot, confidence) if boot is not None else (np.nan, np.nan)
    delta, boot_delta, differences = stats.NOT_AVAILABLE, None, []
    if pairs:
        differences = [by_seed[s].metrics[name] - control[s].metrics[name] for s in pairs]
        delta = stats.t_interval(differences, confidence)
        # The same query resamples for a run and its control: paired bootstrap replicates.
        boot_delta = _mean_of(
            [
                replicates[by_seed[s].key][name] - replicates[control[s].key][name]
                if name in replicates[by_seed[s].key] and name in replicates[control[s].key]
                else None
                for s in pairs
            ]
        )
    out["delta"] = delta.estimate
    out["delta_std"] = float(np.std(differences, ddof=1)) if len(differences) > 1 else np.nan
    out["delta_ci_low"], out["delta_ci_high"] = _within(delta.low, delta.high, -1.0, 1.0)
    out["delta_boot_low"], out["delta_boot_high"] = (
        stats.percentile_interval(boot_delta, confidence) if boot_delta is not None else (np.nan, np.nan)
    )
    if len(pairs) >= 2:
        out["p"] = delta.p
    elif pairs and boot_delta is not None:
        out["p"] = stats.bootstrap_p(boot_delta)
    else:
        out["p"] = np.nan
    return {f"{name}_{stat}": value for stat, value in out.items()}


def _judge_family(group_rows: list[dict[str, Any]], metrics: list[str], alpha: float) -> None:
    """Holm over the methods of one dataset x loss compared with a control over two or more seeds, one family per
    metric: the adjusted p, the verdict, the interval at the level of the verdict (:func:`stats.holm_levels`, bounded
    to [-1, 1]), and the power of the design: the smallest difference it detects with 80 % power and the seeds that
    would detect the observed one, both at α / m (the level Holm's first step applies; docs/statistics.md). A row
    compared over one seed gets no verdict: its p covers the test queries only, not training randomness."""
    for name in metrics:
        tested = [row if row["test"] == "paired-t" else None for row in group_rows]
        pvalues = [row[f"{name}_p"] if row is not None else np.nan for row in tested]
        adjusted = stats.holm(pvalues)
        levels = stats.holm_levels(pvalues, alpha)
        family = int(np.count_nonzero(~np.isnan(pvalues)))
        for row, p_holm, level in zip(group_rows, adjusted, levels):
            row[f"{name}_p_holm"] = p_holm
            row[f"{name}_significant"] = None if np.isnan(p_holm) else bool(p_holm < alpha)
            low = high = mdd = needed = np.nan
            if not np.isnan(p_holm):
                n, sd, delta = int(row["pairs"]), row[f"{name}_delta_std"], row[f"{name}_delta"]
                adjusted_interval = stats.t_interval_of(delta, sd, n, 1.0 - level)
                low, high = _within(adjusted_interval.low, adjusted_interval.high, -1.0, 1.0)
                mdd = stats.minimal_detectable_difference(sd, n, alpha / family)
                needed = stats.seeds_needed(delta, sd, alpha / family)
            row[f"{name}_delta_adj_low"], row[f"{name}_delta_adj_high"] = low, high
            row[f"{name}_mdd"], row[f"{name}_seeds_needed"] = mdd, needed


def _within(low: float, high: float, bottom: float, top: float) -> tuple[float, float]:
    """A t interval bounded to the range its quantity can take (a metric in [0, 1], a difference of two in
    [-1, 1]): the t interval is symmetric and can pass 1 near a ceiling, which no run can reach *[project definition]*."""
    return (float(np.clip(low, bottom, top)), float(np.clip(high, bottom, top))) if np.isfinite(low) else (low, high)


POINT_NAMES = frozenset([*METRIC_KEYS, *(f"{m}_{stat}" for m in METRIC_KEYS for stat in POINT_STATS)])


def point_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of ``frame`` that are on a metric's scale (written in percentage points): a metric's, or its
    value at the last epoch's (``last_epoch.<metric>``, with validation classes)."""
    return [c for c in frame.columns if str(c).removeprefix("last_epoch.") in POINT_NAMES]


def in_points(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of the table (or the runs' frame) with every metric-scale column in percentage points."""
    out = frame.copy()
    columns = point_columns(out)
    out[columns] = out[columns].astype(float) * POINTS
    return out


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: identity, metrics (on their own scale, [0, 1]) and provenance."""
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
    """The CSV text: metrics in percentage points, floats with 6 decimals, significance as yes/no, 'n/a' where a value does not exist."""
    out = in_points(table)
    for column in out.columns:
        if column.endswith("_significant"):
            out[column] = out[column].map({True: "yes", False: "no"})
    for column in INTEGER_COLUMNS:
        if column in out:
            out[column] = out[column].astype("Int64")
    return out.to_csv(index=False, float_format="%.6f", na_rep=NOT_AVAILABLE)


def read_table(path: str | Path) -> pd.DataFrame:
    """``results/table.csv`` back as a frame ('n/a' -> NaN, yes/no -> True/False)."""
    table = pd.read_csv(path, na_values=[NOT_AVAILABLE], keep_default_na=False, dtype={"seed_list": str, "chosen_epochs": str})
    columns = point_columns(table)
    table[columns] = table[columns].astype(float) / POINTS  # the file's points back to the metric's scale
    for column in table.columns:
        if column.endswith("_significant"):
            table[column] = table[column].map({"yes": True, "no": False})
    return table


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


# The summary's metrics, in this order (README, "Reading the results").
SUMMARY_METRICS = (("recall@1", "R@1"), ("map@r", "MAP@R"))


# The summary's cost columns and the cost.row_cost value each holds: a row's own cost (per seed; the sampling of
# its image set), and the generator its image set shares with other rows (the markdown states it once).
SUMMARY_COSTS = {
    "train s / seed": "train_seconds_per_seed", "sampling s": "generation_seconds", "GPU-h": "gpu_hours",
    "shared generator s": "generator_train_seconds", "shared generator GPU-h": "generator_gpu_hours",
}  # fmt: skip


def summary(table: pd.DataFrame, runs: list[Run], generation: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per dataset x method x loss, in percent: R@1 and MAP@R (mean over seeds), the paired difference
    to the control with its t interval (the query bootstrap's with one seed) and Holm p, and the row's cost."""
    rows = []
    for record in table.to_dict(orient="records"):
        members = [r for r in runs if (r.dataset, r.method, r.loss) == (record["dataset"], record["method"], record["loss"])]
        row: dict[str, Any] = {k: record[k] for k in ("dataset", "loss", "method", "control", "seeds")}
        one_seed = record["test"] == "bootstrap"
        for name, short in SUMMARY_METRICS:
            # Where a verdict is stated, its family-wise interval (agrees with the Holm verdict); with one seed the
            # query bootstrap's, and no verdict.
            low, high = (f"{name}_delta_boot_low", f"{name}_delta_boot_high") if one_seed else (f"{name}_delta_adj_low", f"{name}_delta_adj_high")
            row[f"{short} %"] = 100 * record[f"{name}_mean"]
            row[f"{short} Δ"] = 100 * record[f"{name}_delta"]
            row[f"{short} Δ low"], row[f"{short} Δ high"] = 100 * record[low], 100 * record[high]
            row[f"{short} p (Holm)"] = record[f"{name}_p_holm"]
            row[f"{short} significant"] = record[f"{name}_significant"]
            row[f"{short} MDD"] = 100 * record[f"{name}_mdd"]
            row[f"{short} seeds needed"] = record[f"{name}_seeds_needed"]
            row[f"{short} verdict"] = verdict(record, name)
        try:
            spent = cost.row_cost(members, generation, record["dataset"], record["method"])
        except cost.CostError as exc:
            # A table built by hand without the generation report: its numbers stand, its cost is unknown.
            log.warning("%s: the summary's generation cost is n/a", exc)
            spent = {**cost.row_cost(members, None, record["dataset"], "baseline"), "generation_seconds": np.nan, "gpu_hours": np.nan}
        for column, key in SUMMARY_COSTS.items():
            row[column] = spent[key]
        rows.append(row)
    return pd.DataFrame(rows)


VERDICTS = {
    "significant": "significant",
    "not significant": "not significant: the design detects differences this size (MDD ≤ |Δ|), none found",
    "underpowered": "underpowered: the interval holds 0, but the design detects only differences above its MDD",
    "one training run": "one training run: the interval covers the test queries only, no verdict on training randomness",
}


def verdict(record: Mapping[str, Any], name: str) -> str | None:
    """What a row's comparison says of ``name`` (a key of VERDICTS); None for a control. A non-significant
    difference is *underpowered* where its minimal detectable difference exceeds the observed |Δ| (or is unknown),
    never "no effect" *[project definition]*."""
    if record["test"] == "bootstrap":
        return "one training run"
    significant = record[f"{name}_significant"]
    if significant is None or (isinstance(significant, float) and np.isnan(significant)):
        return None
    if significant:
        return "significant"
    mdd = record[f"{name}_mdd"]
    return "not significant" if np.isfinite(mdd) and mdd <= abs(record[f"{name}_delta"]) else "underpowered"


def seeds_text(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else (f"> {stats.MAX_SEEDS}" if np.isinf(value) else f"{int(value)}")


def _pct(value: float, signed: bool = False) -> str:
    return NOT_AVAILABLE if pd.isna(value) else (f"{value:+.1f}" if signed else f"{value:.1f}")


def summary_markdown(frame: pd.DataFrame, confidence: float, alpha: float) -> str:
    """The summary as one markdown table per dataset x loss."""
    level = f"{100 * confidence:g} %"
    lines = [
        "# Results in brief",
        "",
        f"Units: R@1 and MAP@R are means over seeds in %; **Δ**: the paired difference to the row's *control* (the same "
        f"runs with the synthesis switched off: baseline with the method's loss params, same steps, batch, seeds), in "
        f"percentage points. **p**: the paired t-test's over seeds, Holm-adjusted over the methods of the dataset and "
        f"loss; Δ's interval is the family-wise one at the level of its verdict (α = {alpha:g} after Holm: it holds 0 "
        f"exactly when the row is not significant), bounded to the metric's range; **bold** Δ: significant. **MDD**: "
        f"the smallest difference these seeds detect with {100 * stats.POWER:g} % power at α / m (m: the methods "
        f"compared), from the observed paired spread over seeds; **seeds for Δ**: how many seeds would detect the "
        f"observed Δ so. A row whose interval holds 0 is *underpowered* where its MDD exceeds |Δ|, not evidence of no "
        f"effect. With one seed a row gets no verdict: its interval ({level}, the query bootstrap's) covers the test "
        "queries only, not training randomness. Cost: **train s / seed**, the "
        "mean training seconds of one seed's run (every attempt counted); **sampling s**, the seconds that made the "
        "row's own generated images; **GPU-h**, the row's seconds on a GPU / 3600, blank where nothing ran on a GPU; a "
        "generator that several rows' images share is stated once under the table, in no row. The full table is "
        "`table.csv` (in % and points too); the comparison report (`comparison.md`) adds forest plots and the "
        "published numbers.",
        "",
    ]
    for (dataset, loss), part in frame.groupby(["dataset", "loss"], sort=False):
        lines += [
            f"## {dataset} · {loss}",
            "",
            "| method | vs | seeds | R@1 % | ΔR@1 (points) | p | MDD | seeds for Δ | MAP@R % | ΔMAP@R (points) | p | MDD "
            "| seeds for Δ | train s / seed | sampling s | GPU-h |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        notes: dict[str, list[str]] = {}
        for r in part.to_dict(orient="records"):
            cells = []
            for _, short in SUMMARY_METRICS:
                delta = r[f"{short} Δ"]
                if pd.isna(delta):
                    cells += [_pct(r[f"{short} %"]), "—", "—", "—", "—"]
                    continue
                text = f"{delta:+.1f} [{_pct(r[f'{short} Δ low'], True)}, {_pct(r[f'{short} Δ high'], True)}]"
                p_holm = r[f"{short} p (Holm)"]
                said = r[f"{short} verdict"]
                if said in ("underpowered", "one training run"):
                    notes.setdefault(said, []).append(f"{r['method']} ({short})")
                cells += [
                    _pct(r[f"{short} %"]), f"**{text}**" if r[f"{short} significant"] is True else text,
                    "—" if pd.isna(p_holm) else f"{p_holm:.2g}", _pct(r[f"{short} MDD"]), seeds_text(r[f"{short} seeds needed"]),
                ]  # fmt: skip
            control = r["control"] if isinstance(r["control"], str) and r["control"] != NOT_AVAILABLE else "—"
            generation = NOT_AVAILABLE if pd.isna(r["sampling s"]) else (f"{r['sampling s']:,.0f}" if r["sampling s"] else "—")
            lines.append(
                f"| {r['method']} | {control} | {r['seeds']} | {' | '.join(cells)} "
                f"| {r['train s / seed']:,.1f} | {generation} | {cost.gpu_hours_text(r['GPU-h'])} |"
            )
        lines += ["", *(f"- {VERDICTS[said]}: {', '.join(rows)}." for said, rows in notes.items())] if notes else []
        shared = part.rename(columns={"shared generator s": "generator_train_seconds", "shared generator GPU-h": "generator_gpu_hours"})
        lines += ["", *cost.shared_generator_lines(shared)] if cost.shared_generators(shared) else []
        lines.append("")
    return "\n".join(lines)


TABLE_UNITS = (
    "One row per dataset × method × loss (table.csv, rounded to 2 decimals here). Metrics (_mean, _ci_*, _boot_*) in %; "
    "their spread (_std) and paired differences to the row's control (_delta*) in percentage points; p-values 0–1; "
    "docs/outputs.md defines every column."
)


def summary_csv(frame: pd.DataFrame) -> str:
    """The summary as CSV: 2 decimals, 'n/a' where a value does not exist, GPU-hours blank where nothing ran on a GPU."""
    out = frame.copy()
    for column in ("GPU-h", "shared generator GPU-h"):
        out[column] = out[column].map(lambda v: cost.gpu_hours_text(v, NOT_AVAILABLE)).astype(object)
    return out.to_csv(index=False, float_format="%.2f", na_rep=NOT_AVAILABLE)


def _isa_line(table: pd.DataFrame) -> str:
    """Under the summary: the instruction set the runs' CPU libraries were pinned to (reproducibility.cpu_isa)."""
    levels = sorted({str(v) for v in table["cpu_isa"] if isinstance(v, str)})
    if not levels:
        return ""
    return f"\nComputed with the CPU libraries' instruction set: {', '.join(levels)} (reproducibility.cpu_isa; table.csv's cpu_isa).\n"


def headline_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """DVC's metrics: per row one number, R@1 in % for a control and its paired difference (points) for a method.

    Keys are ``<method> R@1`` / ``<method> ΔR@1``, under ``<dataset>/<loss>`` when the table has more than one
    dataset x loss, so ``dvc metrics show`` and ``dvc exp show`` stay narrow."""
    groups = list(dict.fromkeys(zip(table["dataset"], table["loss"])))
    out: dict[str, Any] = {}
    for record in table.to_dict(orient="records"):
        delta = record["recall@1_delta"]
        key, value = (f"{record['method']} R@1", record["recall@1_mean"]) if pd.isna(delta) else (f"{record['method']} ΔR@1", delta)
        node = out if len(groups) == 1 else out.setdefault(f"{record['dataset']}/{record['loss']}", {})
        node[key] = round(100 * float(value), 2)
    return out


def write_table(
    paths: Iterable[str | Path],
    files: "TableFiles",
    settings: Mapping[str, Any],
    generation: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The table job: the summary (CSV and markdown), the full table (CSV and JSON), DVC's headline metrics
    and the recall figure, from the runs under ``paths`` (and the generation report, for the cost)."""
    runs = collect(paths)
    table = aggregate(runs, settings)
    confidence = float(settings["confidence"])
    brief = summary(table, runs, generation)
    payload = {"table": nested(in_points(table), IDENTITY), "runs": nested(in_points(runs_frame(runs)), [*IDENTITY, "seed"])}
    plot_recall(table, files.figure, confidence=confidence)
    from dmlsynth.figures import plot_training_loss

    plot_training_loss(runs, files.training_loss, controls=[run.method for run in runs if run.control is None])
    atomic_write_text(files.json, json.dumps(payload, indent=2) + "\n")
    atomic_write_text(files.headline, json.dumps(headline_metrics(table), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(files.csv, table_csv(table))
    atomic_write_text(files.summary_csv, summary_csv(brief))
    brief_text = summary_markdown(brief, confidence, float(settings["alpha"])) + _isa_line(table) + "\n"
    atomic_write_text(files.summary_md, brief_text)
    atomic_write_text(files.summary_html, html_pages.from_markdown("Results in brief", brief_text))
    atomic_write_text(files.table_html, html_pages.from_frame("Results table", in_points(table), TABLE_UNITS, "{:.2f}"))
    return table


def plot_recall(table: pd.DataFrame, out: str | Path, metric: str = "recall@1", confidence: float = 0.95) -> None:
    """Per dataset and loss, two panels: each row's R@1 (mean over seeds, interval) on an axis zoomed to the
    values — marked as such — and each method's paired difference to its control (points, interval), where
    differences of a point or two show.

    The intervals are the t intervals over seeds where a row has two or more seeds (pairs), else the query
    bootstrap's (which covers the test queries only).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    groups = list(table.groupby(["dataset", "loss"], sort=False))
    rows = max(len(part) for _, part in groups)
    fig, axes = plt.subplots(
        len(groups), 2, figsize=(11.0, 1.0 + (0.42 * rows + 0.9) * len(groups)), squeeze=False,
        gridspec_kw={"width_ratios": [1.0, 1.1]},
    )  # fmt: skip
    level = f"{100 * confidence:g} %"
    for (ax, delta_ax), ((dataset, loss), part) in zip(axes, groups):
        part = part.iloc[::-1]  # first row on top
        y = np.arange(len(part))
        use_t = part["seeds"].to_numpy() >= 2
        mean = 100 * part[f"{metric}_mean"].to_numpy(dtype=float)
        low = 100 * np.where(use_t, part[f"{metric}_ci_low"], part[f"{metric}_boot_low"]).astype(float)
        high = 100 * np.where(use_t, part[f"{metric}_ci_high"], part[f"{metric}_boot_high"]).astype(float)
        controls = part["control"].isna() | (part["control"] == NOT_AVAILABLE)
        colors = np.where(controls, "#8c8c8c", "#4c72b0")
        ax.hlines(y, np.nan_to_num(low, nan=mean), np.nan_to_num(high, nan=mean), color=colors, linewidth=2)
        ax.scatter(mean, y, color=colors, zorder=3, s=22)
        finite = np.concatenate([mean, low[np.isfinite(low)], high[np.isfinite(high)]])
        left, right = max(0.0, finite.min() - 1.5), min(100.0, finite.max() + 1.5)
        ax.set_xlim(left, right)
        ax.set_yticks(y, part["method"])
        ax.set_title(f"{dataset} · {loss}: {metric} (%)", fontsize=10, loc="left")
        ax.set_xlabel(f"axis zoomed to {left:.0f}–{right:.0f} % (not from 0); {level} interval", fontsize=8)
        ax.grid(axis="x", alpha=0.3)

        pairs = use_t[~controls.to_numpy()] if len(part) else use_t
        d = 100 * part[f"{metric}_delta"].to_numpy(dtype=float)
        d_low = 100 * np.where(use_t, part[f"{metric}_delta_ci_low"], part[f"{metric}_delta_boot_low"]).astype(float)
        d_high = 100 * np.where(use_t, part[f"{metric}_delta_ci_high"], part[f"{metric}_delta_boot_high"]).astype(float)
        significant = (part[f"{metric}_significant"] == True).to_numpy()  # noqa: E712 - None/NaN: not tested
        delta_ax.axvline(0, color="#333333", linewidth=0.8)
        shown = np.isfinite(d)
        delta_ax.hlines(y[shown], np.nan_to_num(d_low[shown], nan=d[shown]), np.nan_to_num(d_high[shown], nan=d[shown]), color="#4c72b0", linewidth=2)
        delta_ax.scatter(d[shown], y[shown], s=30, zorder=3, color="#4c72b0", facecolors=np.where(significant[shown], "#4c72b0", "white"))
        for yi, value, control, is_shown in zip(y, d, part["control"], shown):
            label = f"{value:+.1f} vs {control}" if is_shown else "control"
            delta_ax.annotate(label, (1.0, yi), xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                              va="center", fontsize=7, color="#333333" if is_shown else "#8c8c8c")  # fmt: skip
        delta_ax.set_yticks(y, [""] * len(y))
        delta_ax.set_ylim(ax.get_ylim())
        delta_ax.set_title(f"Δ {metric} vs control (points); filled: significant (Holm)", fontsize=10, loc="left")
        delta_ax.set_xlabel(f"paired difference, {level} interval" + ("" if pairs.all() else " (one seed: query bootstrap)"), fontsize=8)
        delta_ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    save_figure(fig, out, dpi=120)
