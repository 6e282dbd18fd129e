"""``train_generator``: the embedded prompt-conditioned diffusion model, trained on the training classes."""

from __future__ import annotations

from dmlsynth.commands._classes import training_rows
from dmlsynth.errors import DmlsynthError
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth import registry
    from dmlsynth.generation.embedded import train_embedded

    generator = job.params["generator"]
    if not registry.GENERATORS[generator].trained_here:
        raise DmlsynthError(f"generation.{job.params['dataset']}.generator is {generator!r}: nothing to train")
    train_embedded(
        training_rows(job), job.outputs["model"], job.params["embedded"], int(job.params["seed"]), job.threads,
        int(job.params["image_size"]), device=job.device, identity=job.identity(),
    )  # fmt: skip
