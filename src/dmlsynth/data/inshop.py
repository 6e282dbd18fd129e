"""In-Shop Clothes Retrieval (DeepFashion, Liu et al., CVPR 2016): 52,712 photos of 7,982 clothing items.

Raw files (the benchmark's ``Img/img.zip`` and ``Eval/list_eval_partition.txt``; both are on Google
Drive only, so there is no default URL: place them in ``{raw_dir}`` or give mirrors with
``dataset_settings.inshop.urls.{images,partition}``). No md5 is published for them: a copy is used
unchecked (with a warning that prints its md5) unless ``dataset_settings.inshop.md5`` pins it, and the
counts below are always checked.

``list_eval_partition.txt``: the image count, the header ``image_name item_id evaluation_status``, then
one line per image (``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train``).

Protocol (the official one, and every paper's): the 3,997 items with status ``train`` (25,882 images)
train; the other 3,985 items are tested by **query/gallery retrieval**: each of the 14,218 ``query``
images is searched among the 12,612 ``gallery`` images only (not leave-one-out). The manifest keeps
``split`` train/test and gives every test image its role in the ``retrieval`` column.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import pandas as pd

from dmlsynth import layout
from dmlsynth.data.download import fetch
from dmlsynth.data.manifest import write_manifest
from dmlsynth.data.sources import (
    DatasetError,
    RawFile,
    check_counts,
    check_images,
    log_summary,
    resolve_sources,
    staged_extraction,
)

DATASET = "inshop"
# No public URL that a script can download from and no published md5 (see the module docstring).
FILES = {
    "images": RawFile("img.zip", None, None),
    "partition": RawFile("list_eval_partition.txt", None, None),
}
EXPECTED = {
    "images": 52_712, "classes": 7_982, "train_images": 25_882, "test_images": 28_760,
    "train_classes": 3_997, "query_images": 14_218, "gallery_images": 12_612,
}  # fmt: skip
STATUSES = ("train", "query", "gallery")


def prepare(settings: Mapping[str, Any], out_dir: Path, raw_dir: Path, log: logging.Logger) -> Path:
    out_dir, raw_dir = Path(out_dir), Path(raw_dir)
    sources = resolve_sources(DATASET, settings, FILES, EXPECTED)
    manifest = out_dir / layout.MANIFEST
    manifest.unlink(missing_ok=True)
    paths = {
        key: fetch(
            sources.urls[key],
            raw_dir / sources.filenames[key],
            sources.md5[key],
            config_key=f"dataset_settings.{DATASET}.urls.{key}",
        )
        for key in ("partition", "images")  # the small file first: a wrong setup shows up before 1.2 GB
    }
    frame = read_partition(paths["partition"])
    check_counts(DATASET, frame, sources.expected, paths["partition"].name)
    log.info("extracting %s", paths["images"])
    with staged_extraction(paths["images"], out_dir) as staging:
        missing = [p for p in frame["path"] if not (staging / p).is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} image(s) listed in {paths['partition'].name} are not in {paths['images'].name}, e.g. "
                f"{missing[0]}: the files do not belong together or the archive is incomplete. Delete them and run "
                "again, or replace them with the original files."
            )
        check_images((staging / p for p in frame["path"]), staging)
    frame["path"] = [f"{layout.EXTRACTED}/{p}" for p in frame["path"]]
    log_summary(log, DATASET, frame)
    return write_manifest(frame, manifest)


def item_label(item: str, source: str) -> int:
    """``id_00000002`` -> 2."""
    digits = item.removeprefix("id_")
    if not digits.isdigit():
        raise DatasetError(f"{source}: item id {item!r} is not of the form id_<number>")
    return int(digits)


def read_partition(path: Path) -> pd.DataFrame:
    """The manifest frame of ``list_eval_partition.txt``: split train/test and every test image's retrieval role."""
    source = path.name
    try:
        lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not a text file ({exc}); it is not In-Shop's list_eval_partition.txt") from exc
    if len(lines) < 2 or lines[1] != ["image_name", "item_id", "evaluation_status"]:
        raise DatasetError(
            f"{path} does not start with the image count and the header 'image_name item_id evaluation_status': it is "
            "not In-Shop's list_eval_partition.txt"
        )
    rows = []
    for fields in lines[2:]:
        if len(fields) != 3 or fields[2] not in STATUSES:
            raise DatasetError(f"{source}: malformed line (expected '<image> <item> train|query|gallery'): {' '.join(fields)!r}")
        image, item, status = fields
        parts = PurePosixPath(image).parts
        if image.startswith("/") or ".." in parts:
            raise DatasetError(f"{source}: an image path points outside the image folder: {image!r}")
        category = " ".join(parts[1:3]) if len(parts) > 3 else "clothing"
        rows.append(
            {
                "path": image,
                "label": item_label(item, source),
                "class_name": f"{category} {item}",
                "split": "train" if status == "train" else "test",
                "retrieval": None if status == "train" else status,
            }
        )
    if lines[0][0].isdigit() and int(lines[0][0]) != len(rows):
        raise DatasetError(f"{source} says it lists {lines[0][0]} images but lists {len(rows)}: the file is incomplete")
    frame = pd.DataFrame(rows)
    shared = set(frame.loc[frame.split == "train", "label"]) & set(frame.loc[frame.split == "test", "label"])
    if shared:
        raise DatasetError(f"{source}: items {sorted(shared)[:5]} are both training and test items; the split must be class-disjoint")
    return frame
