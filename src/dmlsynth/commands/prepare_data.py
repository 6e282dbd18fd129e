"""``prepare_data``: download / extract a dataset and write its manifest (its completeness marker)."""

from __future__ import annotations

from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth.data.prepare import prepare

    print(prepare(job.params["dataset"], job.params["dataset_settings"], job.outputs["dataset_dir"], job.outputs["raw_dir"]))
