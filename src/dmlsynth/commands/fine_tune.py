"""``fine_tune``: LoRA and/or a textual-inversion token of one training class, on its real images."""

from __future__ import annotations

from pathlib import Path

from dmlsynth import recovery
from dmlsynth.commands import tracked
from dmlsynth.commands._classes import class_job
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth import tracking
    from dmlsynth.generation.fine_tuning import class_images, fine_tune_class
    from dmlsynth.generation.prompts import read_prompts
    from dmlsynth.layout import FINE_TUNING_SUMMARY
    from dmlsynth.workflow import stop_if_workflow_gone

    train, labels, label = class_job(job)
    dataset, out_dir = job.params["dataset"], Path(job.outputs["weights"])
    entry = read_prompts(job.inputs["prompts"], labels)[label]
    fine_tune_class(
        job.params["generation"], class_images(train, label), entry, dataset, label, out_dir, job.outputs["checkpoint"],
        identity=job.identity(), callbacks=[lambda step: stop_if_workflow_gone(f"step {step}")],
    )  # fmt: skip
    tracked(
        job, f"the fine-tuning of {dataset} class {label}", recovery.remake(out_dir),
        lambda settings: tracking.track_fine_tuning(out_dir / FINE_TUNING_SUMMARY, settings),
    )  # fmt: skip
