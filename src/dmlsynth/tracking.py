"""MLflow tracking: every run folder mirrored as one MLflow run.

One experiment per dataset; run name ``{method}/{loss}/seed{seed}``; tags for
dataset, method, loss, seed, params hash and git commit; all resolved params;
the per-epoch training loss and time; the final metrics; the run's files as
artifacts. :func:`track_run` reads everything from the run folder and is
idempotent: the training job calls it, the evaluation job calls it again and
adds the metrics, a re-run adds nothing twice, and ``dmlsynth track`` can
re-sync a folder after tracking trouble.

The store is ``$MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` of the
config (default ``sqlite:///mlflow.db`` in the workflow folder). With a local
SQLite or file store, writers take a file lock: many jobs finishing at once
never see "database is locked", and find-or-create cannot race into
duplicates.
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd
import yaml

log = logging.getLogger("dmlsynth.tracking")

DEFAULT_URI = "sqlite:///mlflow.db"
KEY_TAG = "dmlsynth.key"
HASH_TAG = "dmlsynth.params_hash"
ARTIFACTS = ("run.yaml", "train_log.csv", "metrics.json", "train_curve.png", "embeddings.png")


class TrackingError(RuntimeError):
    """The tracking store could not be written; results on disk are unaffected."""


def tracking_uri(config: Mapping[str, Any] | None = None) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return ((config or {}).get("tracking") or {}).get("uri", DEFAULT_URI)


def tracking_enabled(config: Mapping[str, Any] | None) -> bool:
    return bool(((config or {}).get("tracking") or {}).get("enabled", True))


def metric_name(key: str) -> str:
    """MLflow metric names allow no '@': recall@1 -> recall_at_1."""
    return key.replace("@", "_at_")


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


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name)


def _run_key(params: Mapping[str, Any]) -> str:
    return f"{params['dataset']}/{params['method']}/{params['loss']}/seed{params['seed']}"


def track_run(run_dir: str | Path, uri: str) -> str:
    """Create or complete the MLflow run of a run folder; return its run id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir)
    record_file = run_dir / "run.yaml"
    if not record_file.is_file():
        raise FileNotFoundError(f"{record_file} does not exist: {run_dir} is not a finished training run")
    record = yaml.safe_load(record_file.read_text())
    params, params_hash = record["params"], record["params_hash"]
    key = _run_key(params)

    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, params["dataset"])
        previous = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
        current = [r for r in previous if r.data.tags.get(HASH_TAG) == params_hash]
        for old in previous:
            if old.data.tags.get(HASH_TAG) != params_hash and old.data.tags.get("dmlsynth.superseded") != "true":
                client.set_tag(old.info.run_id, "dmlsynth.superseded", "true")
        if current:
            run = current[0]
        else:
            tags = {
                KEY_TAG: key,
                HASH_TAG: params_hash,
                "dataset": params["dataset"],
                "method": params["method"],
                "loss": params["loss"],
                "seed": str(params["seed"]),
                "mlflow.source.git.commit": record["code"]["git_commit"],
                "git_dirty": str(record["code"]["git_dirty"]),
                **{f"env.{k}": str(v) for k, v in record["environment"].items()},
            }
            run = client.create_run(
                experiment_id, run_name=f"{params['method']}/{params['loss']}/seed{params['seed']}", tags=tags
            )
            client.log_batch(
                run.info.run_id, params=[Param(k, v[:6000]) for k, v in sorted(flatten(params).items())]
            )
            run = client.get_run(run.info.run_id)
        run_id = run.info.run_id
        logged = run.data.metrics

        metrics: list[Metric] = []
        now = 0
        if "train_loss" not in logged and (run_dir / "train_log.csv").is_file():
            history = pd.read_csv(run_dir / "train_log.csv")
            for row in history.itertuples(index=False):
                step = int(row.epoch)
                metrics.append(Metric("train_loss", float(row.loss), now, step))
                metrics.append(Metric("epoch_seconds", float(row.seconds), now, step))
                metrics.append(Metric("lr", float(row.lr), now, step))
        finals = {f"wall_seconds_{k}": float(v) for k, v in (record.get("wall_seconds") or {}).items()}
        if (run_dir / "metrics.json").is_file():
            evaluation = json.loads((run_dir / "metrics.json").read_text())
            finals.update({metric_name(k): float(v) for k, v in evaluation.items()})
        for name, value in finals.items():
            if math.isfinite(value) and logged.get(name) != value:
                metrics.append(Metric(name, value, now, 0))
        for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
            client.log_batch(run_id, metrics=metrics[start : start + 900])
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        client.set_terminated(run_id, "FINISHED")
    return run_id


def track_summary(files: list[str | Path], uri: str, experiment: str = "summary") -> str:
    """Log the results table (and its figure) as the one ``table`` run of the summary experiment."""
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, experiment)
        existing = client.search_runs([experiment_id], filter_string="tags.`dmlsynth.key` = 'table'")
        run_id = existing[0].info.run_id if existing else client.create_run(
            experiment_id, run_name="table", tags={KEY_TAG: "table"}
        ).info.run_id
        for file in files:
            if Path(file).is_file():
                client.log_artifact(run_id, str(file))
        client.set_terminated(run_id, "FINISHED")
    return run_id


def report_failure(exc: BaseException, what: str, resync: str) -> None:
    """Say clearly that tracking failed, that results are safe, and how to re-sync."""
    log.error(
        "MLflow tracking failed for %s: %s: %s. The results on disk are complete and kept. "
        "Check the tracking store (MLFLOW_TRACKING_URI or tracking.uri in params.yaml), then run: %s",
        what,
        type(exc).__name__,
        exc,
        resync,
    )
