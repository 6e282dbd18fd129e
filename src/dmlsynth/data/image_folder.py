"""A dataset from a folder of images, one sub-folder per class (the class name is the folder's name).

A dataset entry whose ``prepare`` is :func:`prepare` (a plugin's ``DatasetSpec``, docs/extending.md)
reads ``dataset_settings.<name>.root``. The zero-shot split is the built-in datasets' rule
(:func:`dmlsynth.data.manifest.class_disjoint_split`): the classes sorted by name, the first half train,
the rest test. The images are copied into the dataset's folder (as every dataset reaches training: files +
manifest), so a later change to ``root`` is seen only when the dataset is prepared again.

Checks, each an :class:`ImageFolderError` saying what to fix, before anything is written: the root
exists and holds class folders; every image opens; no class has fewer than two images (one
has no positive pair); the file names stay distinct; no class is on both sides of the split.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from PIL import Image, UnidentifiedImageError

from dmlsynth import layout
from dmlsynth.data.manifest import class_disjoint_split, write_manifest
from dmlsynth.errors import DmlsynthError
from dmlsynth.io import atomic_directory

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The fewest images of a class: one image has no positive pair, so a class of one teaches nothing and a
# query of it has no right answer. [project definition]: training.m_per_class above it samples with repetition.
MIN_CLASS_IMAGES = 2


class ImageFolderError(DmlsynthError, ValueError):
    """The image folder cannot become a dataset; the message says which files and what to fix."""


def scan(root: Path) -> pd.DataFrame:
    """Every image under ``root``'s class folders: ``file`` (absolute), ``class_name``."""
    if not root.is_dir():
        raise ImageFolderError(f"image folder {root} does not exist: set dataset_settings.<dataset>.root to a folder with one sub-folder per class")
    rows = [
        {"file": file.resolve(), "class_name": folder.name}
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for file in sorted(folder.rglob("*"))
        if file.is_file() and file.suffix.lower() in SUFFIXES
    ]
    if not rows:
        raise ImageFolderError(f"image folder {root} has no class folders with images ({', '.join(SUFFIXES)})")
    return pd.DataFrame(rows)


def unreadable(files: list[Path]) -> list[str]:
    """The files PIL cannot open, each with why."""
    bad = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as exc:
            bad.append(f"{file} ({exc})")
    return bad


def problems(frame: pd.DataFrame, min_class_images: int, open_images: bool = True) -> list[str]:
    """What keeps the scanned ``frame`` (with ``split``) from being a DML dataset, each with its fix
    (``open_images``: also open every image; config validation leaves that to the preparation)."""
    found = []
    bad = unreadable(list(frame["file"])) if open_images else []
    if bad:
        found.append(f"{len(bad)} images cannot be read: {'; '.join(bad[:5])} — delete or re-save them")
    sizes = frame.groupby("class_name").size()
    small = sizes[sizes < min_class_images]
    if len(small):
        listed = ", ".join(f"{name} ({count})" for name, count in small.items())
        found.append(
            f"classes with fewer than {min_class_images} images (no positive pair): {listed} — "
            "add images or remove those class folders"
        )
    # Where two rows would become one file: the same image listed twice, or two names of a class folder
    # that differ only in case or sub-folder (``key``, by the reader).
    keys = frame["key"].astype(str)
    duplicated = sorted(set(keys[keys.duplicated()]))
    if duplicated:
        found.append(f"duplicated paths (or paths that differ only in case or sub-folder): {', '.join(duplicated[:5])} — list or name each image once")
    sides = frame.groupby("class_name")["split"].nunique()
    both = list(sides[sides > 1].index)
    if both:
        found.append(f"classes on both sides of the split: {', '.join(both)} — a class belongs to train or test")
    if frame["split"].nunique() < 2:
        found.append("the split leaves train or test without classes — add class folders (at least 2)")
    return found


def frame_of(settings: Mapping[str, Any]) -> tuple[pd.DataFrame, str]:
    """The images of ``settings['root']`` as the rows :func:`write_copied` takes, and what they are (for messages)."""
    if not settings.get("root"):
        raise ImageFolderError("this dataset is an image folder: set dataset_settings.<dataset>.root to its folder")
    root = Path(settings["root"]).expanduser()
    frame = scan(root)
    names = sorted(frame["class_name"].unique())
    frame["label"] = frame["class_name"].map({name: index for index, name in enumerate(names)})
    frame["split"] = frame["label"].map(class_disjoint_split(frame["label"]))
    frame["key"] = frame["class_name"] + "/" + frame["file"].map(lambda f: f.name.lower())
    frame["target"] = frame["label"].astype(str) + "/" + frame["file"].map(lambda f: f.name)
    return frame, f"image folder {root}"


def prepare(settings: Mapping[str, Any], out_dir: Path, raw_dir: Path, log: logging.Logger) -> Path:
    """Copy the images of ``settings['root']`` into ``out_dir`` and write the manifest (last)."""
    del raw_dir  # nothing to download
    frame, what = frame_of(settings)
    return write_copied(frame, what, out_dir, log)


def write_copied(frame: pd.DataFrame, what: str, out_dir: Path, log: logging.Logger) -> Path:
    """Check ``frame`` (``file``, ``class_name``, ``label``, ``split``, ``key``, ``target``: its path under
    images/), then copy its images into ``out_dir`` and write the manifest last."""
    found = problems(frame, MIN_CLASS_IMAGES)
    if found:
        raise ImageFolderError(f"{what} cannot be used:\n  - " + "\n  - ".join(found))
    out_dir = Path(out_dir)
    with atomic_directory(out_dir / layout.IMAGES) as staging:
        for row in frame.itertuples():
            (staging / row.target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(row.file, staging / row.target)
    frame["path"] = [f"{layout.IMAGES}/{target}" for target in frame["target"]]
    log.info("%s: %d images of %d classes (%d train)", what, len(frame), frame.label.nunique(), (frame.split == "train").sum())
    return write_manifest(frame, out_dir / layout.MANIFEST)
