"""Cars-196 (Krause et al. 2013): 16,185 car photos of 196 models.

Raw files (the published ones, docs/methods.md §1), both md5-checked:

- ``car_ims.tgz`` (``car_ims/000001.jpg`` ...), setting key ``images``;
- ``cars_annos.mat`` (``annotations``: relative_im_path, bbox, class, test;
  ``class_names``), setting key ``annotations``.

The original Stanford URLs are dead, so there is no default URL: set
mirrors with ``dataset_settings.cars196.urls.{images,annotations}``, or
place the two files in ``{raw_dir}`` (``data/raw/cars196/`` by default).

Outputs in ``{out_dir}``: ``extracted/car_ims/*.jpg`` and ``manifest.csv``
with the class-disjoint split (classes 1-98 train, 99-196 test; the
annotation's ``test`` flag is a classification split and is ignored) and
the model names of ``class_names`` (e.g. ``AM General Hummer SUV 2000``).
Checked in a staging folder that is renamed only when complete; the
manifest is written last.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np
import pandas as pd
import scipy.io
from PIL import Image

from dmlsynth import layout
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

DATASET = "cars196"
# The published files and counts (docs/methods.md §1: 16,185 images, classes 1-98 train / 99-196 test);
# no working public URL is known.
FILES = {
    "images": RawFile("car_ims.tgz", "d5c8f0aa497503f355e17dc7886c3f14", None),
    "annotations": RawFile("cars_annos.mat", "b407c6086d669747186bd1d764ff9dbc", None),
}
EXPECTED = {"images": 16_185, "classes": 196, "train_images": 8_054, "test_images": 8_131}


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
        for key in ("annotations", "images")  # the small file first: a wrong setup shows up before 1.9 GB
    }
    frame = read_annotations(paths["annotations"])
    check_counts(DATASET, frame, sources.expected, paths["annotations"].name)
    log.info("extracting %s", paths["images"])
    with staged_extraction(paths["images"], out_dir) as staging:
        missing = [p for p in frame["path"] if not (staging / p).is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} image(s) listed in {paths['annotations'].name} are not in "
                f"{paths['images'].name}, e.g. {missing[0]}: the files do not belong together or the archive is "
                "incomplete. Delete them and run again, or replace them with the original files."
            )
        check_images((staging / p for p in frame["path"]), staging)
        frame = with_relative_boxes(frame, staging)
    frame["path"] = [f"{layout.EXTRACTED}/{p}" for p in frame["path"]]
    log_summary(log, DATASET, frame)
    return write_manifest(frame, manifest)


def with_relative_boxes(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The annotated boxes (pixels) as fractions of each image's width and height, the manifest's box_* columns.

    Fractions fit the resized copy of an image as well as the original; cutting the original at
    ``round(fraction x size)`` gives back the annotation's pixels (Symmetrical Synthesis's
    ``img[y1:y2, x1:x2]``).
    """
    if "x1" not in frame.columns:
        return frame
    sizes = []
    for path in frame["path"]:
        with Image.open(root / path) as image:  # the header only
            sizes.append(image.size)
    width = np.array([w for w, _ in sizes], dtype=float)
    height = np.array([h for _, h in sizes], dtype=float)
    boxes = {
        "box_left": frame["x1"] / width, "box_top": frame["y1"] / height,
        "box_right": frame["x2"] / width, "box_bottom": frame["y2"] / height,
    }  # fmt: skip
    out = frame.drop(columns=["x1", "y1", "x2", "y2"]).assign(**{k: np.clip(v, 0.0, 1.0) for k, v in boxes.items()})
    bad = out[(out.box_right <= out.box_left) | (out.box_bottom <= out.box_top)]
    if len(bad):
        raise DatasetError(f"{len(bad)} bounding box(es) of cars_annos.mat are empty, e.g. the one of {bad['path'].iloc[0]}")
    return out


def _text(value: Any) -> str:
    # loadmat gives str, or a 0-d/1-element array of str for cells
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one string, got an array of shape {value.shape}")
        value = value.reshape(()).item()
    return str(value)


def read_annotations(path: Path) -> pd.DataFrame:
    """The manifest frame of ``cars_annos.mat`` (paths relative to the extracted archive)."""
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=True)
    except (ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise DatasetError(
            f"{path} is not a readable MATLAB file ({exc}); delete it and run again, or replace it with the "
            "original cars_annos.mat"
        ) from exc
    if "annotations" not in mat or "class_names" not in mat:
        raise DatasetError(f"{path} lacks 'annotations' or 'class_names': it is not the Cars-196 cars_annos.mat")
    annotations = np.atleast_1d(mat["annotations"])
    fields = annotations.dtype.names or ()
    if "relative_im_path" not in fields or "class" not in fields:
        raise DatasetError(
            f"{path}: 'annotations' has fields {list(fields)}, expected relative_im_path and class: "
            "it is not the Cars-196 cars_annos.mat"
        )
    names = [_text(n) for n in np.atleast_1d(mat["class_names"])]
    box_fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
    try:
        rel_paths = [_text(a["relative_im_path"]) for a in annotations]
        labels = [int(np.asarray(a["class"]).reshape(())) for a in annotations]
        boxes = (
            {f[5:]: [float(np.asarray(a[f]).reshape(())) for a in annotations] for f in box_fields}
            if all(f in fields for f in box_fields)
            else {}
        )
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: malformed annotation ({exc})") from exc
    for rel in rel_paths:
        if rel.startswith("/") or ".." in PurePosixPath(rel).parts:
            raise DatasetError(f"{path}: an annotation points outside the image folder: {rel!r}")
    bad = sorted({c for c in labels if not 1 <= c <= len(names)})
    if bad:
        raise DatasetError(f"{path}: class ids {bad[:5]} are outside 1..{len(names)} (the number of class_names)")
    split = class_disjoint_split(labels)
    return pd.DataFrame(
        {
            "path": rel_paths,
            "label": labels,
            "class_name": [names[c - 1] for c in labels],
            "split": [split[c] for c in labels],
            **boxes,  # pixels x1, y1, x2, y2 (prepare turns them into fractions of the image size)
        }
    )
