"""What every per-class generation job starts from."""

from __future__ import annotations

from typing import Any

from dmlsynth.commands import training_rows
from dmlsynth.errors import DmlsynthError
from dmlsynth.jobs import Job


def class_job(job: Job) -> tuple[Any, list[int], int]:
    """(training rows, the sorted training labels, the job's label), with torch on the job's threads."""
    import torch

    torch.set_num_threads(max(1, job.threads))
    train = training_rows(job)
    labels = sorted(int(l) for l in train["label"].unique())
    index = int(job.params["class_index"])
    if not 0 <= index < len(labels):
        raise DmlsynthError(f"class index {index} out of range: {job.params['dataset']} has {len(labels)} training classes")
    return train, labels, labels[index]
