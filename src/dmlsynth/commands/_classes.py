"""What every generation job starts from: the training rows of its dataset, and of one class."""

from __future__ import annotations

from typing import Any

from dmlsynth.errors import DmlsynthError
from dmlsynth.jobs import Job


def training_rows(job: Job):
    """The training classes' images of the job's dataset: the training split less its validation classes
    (data.split chooses them: part of the digest of every job that calls this)."""
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.data.split import split_training

    frame = read_manifest(job.inputs["manifest"])
    train, _ = split_training(frame[frame["split"] == "train"], int(job.params["validation_classes"]))
    return train.reset_index(drop=True)


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
