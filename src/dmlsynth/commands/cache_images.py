"""``cache_images``: the resized JPEG copy of a photo dataset that training reads."""

from __future__ import annotations

from dmlsynth.errors import DmlsynthError
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth.data.image_cache import build_cache

    short_side = int(job.params["short_side"])
    if not short_side:
        raise DmlsynthError(
            f"dataset_settings.{job.params['dataset']}.cache_short_side is 0: {job.params['dataset']} is read without a resized copy"
        )
    print(build_cache(job.inputs["manifest"], short_side, threads=job.threads))
