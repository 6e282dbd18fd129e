"""A dataset from a CSV of image paths and labels (a *manifest dataset*).

A dataset entry whose ``prepare`` is :func:`prepare` (a plugin's ``DatasetSpec``, docs/extending.md) reads
the CSV ``dataset_settings.<name>.path``: a ``path`` column (relative to the CSV's folder, or absolute) and
a ``label`` column (the class: its name or id), and optionally ``split`` (``train``/``test``: the zero-shot
split; without it, the built-in datasets' rule: the classes sorted, numbers by value, the first half train) and ``retrieval``
(``query``/``gallery`` for each test image of a query/gallery benchmark). The images are copied into the
dataset's folder. The checks of :mod:`dmlsynth.data.image_folder` apply, and a path listed twice or a class
given both splits stops it with the rows to fix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from dmlsynth.data.image_folder import ImageFolderError, write_copied
from dmlsynth.data.manifest import RETRIEVAL_ROLES, SPLITS, class_disjoint_split

REQUIRED = ("path", "label")


def read(csv: Path) -> pd.DataFrame:
    """The CSV's rows with an absolute ``file`` and the class as ``class_name``; its values checked."""
    if not csv.is_file():
        raise ImageFolderError(f"manifest {csv} does not exist: set dataset_settings.<dataset>.path to the CSV")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [column for column in REQUIRED if column not in frame.columns]
    if missing:
        raise ImageFolderError(f"manifest {csv} lacks the columns {missing}: it needs path and label (and may have split, retrieval)")
    for column, allowed in (("split", SPLITS), ("retrieval", RETRIEVAL_ROLES)):
        if column in frame.columns:
            wrong = sorted(set(frame[column]) - set(allowed) - ({""} if column == "retrieval" else set()))
            if wrong:
                raise ImageFolderError(f"manifest {csv}: column {column} has {wrong}; allowed: {', '.join(allowed)}")
    frame["file"] = [(csv.parent / p).resolve() for p in frame["path"]]
    frame["class_name"] = frame["label"]
    return frame


def frame_of(settings: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The rows of the CSV ``settings['path']`` as :func:`write_copied` takes them, and what they are (for messages)."""
    if not settings.get("path"):
        raise ImageFolderError("this dataset is a CSV of images: set dataset_settings.<dataset>.path to it")
    csv = Path(settings["path"]).expanduser()
    frame = read(csv)
    names = sorted(frame["class_name"].unique(), key=lambda n: (len(n), n) if n.isdigit() else (float("inf"), n))
    frame["label"] = frame["class_name"].map({name: index for index, name in enumerate(names)})
    if "split" not in frame.columns:
        frame["split"] = frame["label"].map(class_disjoint_split(frame["label"]))
    if "retrieval" in frame.columns:
        frame["retrieval"] = frame["retrieval"].where(frame["split"] == "test", "")
        roleless = frame.loc[(frame["split"] == "test") & (frame["retrieval"] == ""), "path"]
        if len(roleless):
            raise ImageFolderError(
                f"manifest {csv}: {len(roleless)} test images have no retrieval role, e.g. {roleless.iloc[0]}: "
                "give each test image query or gallery, or drop the retrieval column"
            )
    frame["key"] = frame["file"].astype(str)
    frame["target"] = [f"{label}/{index:06d}{file.suffix.lower()}" for index, (label, file) in enumerate(zip(frame["label"], frame["file"]))]
    return frame, f"manifest {csv}"


def prepare(settings: Mapping[str, Any], out_dir: Path, raw_dir: Path, log: logging.Logger) -> Path:
    """Copy the images the CSV ``settings['path']`` lists into ``out_dir`` and write the manifest (last)."""
    del raw_dir  # nothing to download
    frame, what = frame_of(settings)
    return write_copied(frame, what, out_dir, log)
