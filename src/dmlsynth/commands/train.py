"""``train``: one training run (dataset x method x loss x seed), then its MLflow run."""

from __future__ import annotations

from pathlib import Path

from dmlsynth.commands import remove_stale, tracked
from dmlsynth.jobs import Job


def run(job: Job, progress: bool = True) -> None:
    from dmlsynth import tracking
    from dmlsynth.training.loop import train_run
    from dmlsynth.workflow import stop_when_workflow_gone

    remove_stale(job)
    run_dir = Path(job.outputs["record"]).parent
    train_run(
        job.params, manifest=job.inputs["manifest"], run_dir=run_dir, synthetic_manifest=job.inputs.get("synthetic"),
        threads=job.threads, callbacks=[stop_when_workflow_gone()], progress=progress,
    )  # fmt: skip
    tracked(job, str(run_dir), f"dmlsynth track {run_dir}", lambda settings: tracking.track_run(run_dir, settings))
