"""MLflow tracking — the one module that talks to MLflow.

- :func:`track_run`: a run folder mirrored as one MLflow run. One experiment
  per dataset; run name ``{method}/{loss}/seed{seed}``; tags for dataset,
  method, loss, seed, params hash, git commit and code digest; all resolved
  params; the per-epoch training loss and time; the final metrics; the run's
  files as artifacts; its start and end are the training's. Called on a
  finished run folder: by the table job for every run (``tracking.runs:
  with_table``, one MLflow start-up per workflow) or by each evaluation job
  (``as_evaluated``); idempotent, so a re-run adds nothing twice, and
  ``dmlsynth track`` re-syncs folders after tracking trouble.
- :func:`track_table`: one *row run* per dataset x method x loss in the
  dataset's experiment (tags ``dmlsynth.kind = row``, the row's params, its
  mean, paired difference, interval and Holm p as metrics), the parent of its
  seeds' runs, so the UI groups and charts methods; the table's files as the
  ``table`` run of the ``summary`` experiment. :func:`track_generation`: one
  run per dataset x image set x operator of the generation report.
- :func:`tracked`: how jobs call the above — a tracking failure is reported
  (once in the job's log, and once in the Snakemake console at the end of
  the workflow) and never costs a result on disk.

Settings (``tracking`` of params.yaml): ``uri`` (``$MLFLOW_TRACKING_URI``
wins), ``artifacts`` (where a *new* experiment keeps its artifacts; default:
``mlruns/`` beside a local store, the server's choice for a tracking
server), ``timeout`` (seconds a tracking server may take to answer; one
retry). With a local SQLite or file store, writers take a file lock: many
jobs finishing at once never see "database is locked".

MLflow stores an experiment's artifact location as an absolute path. When a
copied or moved project finds its experiments pointing at another folder,
the old experiment is renamed (``digits (artifacts in /old/place)``) with a
warning and a fresh one is made here, so nothing is written into the old
project.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import yaml

from dmlsynth.layout import RunFolder

log = logging.getLogger("dmlsynth.tracking")

KEY_TAG = "dmlsynth.key"
KIND_TAG = "dmlsynth.kind"  # "run" (one seed's training), "row" (a table row: its seeds' parent)
PARENT_TAG = "mlflow.parentRunId"  # MLflow UI nests a run under the run of this id
HASH_TAG = "dmlsynth.params_hash"
SUPERSEDED_TAG = "dmlsynth.superseded"
# The workflow points jobs at a folder where each failed tracking call leaves a note; the
# Snakefile prints them once at the end, so failures are not hidden in per-job logs.
FAILURES_VARIABLE = "DMLSYNTH_TRACKING_FAILURES"


@dataclass(frozen=True)
class TrackingSettings:
    enabled: bool
    uri: str
    artifacts: str | None  # artifact root of new experiments (absolute); None: the tracking server's default
    timeout: float


def settings(config: Mapping[str, Any]) -> TrackingSettings:
    """The ``tracking`` block of a validated config (its defaults filled), ``$MLFLOW_TRACKING_URI`` over its uri."""
    values = config["tracking"]
    uri = os.environ.get("MLFLOW_TRACKING_URI") or str(values["uri"])
    return TrackingSettings(
        enabled=bool(values["enabled"]), uri=uri, artifacts=artifact_root(uri, values["artifacts"]), timeout=float(values["timeout"])
    )


def of_uri(uri: str) -> TrackingSettings:
    """The settings of a store given by its URI alone (a run tracked by hand): the other keys' defaults."""
    from dmlsynth import defaults

    return settings({"tracking": defaults.block("tracking", {"uri": uri})})


def artifact_root(uri: str, artifacts: str | None) -> str | None:
    """Where new experiments keep artifacts: ``artifacts`` (relative to the working directory, like
    the store), else the ``mlruns`` folder beside a local store, else the server's default (None)."""
    if artifacts:
        return artifacts if "://" in artifacts else str(Path(artifacts).resolve())
    store = _local_store_path(uri)
    return str(store.resolve().parent / "mlruns") if store is not None else None


