"""``merge_generated``: the kept images of every class of one image set, as the set's manifest."""

from __future__ import annotations

from dmlsynth.commands import log
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth.generation.run import merge_parts

    image_set, out = job.params["image_set"], job.outputs["manifest"]
    frame = merge_parts(job.inputs["parts"], image_set, out)
    log.info("%s: %d images of %d classes -> %s", image_set, len(frame), frame["label"].nunique(), out)
