"""Stanford Online Products and In-Shop prepared through the real download code, from fixture archives on 127.0.0.1.

A bad archive, a checksum mismatch and an unsafe member each stop with a clear error and leave no manifest.
"""

from __future__ import annotations

import logging
import tarfile
import zipfile

import pytest

from dmlsynth import registry
from dmlsynth.data import download, inshop, sop
from dmlsynth.data.archive import ArchiveError, safe_extract
from dmlsynth.data.download import ChecksumError, MissingFileError
from dmlsynth.data.manifest import read_manifest
from dmlsynth.data.sources import DatasetError
from dmlsynth.data.split import split_class_count
from tests.helpers.datasets import inshop_fixture, jpeg, place, serve, sop_fixture, zip_bytes

LOG = logging.getLogger("dmlsynth.test")


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_SECONDS", 0.0)


@pytest.fixture(scope="module")
def sop_fx():
    return sop_fixture(train_classes=3, test_classes=2, per_class=2)


@pytest.fixture(scope="module")
def inshop_fx():
    return inshop_fixture(train_items=3, test_items=3)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "raw") if folder.exists() else []


def sop_settings(fx, url=None, **overrides):
    return {"urls": {"archive": url} if url else {}, "md5": {"archive": fx.md5}, "expected": fx.expected, **overrides}


# ---------------------------------------------------------------- Stanford Online Products


def test_sop_downloads_and_prepares_with_its_own_uneven_split(tmp_path, sop_fx):
    out, raw = tmp_path / "sop", tmp_path / "raw" / "sop"
    with serve({"/Stanford_Online_Products.zip": sop_fx.archive}) as server:
        manifest = sop.prepare(sop_settings(sop_fx, server.url("/Stanford_Online_Products.zip")), out, raw, LOG)
    frame = read_manifest(manifest)
    # The dataset's own files decide the split (3 train / 2 test products here, 11,318 / 11,316 in the real one).
    assert frame.groupby("split")["label"].nunique().to_dict() == {"test": 2, "train": 3}
    assert sorted(frame.loc[frame.split == "train", "label"].unique()) == [1, 2, 3]
    assert frame.loc[frame.label == 2, "class_name"].unique().tolist() == ["bicycle 2"]
    assert all(p.startswith("extracted/Stanford_Online_Products/") for p in frame["path"])
    assert "retrieval" not in frame.columns  # every test image is a query against the others
    assert (raw / "Stanford_Online_Products.zip").read_bytes() == sop_fx.archive
    assert leftovers(out) == ["extracted", "manifest.csv"]


def test_sop_published_values_are_the_defaults():
    assert sop.FILES["archive"].md5 == "7f73d41a2f44250d4779881525aea32e"
    assert sop.EXPECTED == {"images": 120_053, "classes": 22_634, "train_images": 59_551, "test_images": 60_502, "train_classes": 11_318}
    spec = registry.DATASETS["sop"]
    assert (spec.num_classes, spec.train_classes) == (22_634, 11_318)
    assert split_class_count({"datasets": ["sop"]}, "sop") == 11_318  # not half of 22,634


def test_sop_checksum_mismatch_stops_and_leaves_no_manifest(tmp_path, sop_fx):
    out = tmp_path / "sop"
    out.mkdir()
    (out / "manifest.csv").write_text("stale")
    with serve({"/s.zip": sop_fx.archive}) as server:
        with pytest.raises(ChecksumError, match="expected 7f73d41a2f44250d4779881525aea32e"):
            sop.prepare({"urls": {"archive": server.url("/s.zip")}}, out, tmp_path / "raw", LOG)
    assert leftovers(out) == []  # the stale manifest went first


def test_sop_damaged_archive_is_reported_and_leaves_nothing(tmp_path, sop_fx):
    damaged = bytearray(sop_fx.archive)
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(64)  # compressed data of a member overwritten: its CRC fails
    raw = tmp_path / "raw"
    place(raw, "Stanford_Online_Products.zip", bytes(damaged))
    settings = {**sop_settings(sop_fx), "md5": {"archive": __import__("hashlib").md5(bytes(damaged)).hexdigest()}}
    with pytest.raises((ArchiveError, DatasetError), match="truncated or corrupt|cannot be read|not in the archive"):
        sop.prepare(settings, tmp_path / "sop", raw, LOG)
    assert leftovers(tmp_path / "sop") == []


@pytest.mark.parametrize(
    "extra,symlinks,why",
    [
        ([("../evil.txt", b"x")], (), "leaves the target folder"),
        ([("/etc/evil.txt", b"x")], (), "absolute path"),
        ([("Stanford_Online_Products/link", b"/etc/passwd")], ("Stanford_Online_Products/link",), "symbolic link"),
    ],
    ids=["traversal", "absolute", "symlink"],
)
def test_sop_unsafe_members_are_refused_before_anything_is_written(tmp_path, extra, symlinks, why):
    fx = sop_fixture(extra=extra, symlinks=symlinks)
    raw = tmp_path / "raw"
    place(raw, "Stanford_Online_Products.zip", fx.archive)
    with pytest.raises(ArchiveError, match=why):
        sop.prepare(sop_settings(fx), tmp_path / "sop", raw, LOG)
    assert leftovers(tmp_path / "sop") == []
    assert not (tmp_path / "evil.txt").exists()


