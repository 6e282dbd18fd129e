"""Datasets declared in params.yaml alone: a folder of class folders, or a CSV of paths and labels.

``dataset_settings.<name>: {source: image_folder, root: DIR}`` (one sub-folder per class, the class name is the
folder's; :mod:`dmlsynth.data.image_folder`) or ``{source: manifest, path: CSV}`` (path, label, optional split
and retrieval columns; :mod:`dmlsynth.data.csv_manifest`) becomes a :class:`~dmlsynth.registry.DatasetSpec`
when the config is validated: once, from the folder's or CSV's contents. Every job gets that spec in its
record (:meth:`dmlsynth.jobs.Job.to_json`), so no job scans the data again.

What the spec takes from the contents: ``num_classes``, ``train_classes`` (the split: the CSV's ``split``
column, else the built-in datasets' rule, the sorted classes' first half train), the images of the smallest
training class (checked against ``training.m_per_class``), and ``contents``, a digest of the listing, which
is part of every job's identity that uses the dataset: an added, removed or changed image re-runs the
preparation and what follows. *[project definition]*: a file counts by its path, size and modification time
(reading every image's bytes at each validation would cost as much as preparing the data); the CSV by its bytes.

The rest comes from ``image_mode`` (``RGB``, the default, or ``L``): photos train ``resnet50`` at 224 pixels
with Stable Diffusion as BLenDeR's generator; grayscale images ``small_cnn`` at 32 pixels with the embedded
generator; BLenDeR's prompts are the class names (``a photo of a <class>``). Each is a default that
``dataset_settings`` / ``generation`` may change as for any dataset.

Checks before anything runs, each naming the dataset and what to fix: the folder or CSV exists; the class
folders hold images; no class has fewer than 2 images; no path is listed twice; no class is on both sides of the
split; both sides have classes. That every image opens is checked when the data is prepared (it reads them all).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from dmlsynth import registry
from dmlsynth.data import csv_manifest, image_folder
from dmlsynth.data.image_folder import MIN_CLASS_IMAGES, ImageFolderError

SOURCES = {"image_folder": image_folder, "manifest": csv_manifest}

# What an image mode defaults to: (backbone, embedding dim, image size, BLenDeR's generator).
MODE_DEFAULTS = {"RGB": ("resnet50", 512, 224, "stable-diffusion"), "L": ("small_cnn", 64, 32, "embedded")}


def contents_digest(frame: pd.DataFrame, settings: Mapping[str, Any]) -> str:
    """The digest of what the dataset's preparation reads: each file's path, size and mtime; the CSV's bytes."""
    digest = hashlib.sha256()
    if settings.get("source") == "manifest":
        digest.update(Path(settings["path"]).expanduser().read_bytes())
    for file in sorted(str(f) for f in frame["file"]):
        stat = Path(file).stat() if Path(file).exists() else None  # a missing file is said by the checks
        digest.update(f"{file}\0{stat.st_size if stat else -1}\0{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()


def resolve(name: str, settings: Mapping[str, Any]) -> registry.DatasetSpec:
    """The spec of the dataset ``settings`` (its ``dataset_settings`` entry) declares; :class:`ImageFolderError`
    saying what to fix when its data cannot be a dataset."""
    source = SOURCES[settings["source"]]
    frame, what = source.frame_of(settings)
    missing = [str(f) for f in frame["file"] if not Path(f).is_file()]
    found = [f"{len(missing)} listed images do not exist, e.g. {missing[0]} — fix their paths"] if missing else []
    found += image_folder.problems(frame, MIN_CLASS_IMAGES, open_images=False)
    if found:
        raise ImageFolderError(f"dataset {name!r} ({what}) cannot be used:\n    - " + "\n    - ".join(found))
    mode = settings.get("image_mode", "RGB")
    backbone, embedding_dim, image_size, generator = MODE_DEFAULTS[mode]
    train = frame[frame["split"] == "train"]
    return registry.DatasetSpec(
        name=name, prepare=f"{source.__name__}:prepare", num_classes=int(frame["label"].nunique()),
        train_classes=int(train["label"].nunique()), image_mode=mode, default_backbone=backbone,
        default_embedding_dim=embedding_dim, default_image_size=image_size,
        description=f"declared in params.yaml: {what} ({len(frame)} images)", default_generator=generator,
        contents=contents_digest(frame, settings), smallest_class=int(train.groupby("label").size().min()),
    )  # fmt: skip


def declare(config: Mapping[str, Any]) -> list[str]:
    """Resolve the datasets ``config`` declares (``dataset_settings.<name>.source``) and runs (``datasets``), and
    declare them in this process (:func:`dmlsynth.registry.declare`); the problems found, as config validation
    lists them. A declared dataset the config does not run is not read (as a built-in one is not prepared)."""
    specs, problems = [], []
    running = config.get("datasets")
    for name, settings in sorted((config.get("dataset_settings") or {}).items()):
        if not isinstance(settings, Mapping) or "source" not in settings:
            continue
        if isinstance(running, list) and name not in running:
            continue
        where = f"  - at dataset_settings.{name}"
        if name in registry.DATASETS:
            problems.append(f"{where}.source: {name!r} is a built-in or plugin dataset; give your dataset another name")
        elif settings["source"] not in SOURCES:
            problems.append(f"{where}.source: {settings['source']!r} is not allowed; allowed values: {', '.join(SOURCES)}")
        elif settings.get("image_mode", "RGB") not in MODE_DEFAULTS:
            problems.append(f"{where}.image_mode: {settings['image_mode']!r} is not allowed; allowed values: RGB, L")
        else:
            try:
                specs.append(resolve(name, settings))
            except (ImageFolderError, OSError) as exc:
                problems.append(f"{where}: {exc}")
    registry.declare(specs)
    return problems
