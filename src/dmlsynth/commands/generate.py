"""``generate``: every image set of one training class."""

from __future__ import annotations

from dmlsynth.commands._classes import class_job
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth.generation.fine_tuning import adapter_settings
    from dmlsynth.generation.generators import load_generator
    from dmlsynth.generation.run import generate_class

    _, labels, label = class_job(job)
    settings, token = job.params["generation"], None
    if "fine_tuned" in job.inputs:  # the class's own LoRA / textual-inversion weights
        settings, token = adapter_settings(settings, job.inputs["fine_tuned"])
    image_sets = list(job.params["image_sets"])
    components = load_generator(settings, job.inputs.get("generator"), image_sets)
    generate_class(
        components, job.inputs["prompts"], label, labels, image_sets, settings, job.outputs["generated"], job.outputs["part"],
        class_token=token, identity=job.identity(),
    )  # fmt: skip
