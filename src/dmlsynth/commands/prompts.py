"""``prompts``: the editable per-class prompts file of a dataset (attributes, or captions of training images)."""

from __future__ import annotations

from pathlib import Path

from dmlsynth.commands import log
from dmlsynth.commands._classes import training_rows
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth.generation.prompts import build_prompts, caption_prompts, update_prompts
    from dmlsynth.layout import PROMPTS_REBUILT

    train = training_rows(job)
    manifest, out = Path(job.inputs["manifest"]), Path(job.outputs["prompts"])
    document = build_prompts(job.params["dataset"], train, [manifest.parent, Path(job.outputs["search"])])
    prompts = job.params["prompts"]
    if prompts["source"] == "captions":
        document = caption_prompts(document, train, prompts, int(job.params["seed"]), job.params["device"])
    if update_prompts(document, out, out.with_name(PROMPTS_REBUILT)):
        log.info("prompts of %d classes written to %s", len(document["classes"]), out)
