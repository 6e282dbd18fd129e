"""The manifest: one CSV per prepared dataset, the only thing later stages read.

Columns: ``path`` (image path relative to the manifest's folder), ``label``
(the dataset's class id), ``class_name`` and ``split`` (``train``/``test``;
classes are split in half, METHODS.md §1). The manifest is written last and
atomically, so its presence means the dataset is complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dmlsynth.config import atomic_write_text

COLUMNS = ["path", "label", "class_name", "split"]
SPLITS = ("train", "test")


class ManifestError(ValueError):
    """A manifest is missing, malformed or points at missing files."""


def class_disjoint_split(labels: list[int] | pd.Series) -> dict[int, str]:
    """Map each class id to ``train`` (first half of sorted ids) or ``test`` (second half)."""
    classes = sorted(set(int(c) for c in labels))
    half = len(classes) // 2
    return {c: ("train" if i < half else "test") for i, c in enumerate(classes)}


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest frame lacks columns {missing}")
    path = Path(path)
    atomic_write_text(path, frame[COLUMNS].to_csv(index=False))
    return path


def read_manifest(path: str | os.PathLike[str], check_files: bool = True) -> pd.DataFrame:
    """Read and check a manifest; the returned frame has an absolute ``file`` column."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(
            f"manifest {path} does not exist: prepare the dataset first "
            f"(snakemake --cores 1 {path}) or check paths.data in params.yaml"
        )
    try:
        frame = pd.read_csv(path, dtype={"path": str, "class_name": str, "split": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} is not a readable CSV ({exc}); delete it and prepare the dataset again") from exc
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest {path} lacks columns {missing}; expected {COLUMNS}")
    if frame.empty:
        raise ManifestError(f"manifest {path} lists no images")
    bad_split = sorted(set(frame["split"]) - set(SPLITS))
    if bad_split:
        raise ManifestError(f"manifest {path} has unknown split values {bad_split}; expected {list(SPLITS)}")
    frame["label"] = frame["label"].astype(int)
    frame["file"] = [str(path.parent / p) for p in frame["path"]]
    if check_files:
        absent = [f for f in frame["file"] if not os.path.exists(f)]
        if absent:
            raise ManifestError(
                f"manifest {path} lists {len(absent)} missing image(s), e.g. {absent[0]}; "
                "the dataset folder is incomplete: delete it and prepare the dataset again"
            )
    return frame