def metric_name(key: str) -> str:
    """MLflow metric names allow no '@': recall@1 -> recall_at_1."""
    return key.replace("@", "_at_")


# Retrieval metrics (and their per-epoch validation twins) go to MLflow in %, as every results file says them;
# their names end in ``_pct`` (a value in %) or ``_pp`` (a difference in percentage points) so a chart says its unit.
# The names of dmlsynth.metrics.METRIC_KEYS (a test keeps them in line; not imported: that module loads faiss,
# and the Snakefile imports this one).
PERCENT_METRICS = re.compile(r"recall@\d+|map@r|r_precision|nmi")


def percent_name(key: str) -> str | None:
    """The MLflow name of a retrieval metric in % (``recall@1`` -> ``recall_at_1_pct``, ``val_map@r`` ->
    ``val_map_at_r_pct``); None for a number that is not one (seconds, counts)."""
    base = key.removeprefix("val_").removeprefix("last_epoch.")
    return f"{metric_name(key).replace('.', '_')}_pct" if PERCENT_METRICS.fullmatch(base) else None


def _local_store_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    if uri.startswith("file:"):
        return Path(uri[len("file:") :].lstrip("/") if uri.startswith("file:./") else uri[len("file://") :])
    if "://" not in uri:
        return Path(uri)
    return None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise writers of a local store (SQLite allows one writer; schema creation must run once)."""
    path = _local_store_path(uri)
    if path is None:
        with nullcontext():
            yield
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=600):
        yield


def _client(tracking: TrackingSettings):
    # A tracking server that does not answer must not stall every job for minutes (MLflow's
    # defaults: 120 s per request, 7 retries with back-off). The user's own settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(round(tracking.timeout)))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking.uri)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _local_path(location: str) -> Path | None:
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    if "://" not in location:
        return Path(location)
    return None


def _experiment_id(client, name: str, tracking: TrackingSettings) -> str:
    """The id of experiment ``name``, made with this project's artifact root if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        stored = _local_path(experiment.artifact_location)
        wanted = _local_path(tracking.artifacts) if tracking.artifacts else None
        if stored is None or wanted is None or stored.resolve().is_relative_to(wanted.resolve()):
            return experiment.experiment_id
        # The store came along with a copied or moved project: keep the old experiment (renamed),
        # and never write into the other project's artifact folder.
        aside = f"{name} (artifacts in {stored})"
        log.warning(
            "MLflow experiment %r keeps its artifacts in %s, outside this project's %s (the project was copied or "
            "moved); renamed it to %r and tracking into a new experiment %r here",
            name, stored, wanted, aside, name,
        )  # fmt: skip
        client.rename_experiment(experiment.experiment_id, aside)
    location = tracking.artifacts.rstrip("/") + f"/{_safe(name)}" if tracking.artifacts else None
    return client.create_experiment(name, artifact_location=location)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _milliseconds(seconds: Any) -> int | None:
    """Unix seconds (run.yaml, train_log.csv) as MLflow's milliseconds; None when not recorded."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return None
    return int(round(value * 1000)) if math.isfinite(value) else None


def _source_tags(job: str, code: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What the UI shows as a run's User and Source (MLflow's fluent API sets these; the client does not)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container without a passwd entry
        user = "unknown"
    project = (code or {}).get("project_dir") or str(Path.cwd())
    tags = {"mlflow.user": user, "mlflow.source.name": f"{project}/Snakefile (rule {job})", "mlflow.source.type": "JOB"}
    if code and code.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(code["git_commit"])
    return tags


def _log_json_artifact(client, run_id: str, name: str, payload: Mapping[str, Any]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        client.log_artifact(run_id, str(path))


def _log_training_set(client, run_id: str, record: Mapping[str, Any]) -> None:
    """The run's training images as MLflow dataset inputs (its Datasets column): the manifest, and the generated set."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag

    inputs = record.get("inputs") or {}
    datasets = []
    for context, key in (("training", "manifest"), ("generated", "synthetic_manifest")):
        path = inputs.get(key)
        if not path or not Path(path).is_file():
            continue
        frame = pd.read_csv(path)
        if "split" in frame.columns:
            frame = frame[frame["split"] == "train"]
        name = f"{record['params']['dataset']} {context}" + (f" ({Path(path).parent.name})" if context == "generated" else "")
        dataset = mlflow.data.from_pandas(frame, source=str(Path(path).resolve()), name=name)
        datasets.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    if datasets:
        client.log_inputs(run_id, datasets=datasets)


