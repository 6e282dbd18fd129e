"""CUB-200-2011 (Wah et al. 2011): 11,788 bird photos of 200 species.

Raw file: ``CUB_200_2011.tgz`` from the official Caltech data record
(docs/methods.md §1), downloaded to ``{raw_dir}`` and md5-checked before it is
extracted. A mirror is set with ``dataset_settings.cub200.urls.archive``;
a copy placed at ``{raw_dir}/CUB_200_2011.tgz`` by hand is used as is
(after the md5 check).

Outputs in ``{out_dir}``:

- ``extracted/`` the archive's contents (``CUB_200_2011/...``, ``attributes.txt``);
- ``manifest.csv`` class-disjoint split: classes 1-100 train, 101-200 test
  (``train_test_split.txt`` is a classification split and is ignored);
  ``class_name`` is the species name with underscores as spaces
  (``001.Black_footed_Albatross`` -> ``Black footed Albatross``);
- ``class_attributes.csv`` one row per class: ``class_id``, ``class_name``,
  then one column per attribute of ``attributes.txt`` (312, e.g.
  ``has_wing_color::blue``) holding the continuous per-class value of
  ``attributes/class_attribute_labels_continuous.txt`` (percentage of the
  class's images annotated with the attribute, 0-100). Written for the
  prompt builder of BLenDeR.

Everything is checked (image and class counts, every image decodes) in a
staging folder that is renamed to ``extracted/`` only when complete; the
manifest is written last.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import pandas as pd

from dmlsynth import layout
from dmlsynth.io import atomic_write_text
from dmlsynth.data.download import fetch
from dmlsynth.data.manifest import class_disjoint_split, write_manifest
from dmlsynth.data.sources import (
    DatasetError,
    RawFile,
    check_counts,
    check_images,
    log_summary,
    resolve_sources,
    staged_extraction,
)

DATASET = "cub200"
# The published file and counts (docs/methods.md §1: 11,788 images, classes 1-100 train / 101-200 test);
# tests override them through the settings.
FILES = {
    "archive": RawFile(
        "CUB_200_2011.tgz",
        "97eceeb196236b17998738112f37df78",
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    )
}
EXPECTED = {"images": 11_788, "classes": 200, "train_images": 5_864, "test_images": 5_924}

ROOT = "CUB_200_2011"


def prepare(settings: Mapping[str, Any], out_dir: Path, raw_dir: Path, log: logging.Logger) -> Path:
    out_dir, raw_dir = Path(out_dir), Path(raw_dir)
    sources = resolve_sources(DATASET, settings, FILES, EXPECTED)
    manifest = out_dir / layout.MANIFEST
    manifest.unlink(missing_ok=True)  # from here on, no manifest until everything below succeeded
    archive = fetch(
        sources.urls["archive"],
        raw_dir / sources.filenames["archive"],
        sources.md5["archive"],
        config_key=f"dataset_settings.{DATASET}.urls.archive",
    )
    log.info("extracting %s", archive)
    with staged_extraction(archive, out_dir) as staging:
        frame, attributes = read_layout(staging, source=archive.name)
        check_counts(DATASET, frame, sources.expected, archive.name)
        check_images((staging / p for p in frame["path"]), staging)
    frame["path"] = [f"{layout.EXTRACTED}/{p}" for p in frame["path"]]
    atomic_write_text(out_dir / layout.CLASS_ATTRIBUTES, attributes.to_csv(index=False))
    log_summary(log, DATASET, frame)
    return write_manifest(frame, manifest)


def _lines(path: Path, source: str) -> list[list[str]]:
    if not path.is_file():
        raise DatasetError(
            f"{source} has no {path.name} where CUB-200-2011 keeps it ({path}): it is not the CUB-200-2011 archive. "
            "Delete it and run again, or replace it with the original file."
        )
    rows = [line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [" ".join(r) for r in rows if len(r) != 2]
    if bad:
        raise DatasetError(f"{path} has malformed lines (expected '<id> <value>'), e.g. {bad[0]!r}")
    return rows


def class_name(folder: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross``."""
    return re.sub(r"^\d+\.", "", folder).replace("_", " ").strip()


def read_layout(root: Path, source: str = "the archive") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The manifest frame (paths relative to ``root``) and the per-class attribute table of an extracted archive."""
    base = root / ROOT
    images = {int(i): rel for i, rel in _lines(base / "images.txt", source)}
    labels = {int(i): int(c) for i, c in _lines(base / "image_class_labels.txt", source)}
    classes = {int(c): class_name(folder) for c, folder in _lines(base / "classes.txt", source)}
    if set(images) != set(labels):
        raise DatasetError(f"{source}: images.txt and image_class_labels.txt list different image ids")
    unknown = sorted(set(labels.values()) - set(classes))
    if unknown:
        raise DatasetError(f"{source}: image_class_labels.txt uses class ids {unknown[:5]} missing from classes.txt")
    for rel in images.values():
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or ".." in parts:
            raise DatasetError(f"{source}: images.txt lists a path outside the images folder: {rel!r}")
    split = class_disjoint_split(list(labels.values()))
    frame = pd.DataFrame(
        [
            {
                "path": f"{ROOT}/images/{images[i]}",
                "label": labels[i],
                "class_name": classes[labels[i]],
                "split": split[labels[i]],
            }
            for i in sorted(images)
        ]
    )
    missing = [p for p in frame["path"] if not (root / p).is_file()]
    if missing:
        raise DatasetError(
            f"{source}: {len(missing)} image(s) listed in images.txt are not in the archive, e.g. {missing[0]}. "
            "The archive is incomplete: delete it and run again."
        )
    return frame, _attribute_table(root, base, classes, source)


def _attribute_table(root: Path, base: Path, classes: Mapping[int, str], source: str) -> pd.DataFrame:
    # The official archive keeps attributes.txt next to CUB_200_2011/; accept it inside as well.
    candidates = [root / "attributes.txt", base / "attributes.txt", base / "attributes" / "attributes.txt"]
    names_file = next((p for p in candidates if p.is_file()), candidates[0])
    names = [name for _, name in _lines(names_file, source)]
    values_file = base / "attributes" / "class_attribute_labels_continuous.txt"
    if not values_file.is_file():
        raise DatasetError(f"{source} has no {values_file.relative_to(root)}: it is not the CUB-200-2011 archive")
    try:
        values = np.loadtxt(values_file, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{values_file} is not a table of numbers ({exc})") from exc
    if values.shape != (len(classes), len(names)):
        raise DatasetError(
            f"{values_file} is {values.shape[0]}x{values.shape[1]}, expected {len(classes)} classes x "
            f"{len(names)} attributes (attributes.txt)"
        )
    ids = sorted(classes)
    table = pd.DataFrame(values, columns=names)
    table.insert(0, "class_name", [classes[c] for c in ids])
    table.insert(0, "class_id", ids)
    return table
