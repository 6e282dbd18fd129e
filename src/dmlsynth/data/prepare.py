"""Prepare a dataset by its registry entry.

The dataset's manifest (+ images) is the result; downloads, archives and
files the user places by hand live in its raw folder (:mod:`dmlsynth.layout`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from dmlsynth import registry
from dmlsynth.registry import dataset_settings
from dmlsynth.layout import Layout


def prepare_dataset(config: Mapping[str, Any], dataset: str) -> Path:
    spec = registry.DATASETS[dataset]
    layout = Layout.of(config)
    out_dir = Path(layout.dataset_dir(dataset))
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_dir = Path(layout.raw_dir(dataset))
    prepare = registry.load_object(spec.prepare)
    return prepare(dataset_settings(config, dataset), out_dir, raw_dir, logging.getLogger(f"dmlsynth.data.{dataset}"))
