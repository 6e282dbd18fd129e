"""``evaluate``: a run's test metrics, the per-query results behind them and its plots (then, with
``tracking.runs: as_evaluated``, its MLflow run)."""

from __future__ import annotations

from pathlib import Path

from dmlsynth.commands import log, remove_stale, tracked
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth.evaluation import evaluate_run

    remove_stale(job)
    run_dir = Path(job.outputs["metrics"]).parent
    metrics = evaluate_run(run_dir, ks=job.params["ks"])
    log.info("metrics: %s", metrics)
    if job.params["tracking"]["runs"] == "as_evaluated":
        from dmlsynth import tracking

        tracked(job, str(run_dir), f"dmlsynth track {run_dir}", lambda settings: tracking.track_run(run_dir, settings))
