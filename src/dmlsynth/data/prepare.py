"""Prepare a dataset by its registry entry.

The dataset's manifest (+ images) is the result; downloads, archives and
files the user places by hand live in its raw folder (:mod:`dmlsynth.layout`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from dmlsynth import registry


def prepare(dataset: str, settings: Mapping[str, Any], out_dir: str | Path, raw_dir: str | Path) -> Path:
    """The ``prepare_data`` job: ``dataset`` prepared into ``out_dir`` (its manifest, written last) from the files
    in ``raw_dir`` (downloaded there when missing), by its registry entry, with its resolved ``settings``."""
    spec = registry.dataset(dataset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_function = registry.load_object(spec.prepare)
    return prepare_function(dict(settings), out_dir, Path(raw_dir), logging.getLogger(f"dmlsynth.data.{dataset}"))


def prepare_dataset(config: Mapping[str, Any], dataset: str) -> Path:
    """By hand (tests, benchmarks): the ``prepare_data`` job of ``dataset`` under ``config``'s paths."""
    from dmlsynth.jobs import Jobs

    job = Jobs(config).prepare_data(dataset)
    return prepare(dataset, job.params["dataset_settings"], job.outputs["dataset_dir"], job.outputs["raw_dir"])
