"""Image-folder datasets (dmlsynth.data.image_folder): the manifest of a good folder, and a clear error,
with nothing written, for each kind of bad folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dmlsynth import layout
from dmlsynth.data.image_folder import ImageFolderError, prepare

LOG = logging.getLogger("test")


def folder(root: Path, sizes: dict[str, int]) -> Path:
    for name, count in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.new("L", (8, 8), 20 * index).save(root / name / f"{index}.png")
    return root


def test_a_folder_becomes_a_class_disjoint_manifest(tmp_path):
    root = folder(tmp_path / "in", {"cat": 3, "ant": 2, "dog": 2, "bee": 4})
    manifest = pd.read_csv(prepare({"root": str(root)}, tmp_path / "out", tmp_path / "raw", LOG))
    # Classes sorted by name, numbered in that order; the first half train.
    assert dict(zip(manifest.class_name, manifest.label)) == {"ant": 0, "bee": 1, "cat": 2, "dog": 3}
    assert set(manifest.loc[manifest.split == "train", "class_name"]) == {"ant", "bee"}
    assert len(manifest) == 11 and all((tmp_path / "out" / p).is_file() for p in manifest.path)


@pytest.mark.parametrize(
    "spoil,message",
    [
        (lambda root: (root / "cat" / "1.png").unlink(), "fewer than 2 images (no positive pair): cat (1)"),
        (lambda root: (root / "dog" / "0.png").write_bytes(b"not an image"), "1 images cannot be read"),
        (lambda root: (root / "dog" / "sub").mkdir() or (root / "dog" / "0.png").rename(root / "dog" / "sub" / "1.PNG"),
         "differ only in case or sub-folder): dog/1.png"),
        (lambda root: [p.unlink() for p in (root / "dog").iterdir()] and (root / "dog").rmdir(),
         "the split leaves train or test without classes"),
    ],
    ids=["single-image class", "unreadable", "duplicated path", "one class"],
)
def test_a_bad_folder_is_refused_and_nothing_is_written(tmp_path, spoil, message):
    root = folder(tmp_path / "in", {"cat": 2, "dog": 2})
    spoil(root)
    with pytest.raises(ImageFolderError, match="cannot be used") as error:
        prepare({"root": str(root)}, tmp_path / "out", tmp_path / "raw", LOG)
    assert message in str(error.value)
    assert not (tmp_path / "out" / layout.MANIFEST).exists()


def test_a_missing_root_says_which_setting_to_set(tmp_path):
    with pytest.raises(ImageFolderError, match="set dataset_settings.<dataset>.root"):
        prepare({}, tmp_path / "out", tmp_path / "raw", LOG)
    with pytest.raises(ImageFolderError, match="does not exist"):
        prepare({"root": str(tmp_path / "nowhere")}, tmp_path / "out", tmp_path / "raw", LOG)