def _run_key(params: Mapping[str, Any]) -> str:
    return f"{params['dataset']}/{params.get('label', params['method'])}/{params['loss']}/seed{params['seed']}"


def _find_or_create(client, experiment_id: str, key: str, run_name: str, tags: Mapping[str, str]):
    existing = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
    if existing:
        return existing[0]
    return client.create_run(experiment_id, run_name=run_name, tags={KEY_TAG: key, **tags})


def track_run(run_dir: str | Path, tracking: TrackingSettings | str) -> str:
    """Create or complete the MLflow run of a run folder; return its run id."""
    from mlflow.entities import Metric, Param

    if isinstance(tracking, str):
        tracking = of_uri(tracking)
    folder = RunFolder(str(run_dir))
    if not Path(folder.record).is_file():
        raise FileNotFoundError(f"{folder.record} does not exist: {run_dir} is not a finished training run")
    record = yaml.safe_load(Path(folder.record).read_text())
    params, params_hash = record["params"], record["params_hash"]
    key = _run_key(params)

    with store_lock(tracking.uri):
        client = _client(tracking)
        experiment_id = _experiment_id(client, params["dataset"], tracking)
        previous = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
        current = [r for r in previous if r.data.tags.get(HASH_TAG) == params_hash]
        for old in previous:
            if old.data.tags.get(HASH_TAG) != params_hash and old.data.tags.get(SUPERSEDED_TAG) != "true":
                client.set_tag(old.info.run_id, SUPERSEDED_TAG, "true")
        if current:
            run = current[0]
        else:
            code = record["code"]
            environment = record.get("environment") or {}
            tags = {
                KEY_TAG: key,
                KIND_TAG: "run",
                HASH_TAG: params_hash,
                "dataset": params["dataset"],
                # The table's row (a method, or a control such as baseline+beta=40) and what it is compared with.
                "method": str(params.get("label", params["method"])),
                "control": str(params.get("control") or ""),
                "loss": params["loss"],
                "seed": str(params["seed"]),
                # What changes numbers without being a param; the rest of the environment is environment.json.
                "threads": str(record.get("threads", environment.get("torch.threads", ""))),
                "device": str(record.get("device", environment.get("device", ""))),
                "git_dirty": str(code["git_dirty"]),
                **({"dmlsynth.code_digest": code["digest"]} if "digest" in code else {}),
                # The plugin entries the run uses and their distributions' versions (dmlsynth.plugins).
                **{f"dmlsynth.plugin.{entry}": version for entry, version in (code.get("plugins") or {}).items()},
                **_source_tags("train", code),
            }
            run = client.create_run(
                experiment_id, run_name=f"{params.get('label', params['method'])}/{params['loss']}/seed{params['seed']}",
                tags=tags, start_time=_milliseconds(record.get("started")),
            )
            client.log_batch(
                run.info.run_id, params=[Param(k, v[:6000]) for k, v in sorted(flatten(params).items())]
            )
            _log_json_artifact(client, run.info.run_id, "environment.json", environment)
            _log_training_set(client, run.info.run_id, record)
            run = client.get_run(run.info.run_id)
        run_id = run.info.run_id
        logged = run.data.metrics

        metrics: list[Metric] = []
        # Metrics carry the time they were made: each epoch's when it ended, the final ones when training did.
        finished = _milliseconds(record.get("finished")) or int(time.time() * 1000)
        if "train_loss" not in logged and Path(folder.history).is_file():
            history = pd.read_csv(folder.history)
            # Validation classes' metrics per epoch too, when the run has them (val_recall@1, val_map@r).
            validation = [c for c in history.columns if c.startswith("val_")]
            for row in history.to_dict(orient="records"):
                step = int(row["epoch"])
                when = _milliseconds(row.get("time")) or finished
                metrics.append(Metric("train_loss", float(row["loss"]), when, step))
                metrics.append(Metric("epoch_seconds", float(row["seconds"]), when, step))
                metrics.append(Metric("lr", float(row["lr"]), when, step))
                metrics.extend(Metric(percent_name(c) or metric_name(c), _percent_value(c, row[c]), when, step) for c in validation)
        finals = {f"wall_seconds_{k}": float(v) for k, v in (record.get("wall_seconds") or {}).items()}
        if record.get("validation"):
            finals["chosen_epoch"] = float(record["validation"]["chosen_epoch"])
        if Path(folder.metrics).is_file():
            evaluation = json.loads(Path(folder.metrics).read_text())
            finals.update(
                {percent_name(k) or metric_name(k): _percent_value(k, v) for k, v in evaluation.items() if isinstance(v, (int, float))}
            )
        for name, value in finals.items():
            if math.isfinite(value) and logged.get(name) != value:
                metrics.append(Metric(name, value, finished, 0))
        for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
            client.log_batch(run_id, metrics=metrics[start : start + 900])
        for file in [folder.record, folder.history, folder.metrics, folder.training_curve, folder.embedding_plot]:
            if Path(file).is_file():
                client.log_artifact(run_id, file)
        # The run lasts as long as its training did (not until its evaluation job tracked it).
        client.set_terminated(run_id, "FINISHED", end_time=finished)
    return run_id


