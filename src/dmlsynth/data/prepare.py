"""Prepare a dataset by its registry entry.

``{paths.data}/{dataset}/manifest.csv`` (+ images) is the result;
downloads, archives and files the user places by hand live in
``{paths.data}/raw/{dataset}/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from dmlsynth import registry
from dmlsynth.config import dataset_settings


def dataset_dir(config: Mapping[str, Any], dataset: str) -> Path:
    return Path(config["paths"]["data"]) / dataset


def prepare_dataset(config: Mapping[str, Any], dataset: str) -> Path:
    spec = registry.DATASETS[dataset]
    out_dir = dataset_dir(config, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_dir = Path(config["paths"]["data"]) / "raw" / dataset
    prepare = registry.load_object(spec.prepare)
    return prepare(dataset_settings(config, dataset), out_dir, raw_dir, logging.getLogger(f"dmlsynth.data.{dataset}"))