def test_zip_extraction_is_atomic_and_truncation_is_reported(tmp_path, sop_fx):
    archive = place(tmp_path, "a.zip", sop_fx.archive[: len(sop_fx.archive) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    good = place(tmp_path, "b.zip", zip_bytes([("d", None), ("d/x.jpg", jpeg(1))]))
    assert sorted(p.name for p in safe_extract(good, tmp_path / "out").rglob("*")) == ["d", "x.jpg"]
    # tar archives still go through the tar path
    tar = tmp_path / "c.tar"
    with tarfile.open(tar, "w") as handle:
        handle.add(good, arcname="b.zip")
    assert (safe_extract(tar, tmp_path / "tar") / "b.zip").is_file()
    assert zipfile.is_zipfile(good)


def test_sop_count_mismatch_stops_and_cleans_up(tmp_path, sop_fx):
    raw = tmp_path / "raw"
    place(raw, "Stanford_Online_Products.zip", sop_fx.archive)
    with pytest.raises(DatasetError, match="3 train classes \\(expected 11318\\)"):
        sop.prepare(sop_settings(sop_fx, expected={**sop_fx.expected, "train_classes": 11_318}), tmp_path / "sop", raw, LOG)
    assert leftovers(tmp_path / "sop") == []


# ---------------------------------------------------------------- In-Shop


def inshop_settings(fx, server=None, **overrides):
    urls = {"images": server.url("/img.zip"), "partition": server.url("/list_eval_partition.txt")} if server else {}
    return {"urls": urls, "md5": fx.md5, "expected": fx.expected, **overrides}


def test_inshop_prepares_query_and_gallery_roles(tmp_path, inshop_fx):
    out, raw = tmp_path / "inshop", tmp_path / "raw" / "inshop"
    with serve({"/img.zip": inshop_fx.images, "/list_eval_partition.txt": inshop_fx.partition}) as server:
        manifest = inshop.prepare(inshop_settings(inshop_fx, server), out, raw, LOG)
    frame = read_manifest(manifest)
    test = frame[frame.split == "test"]
    assert test["retrieval"].value_counts().to_dict() == {"query": 6, "gallery": 2}
    assert frame.loc[frame.split == "train", "retrieval"].isna().all()
    assert sorted(frame.loc[frame.split == "train", "label"].unique()) == [1, 2, 3]
    assert frame.loc[frame.label == 5, "class_name"].iloc[0] == "WOMEN Dresses id_00000005"
    assert leftovers(out) == ["extracted", "manifest.csv"]


def test_inshop_files_have_no_published_md5_but_a_given_one_is_checked(tmp_path, inshop_fx, caplog):
    assert inshop.FILES["images"].md5 is None and inshop.FILES["images"].url is None
    assert inshop.EXPECTED["query_images"] == 14_218 and inshop.EXPECTED["gallery_images"] == 12_612
    raw = tmp_path / "raw"
    place(raw, "img.zip", inshop_fx.images)
    place(raw, "list_eval_partition.txt", inshop_fx.partition)
    with caplog.at_level(logging.WARNING, logger="dmlsynth.data.download"):
        inshop.prepare({"expected": inshop_fx.expected}, tmp_path / "inshop", raw, LOG)
    assert "no published md5" in caplog.text and "dataset_settings.inshop.md5.images" in caplog.text
    with pytest.raises(ChecksumError, match="expected 0123456789abcdef0123456789abcdef"):
        inshop.prepare(
            {"expected": inshop_fx.expected, "md5": {"images": "0123456789abcdef0123456789abcdef"}}, tmp_path / "again", raw, LOG
        )
    assert leftovers(tmp_path / "again") == []


def test_inshop_missing_files_say_where_to_put_them(tmp_path, inshop_fx):
    with pytest.raises(MissingFileError, match="list_eval_partition.txt is needed.*dataset_settings.inshop.urls.partition"):
        inshop.prepare({"expected": inshop_fx.expected}, tmp_path / "inshop", tmp_path / "raw", LOG)


def test_inshop_query_gallery_counts_are_checked(tmp_path, inshop_fx):
    raw = tmp_path / "raw"
    place(raw, "img.zip", inshop_fx.images)
    place(raw, "list_eval_partition.txt", inshop_fx.partition)
    wrong = {**inshop_fx.expected, "gallery_images": 12_612}
    with pytest.raises(DatasetError, match="2 gallery images \\(expected 12612\\)"):
        inshop.prepare(inshop_settings(inshop_fx, expected=wrong), tmp_path / "inshop", raw, LOG)
    assert leftovers(tmp_path / "inshop") == []


def test_inshop_unsafe_member_and_malformed_partition_are_refused(tmp_path, inshop_fx):
    raw = tmp_path / "raw"
    evil = zip_bytes([("img", None), ("img/../../evil.jpg", jpeg(1))])
    place(raw, "img.zip", evil)
    place(raw, "list_eval_partition.txt", inshop_fx.partition)
    settings = inshop_settings(inshop_fx)
    settings["md5"] = {**settings["md5"], "images": __import__("hashlib").md5(evil).hexdigest()}
    with pytest.raises(ArchiveError, match="leaves the target folder"):
        inshop.prepare(settings, tmp_path / "inshop", raw, LOG)
    assert leftovers(tmp_path / "inshop") == []
    bad = tmp_path / "bad"
    place(bad, "img.zip", inshop_fx.images)
    place(bad, "list_eval_partition.txt", b"52712\nimage_name item_id evaluation_status\nimg/a.jpg id_1 valid\n")
    with pytest.raises(DatasetError, match="train\\|query\\|gallery"):
        inshop.prepare({"expected": inshop_fx.expected}, tmp_path / "inshop", bad, LOG)
    assert leftovers(tmp_path / "inshop") == []
