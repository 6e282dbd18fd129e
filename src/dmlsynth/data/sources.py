"""What the download-based datasets share: resolving their source settings and checking the result.

A dataset module declares its raw files (name, md5, default URL) and the
counts a correct copy has. The config may override, under
``dataset_settings.<name>``, ``urls`` (mirrors), ``md5`` and ``expected``
(used by the tests' tiny fixture archives); everything not overridden
comes from the module's declaration, the one place the real values live.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dmlsynth import layout
from dmlsynth.data.archive import extract_into
from dmlsynth.io import atomic_directory
from dmlsynth.data.errors import DataError

# Counts a prepared dataset is checked against (query/gallery: the test images' retrieval roles, In-Shop).
COUNT_KEYS = ("images", "classes", "train_images", "test_images", "train_classes", "query_images", "gallery_images")


class DatasetError(DataError):
    """The raw data does not have the expected layout, counts or readable images."""


@dataclass(frozen=True)
class RawFile:
    filename: str
    md5: str | None  # None: no md5 is published (the counts are still checked; the config may pin one)
    url: str | None  # None: no working public URL, the user gives one or places the file


@dataclass(frozen=True)
class Sources:
    urls: dict[str, str | None]
    md5: dict[str, str | None]
    filenames: dict[str, str]
    expected: dict[str, int]


def resolve_sources(
    dataset: str, settings: Mapping[str, Any], files: Mapping[str, RawFile], expected: Mapping[str, int]
) -> Sources:
    """Declared files and counts, updated with the config's ``urls``, ``md5`` and ``expected``."""
    overrides = {key: dict(settings.get(key) or {}) for key in ("urls", "md5")}
    for key, given in overrides.items():
        unknown = sorted(set(given) - set(files))
        if unknown:
            raise DatasetError(
                f"dataset_settings.{dataset}.{key} has unknown key(s) {unknown}; {dataset} uses: {', '.join(files)}"
            )
    given_expected = dict(settings.get("expected") or {})
    unknown = sorted(set(given_expected) - set(COUNT_KEYS))
    if unknown:
        raise DatasetError(
            f"dataset_settings.{dataset}.expected has unknown key(s) {unknown}; allowed: {', '.join(COUNT_KEYS)}"
        )
    urls = {key: overrides["urls"].get(key, spec.url) or None for key, spec in files.items()}
    given_md5 = {key: overrides["md5"].get(key, spec.md5) for key, spec in files.items()}
    md5 = {key: (str(value).lower() if value is not None else None) for key, value in given_md5.items()}
    return Sources(
        urls=urls,
        md5=md5,
        filenames={key: spec.filename for key, spec in files.items()},
        expected={**expected, **given_expected},
    )


def check_counts(dataset: str, frame: pd.DataFrame, expected: Mapping[str, int], source: str) -> None:
    """Compare image and class counts of a manifest frame with the published ones."""
    roles = frame["retrieval"] if "retrieval" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    found = {
        "images": len(frame),
        "classes": frame["label"].nunique(),
        "train_images": int((frame["split"] == "train").sum()),
        "test_images": int((frame["split"] == "test").sum()),
        "train_classes": frame.loc[frame["split"] == "train", "label"].nunique(),
        "query_images": int((roles == "query").sum()),
        "gallery_images": int((roles == "gallery").sum()),
    }
    wrong = [f"{found[k]} {k.replace('_', ' ')} (expected {expected[k]})" for k in COUNT_KEYS if k in expected and found[k] != expected[k]]
    if wrong:
        raise DatasetError(
            f"{dataset}: {source} has {', '.join(wrong)}: it is incomplete or a different version of the dataset. "
            "Delete the raw file(s) and run again, or replace them with the original files."
        )


def check_images(files: Iterable[Path], root: Path, progress: bool = True) -> None:
    """Decode every image (JPEG at reduced scale, which still reads all of its data); report the unreadable ones."""
    files = list(files)
    bad = []
    for file in tqdm(files, desc="checking images", unit="img", disable=not progress, mininterval=2.0):
        try:
            with Image.open(file) as image:
                image.draft("RGB", (64, 64))
                image.load()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            bad.append(f"{Path(file).relative_to(root)} ({exc})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DatasetError(
            f"{len(bad)} image(s) cannot be read: {shown}. The archive is damaged or not the original: delete the "
            "raw file(s) and run again, or replace them with the original files."
        )


@contextmanager
def staged_extraction(archive: Path, out_dir: Path) -> Iterator[Path]:
    """Extract ``archive`` to a hidden staging folder for the caller to check.

    If the ``with`` body raises, the staging folder is removed; otherwise it
    becomes ``{out_dir}/extracted``. Nothing unchecked ever sits where a
    complete dataset would.
    """
    with atomic_directory(out_dir / layout.EXTRACTED) as staging:
        extract_into(archive, staging)
        yield staging


def log_summary(log: logging.Logger, dataset: str, frame: pd.DataFrame) -> None:
    train = frame[frame.split == "train"]
    test = frame[frame.split == "test"]
    log.info(
        "%s: %d images, %d train classes (%d images), %d test classes (%d images)",
        dataset,
        len(frame),
        train["label"].nunique(),
        len(train),
        test["label"].nunique(),
        len(test),
    )
