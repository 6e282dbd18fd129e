"""``filter_generated``: score one class's generated images and keep each set's budget."""

from __future__ import annotations

from dmlsynth.commands._classes import class_job
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth import registry
    from dmlsynth.generation.filtering import filter_generated

    train, _, _ = class_job(job)
    dataset = job.params["dataset"]
    filter_generated(
        job.params["generation"], registry.dataset(dataset).image_mode, int(job.params["image_size"]),
        bool(job.params["pretrained"]), job.inputs["part"], job.outputs["generated"], job.inputs["prompts"], train,
        job.outputs["part"], threads=job.threads,
    )  # fmt: skip
