"""Stanford Online Products (Oh Song et al., CVPR 2016): 120,053 eBay product photos of 22,634 products.

Raw file: ``Stanford_Online_Products.zip`` (md5 ``7f73d41a2f44250d4779881525aea32e``, the value the
dataset loaders of the deep metric learning literature check), downloaded from Stanford's server to
``{raw_dir}`` (a mirror: ``dataset_settings.sop.urls.archive``; a copy placed there by hand is used
after the md5 check). Layout inside: ``Stanford_Online_Products/Ebay_train.txt`` and ``Ebay_test.txt``
(header ``image_id class_id super_class_id path``; paths such as ``bicycle_final/111085122871_0.JPG``
relative to ``Stanford_Online_Products/``).

The split is the dataset's own (the protocol of every paper): the 11,318 products of ``Ebay_train.txt``
(59,551 images) train, the 11,316 of ``Ebay_test.txt`` (60,502 images) test; every test image is a query
against the other test images. ``class_name`` is the super-class (``bicycle``) and the product id.

Outputs in ``{out_dir}``: ``extracted/`` (checked in a staging folder, renamed when complete) and
``manifest.csv``, written last.
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

DATASET = "sop"
FILES = {
    "archive": RawFile(
        "Stanford_Online_Products.zip",
        "7f73d41a2f44250d4779881525aea32e",
        "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
    )
}
EXPECTED = {"images": 120_053, "classes": 22_634, "train_images": 59_551, "test_images": 60_502, "train_classes": 11_318}
ROOT = "Stanford_Online_Products"
SPLIT_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}


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
        frame = read_layout(staging, source=archive.name)
        check_counts(DATASET, frame, sources.expected, archive.name)
        check_images((staging / p for p in frame["path"]), staging)
    frame["path"] = [f"{layout.EXTRACTED}/{p}" for p in frame["path"]]
    log_summary(log, DATASET, frame)
    return write_manifest(frame, manifest)


def read_split(path: Path, split: str, source: str) -> pd.DataFrame:
    """One of ``Ebay_train.txt`` / ``Ebay_test.txt`` as manifest rows (paths relative to the extraction)."""
    if not path.is_file():
        raise DatasetError(
            f"{source} has no {ROOT}/{path.name}: it is not the Stanford Online Products archive. Delete it and run "
            "again, or replace it with the original file."
        )
    lines = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines or lines[0][:2] != ["image_id", "class_id"]:
        raise DatasetError(f"{source}: {path.name} does not start with the header 'image_id class_id super_class_id path'")
    rows = []
    for fields in lines[1:]:
        if len(fields) != 4 or not fields[1].isdigit():
            raise DatasetError(f"{source}: malformed line in {path.name} (expected '<id> <class> <super class> <path>'): {' '.join(fields)!r}")
        relative = fields[3]
        if relative.startswith("/") or ".." in PurePosixPath(relative).parts:
            raise DatasetError(f"{source}: {path.name} lists a path outside the dataset folder: {relative!r}")
        super_class = PurePosixPath(relative).parts[0].removesuffix("_final")
        label = int(fields[1])
        rows.append({"path": f"{ROOT}/{relative}", "label": label, "class_name": f"{super_class} {label}", "split": split})
    return pd.DataFrame(rows, columns=["path", "label", "class_name", "split"])


def read_layout(root: Path, source: str = "the archive") -> pd.DataFrame:
    """The manifest frame of an extracted archive: the dataset's own train and test files."""
    frame = pd.concat([read_split(root / ROOT / name, split, source) for split, name in SPLIT_FILES.items()], ignore_index=True)
    shared = set(frame.loc[frame.split == "train", "label"]) & set(frame.loc[frame.split == "test", "label"])
    if shared:
        raise DatasetError(f"{source}: classes {sorted(shared)[:5]} are in both Ebay_train.txt and Ebay_test.txt; the split must be class-disjoint")
    missing = [p for p in frame["path"] if not (root / p).is_file()]
    if missing:
        raise DatasetError(
            f"{source}: {len(missing)} image(s) listed in Ebay_*.txt are not in the archive, e.g. {missing[0]}. "
            "The archive is incomplete: delete it and run again."
        )
    return frame