def _percent_value(key: str, value: Any) -> float:
    return 100.0 * float(value) if percent_name(key) else float(value)


# What a row run logs per metric, in the order MLflow's chart view should show it. MLflow orders the charts by
# name, so every name of a difference starts with ``delta_`` and sorts before the means (``<metric>_pct``): the
# charts of the row runs open on the paired differences, in points, beside their intervals and significance.
ROW_COMPARED = ("recall@1", "map@r")
ROW_METRICS = {
    # table column suffix: (MLflow name pattern, scale)
    "delta": ("delta_{m}_pp", 100.0),
    "delta_ci_low": ("delta_{m}_pp_ci_low", 100.0),
    "delta_ci_high": ("delta_{m}_pp_ci_high", 100.0),
    "delta_boot_low": ("delta_{m}_pp_boot_low", 100.0),
    "delta_boot_high": ("delta_{m}_pp_boot_high", 100.0),
    "p_holm": ("delta_{m}_test_p_holm", 1.0),  # "_test": sorts after the difference and its intervals
    "significant": ("delta_{m}_significant", 1.0),
    "mean": ("{m}_pct", 100.0),
    "ci_low": ("{m}_pct_ci_low", 100.0),
    "ci_high": ("{m}_pct_ci_high", 100.0),
}


def row_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A table row's numbers as its row run logs them: differences and intervals in points, means in %, the
    Holm p and significance (1/0) of each difference; values that do not exist (a control's delta) are left out.
    The table has bounded the intervals to the metric's range already."""
    out: dict[str, float] = {}
    for name in ROW_COMPARED:
        for stat, (pattern, scale) in ROW_METRICS.items():
            value = record.get(f"{name}_{stat}")
            if value is None or isinstance(value, str) or value != value:  # absent, 'n/a' or NaN
                continue
            out[pattern.format(m=metric_name(name))] = scale * float(value)
    return out


def _row_children(client, experiment_id: str, method: str, loss: str, hashes: set[str]) -> list:
    """The seed runs of one table row: its method's and loss's runs whose params hash is one of the row's runs'
    (another loss of the method, and runs of other params — superseded, or of seeds the row no longer has — are not)."""
    candidates = client.search_runs(
        [experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'run' and tags.method = '{method}' and tags.loss = '{loss}'"
    )
    return [r for r in candidates if r.data.tags.get(HASH_TAG) in hashes]


def track_table(tracking: TrackingSettings, files: Sequence[str | Path], table: pd.DataFrame, experiment: str = "summary") -> str:
    """One row run per table row, parent of its seeds' runs; the table's files as the ``table`` run of ``experiment``.

    A row run is keyed on its dataset, method and loss: a rebuilt table updates it (MLflow shows a metric's
    latest value). Returns the ``table`` run's id.
    """
    from mlflow.entities import Metric, Param

    with store_lock(tracking.uri):
        client = _client(tracking)
        now = int(time.time() * 1000)
        for record in table.to_dict(orient="records"):
            dataset, method, loss = record["dataset"], record["method"], record["loss"]
            experiment_id = _experiment_id(client, dataset, tracking)
            control = record.get("control")
            control = control if isinstance(control, str) and control != "n/a" else ""
            # A row made of other runs (other seeds, params or code) is a new row run; the old one is marked.
            runs_hash = hashlib.sha256(str(record.get("params_hashes", "")).encode()).hexdigest()[:12]
            key = f"row/{dataset}/{method}/{loss}/{runs_hash}"
            for old in client.search_runs(
                [experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'row' and tags.method = '{method}' and tags.loss = '{loss}'"
            ):
                if old.data.tags.get(KEY_TAG) != key and old.data.tags.get(SUPERSEDED_TAG) != "true":
                    client.set_tag(old.info.run_id, SUPERSEDED_TAG, "true")
            hashes = {h for h in str(record.get("params_hashes", "")).split(";") if h}
            children = _row_children(client, experiment_id, method, loss, hashes)
            # The row run lasts as long as its seeds' training did: from the first seed's start to the last one's end.
            starts = [c.info.start_time for c in children if c.info.start_time]
            ends = [c.info.end_time for c in children if c.info.end_time]
            existing = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
            run = existing[0] if existing else client.create_run(
                experiment_id, run_name=f"{method}/{loss}", start_time=min(starts) if starts else None,
                tags={KEY_TAG: key, KIND_TAG: "row", "dataset": dataset, "method": method, "loss": loss, "control": control,
                      **_source_tags("table")},
            )  # fmt: skip
            run_id = run.info.run_id
            if not run.data.params:
                params = {"seeds": record["seeds"], "control": control or "none (a control)", "test": record["test"]}
                params.update({k: record[k] for k in ("optimisation_steps", "batch_size", "threads", "device") if k in record})
                client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            metrics = [Metric(name, value, now, 0) for name, value in row_metrics(record).items()]
            client.log_batch(run_id, metrics=metrics)
            # The seeds' runs (made by the training jobs) nest under their row.
            for child in children:
                if child.data.tags.get(PARENT_TAG) != run_id:
                    client.set_tag(child.info.run_id, PARENT_TAG, run_id)
            client.set_terminated(run_id, "FINISHED", end_time=max(ends) if ends and starts else None)
        table_run = _find_or_create(client, _experiment_id(client, experiment, tracking), "table", "table", _source_tags("table")).info.run_id
        for file in files:
            if Path(file).is_file():
                client.log_artifact(table_run, str(file))
        client.set_terminated(table_run, "FINISHED")
    return table_run


def track_generation(
    tracking: TrackingSettings, table: pd.DataFrame, figures: Mapping[str, str | Path], report: str | Path, experiment: str = "generation"
) -> None:
    """One run per dataset x image set x operator of the generation report: tags, quality metrics, files."""
    with store_lock(tracking.uri):
        client = _client(tracking)
        experiment_id = _experiment_id(client, experiment, tracking)
        for row in table.to_dict("records"):
            key = f"generation/{row['dataset']}/{row['image_set']}/{row['operator']}"
            run_id = _find_or_create(client, experiment_id, key, key.removeprefix("generation/"), {}).info.run_id
            for name in ("dataset", "image_set", "operator", "generator"):
                client.set_tag(run_id, name, str(row[name]))
            for name, value in row.items():
                if name not in ("dataset", "image_set", "operator", "generator") and isinstance(value, (int, float)):
                    if math.isfinite(float(value)):
                        client.log_metric(run_id, metric_name(str(name)), float(value))
            for file in (report, figures.get(row["dataset"])):
                if file is not None and Path(file).is_file():
                    client.log_artifact(run_id, str(file))
            client.set_terminated(run_id, "FINISHED")


def track_fine_tuning(summary_file: str | Path, tracking: TrackingSettings | str, experiment: str = "fine_tuning") -> str:
    """One run per fine-tuned class (its ``fine_tuning.json``): settings as tags, the loss per step, the seconds.

    A class fine-tuned again with the same params is not logged twice (the run is keyed on its params hash).
    """
    from mlflow.entities import Metric

    if isinstance(tracking, str):
        tracking = of_uri(tracking)
    summary = json.loads(Path(summary_file).read_text())
    key = f"fine_tuning/{summary['dataset']}/{summary['label']}/{summary['params_hash']}"
    with store_lock(tracking.uri):
        client = _client(tracking)
        experiment_id = _experiment_id(client, experiment, tracking)
        run = _find_or_create(client, experiment_id, key, f"{summary['dataset']}/{summary['class_name']}", {})
        run_id = run.info.run_id
        if run.info.status == "FINISHED":
            return run_id
        for name in ("dataset", "label", "class_name", "method", "token", "device", "steps", "images", "resolution"):
            client.set_tag(run_id, name, str(summary[name]))
        now = int(time.time() * 1000)
        metrics = [Metric("loss", float(loss), now, step) for step, loss in enumerate(summary["losses"], start=1)]
        metrics += [
            Metric(name, float(summary[name]), now, 0)
            for name in ("seconds", "seconds_per_step", "final_loss")
            if summary.get(name) is not None
        ]
        for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
            client.log_batch(run_id, metrics=metrics[start : start + 900])
        client.log_artifact(run_id, str(summary_file))
        client.set_terminated(run_id, "FINISHED")
    return run_id


def report_failure(exc: BaseException, what: str, resync: str) -> None:
    """Say clearly that tracking failed, that results are safe, and how to re-sync (log, and a note for the console)."""
    message = (
        f"MLflow tracking failed for {what}: {type(exc).__name__}: {exc}. The results on disk are complete and "
        f"kept. Check the tracking store (MLFLOW_TRACKING_URI or tracking.uri in params.yaml), then run: {resync}"
    )
    log.error("%s", message)
    notes = os.environ.get(FAILURES_VARIABLE)
    if notes:
        folder = Path(notes)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{os.getpid()}-{time.monotonic_ns()}.txt").write_text(message + "\n")


def tracked(config: Mapping[str, Any] | None, what: str, resync: str, call: Callable[[TrackingSettings], Any]) -> bool:
    """Run ``call(settings)`` if tracking is enabled; a failure is reported, never raised. True if it worked."""
    tracking = settings(config)
    if not tracking.enabled:
        return True
    try:
        call(tracking)
        return True
    except Exception as exc:  # noqa: BLE001 - any store failure must leave the results alone
        report_failure(exc, what, resync)
        return False


def track_runs(config: Mapping[str, Any] | None, run_dirs: Sequence[str | Path]) -> bool:
    """Mirror run folders into MLflow; True if every one was tracked."""
    ok = True
    for run_dir in run_dirs:
        ok &= tracked(
            config, str(run_dir), f"dmlsynth track {run_dir}",
            lambda tracking, run_dir=run_dir: log.info("tracked %s as MLflow run %s", run_dir, track_run(run_dir, tracking)),
        )  # fmt: skip
    return ok


def failure_notes(folder: str | Path) -> list[str]:
    """The tracking-failure notes jobs left in ``folder`` (removed once read)."""
    folder = Path(folder)
    notes = []
    for note in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
        notes.append(note.read_text().strip())
        note.unlink(missing_ok=True)
    return notes
