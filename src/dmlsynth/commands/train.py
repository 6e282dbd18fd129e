"""``train``: one training run (dataset x method x loss x seed).

At most one job trains a run folder at a time (:mod:`dmlsynth.run_lock`). Its MLflow run is made later, from the finished run folder: by the table job, or by the run's
evaluation job (``tracking.runs``); a training job never starts MLflow.
"""

from __future__ import annotations

from pathlib import Path

from dmlsynth.commands import remove_stale
from dmlsynth.jobs import Job


def run(job: Job, progress: bool = True) -> None:
    from dmlsynth.contract import gate
    from dmlsynth.run_lock import run_lock
    from dmlsynth.training.loop import train_run
    from dmlsynth.workflow import stop_when_workflow_gone

    run_dir = Path(job.outputs["record"]).parent
    # One job trains a run folder at a time (an orphan of a killed workflow, a second workflow, a command
    # typed by hand): a second one stops here, before it removes or writes anything.
    with run_lock(run_dir):
        remove_stale(job)
        gate(job.params["method"], job.params["loss"])  # a plugin's method keeps the contract before it trains
        train_run(
            job.params, manifest=job.inputs["manifest"], run_dir=run_dir, synthetic_manifest=job.inputs.get("synthetic"),
            threads=job.threads, callbacks=[stop_when_workflow_gone()], progress=progress, identity=job.identity(),
            code_digest=job.code_digest(),
        )  # fmt: skip
