"""Manifest datasets (dmlsynth.data.csv_manifest): a CSV of paths and labels becomes a dataset; each bad CSV
is refused with what to fix, and nothing is written."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from PIL import Image

from dmlsynth import layout
from dmlsynth.data.csv_manifest import prepare
from dmlsynth.data.image_folder import ImageFolderError

LOG = logging.getLogger("test")


def images(tmp_path, count):
    (tmp_path / "img").mkdir()
    for index in range(count):
        Image.new("L", (8, 8), 10 * index).save(tmp_path / "img" / f"{index}.png")
    return [f"img/{index}.png" for index in range(count)]


def write(tmp_path, rows):
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    return {"path": str(tmp_path / "data.csv")}


def test_the_csv_split_and_roles_are_kept_and_labels_sorted_by_value(tmp_path):
    paths = images(tmp_path, 8)
    labels = ["10", "10", "2", "2", "7", "7", "7", "7"]
    split = ["test", "test", "train", "train", "test", "test", "test", "test"]
    roles = ["query", "gallery", "", "", "query", "gallery", "gallery", "gallery"]
    settings = write(tmp_path, {"path": paths, "label": labels, "split": split, "retrieval": roles})
    manifest = pd.read_csv(prepare(settings, tmp_path / "out", tmp_path / "raw", LOG), keep_default_na=False)
    assert dict(zip(manifest.class_name.astype(str), manifest.label)) == {"2": 0, "7": 1, "10": 2}
    assert list(manifest.split) == split and list(manifest.retrieval) == roles
    assert all((tmp_path / "out" / p).is_file() for p in manifest.path)


def test_without_a_split_column_the_first_half_of_the_classes_train(tmp_path):
    paths = images(tmp_path, 8)
    settings = write(tmp_path, {"path": paths, "label": ["d", "d", "c", "c", "b", "b", "a", "a"]})
    manifest = pd.read_csv(prepare(settings, tmp_path / "out", tmp_path / "raw", LOG))
    assert set(manifest.loc[manifest.split == "train", "class_name"]) == {"a", "b"}


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda rows: rows["split"].__setitem__(1, "test"), "classes on both sides of the split: a"),
        (lambda rows: rows["path"].__setitem__(1, rows["path"][0]), "duplicated paths"),
        (lambda rows: rows.pop("label"), "lacks the columns ['label']"),
        (lambda rows: rows["split"].__setitem__(0, "val"), "column split has ['val']"),
    ],
    ids=["class on both sides", "path twice", "no label", "unknown split"],
)
def test_a_bad_csv_is_refused_and_nothing_is_written(tmp_path, change, message):
    paths = images(tmp_path, 4)
    rows = {"path": paths, "label": ["a", "a", "b", "b"], "split": ["train", "train", "test", "test"]}
    change(rows)
    with pytest.raises(ImageFolderError) as error:
        prepare(write(tmp_path, rows), tmp_path / "out", tmp_path / "raw", LOG)
    assert message in str(error.value)
    assert not (tmp_path / "out" / layout.MANIFEST).exists()
