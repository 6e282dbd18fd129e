"""Downloads, archives and the CUB-200-2011 / Cars-196 preparation against loopback fixtures.

No internet: every URL points at a stdlib HTTP server on 127.0.0.1 serving
tiny archives with the real layouts (tests/fixtures_datasets.py).
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from dmlsynth.data import cars, cub, download
from dmlsynth.data.archive import ArchiveError, safe_extract
from dmlsynth.data.errors import DataError
from dmlsynth.data.download import ChecksumError, DownloadError, MissingFileError, fetch, md5sum
from dmlsynth.data.manifest import read_manifest
from dmlsynth.data.sources import DatasetError

from tests.helpers.datasets import cars_fixture, cub_fixture, jpeg, md5_of, place, serve, tar_bytes

LOG = logging.getLogger("dmlsynth.test")


@pytest.fixture(autouse=True)
def no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_SECONDS", 0.0)


@pytest.fixture(scope="module")
def cub_fx():
    return cub_fixture(classes=4, per_class=3)


@pytest.fixture(scope="module")
def cars_fx():
    return cars_fixture(classes=4, per_class=3)


def leftovers(folder: Path) -> list[str]:
    """Anything that could pass for (part of) a prepared dataset."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != "raw")


# --------------------------------------------------------------------- fetch


def payload(size: int = 300_000) -> bytes:
    return bytes((i * 7919) % 251 for i in range(size))


def test_fetch_downloads_and_verifies(tmp_path):
    data = payload()
    with serve({"/f.bin": data}) as server:
        path = fetch(server.url("/f.bin"), tmp_path / "f.bin", md5_of(data), config_key="k", progress=False)
    assert path.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()
    assert [r.range for r in server.requests] == [None]


def test_fetch_resumes_partial_download_with_range(tmp_path):
    data = payload()
    done = 123_457
    place(tmp_path, "f.bin.part", data[:done])
    with serve({"/f.bin": data}) as server:
        fetch(server.url("/f.bin"), tmp_path / "f.bin", md5_of(data), config_key="k", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert len(server.requests) == 1
    assert server.requests[0].range == f"bytes={done}-"
    assert server.requests[0].status == 206
    # only the missing bytes went over the wire
    assert server.bytes_sent() == len(data) - done


def test_fetch_follows_redirects_and_resumes_through_them(tmp_path):
    data = payload()
    place(tmp_path, "f.bin.part", data[:1000])
    with serve({"/store/f.bin": data}, redirects={"/record/f.bin?download=1": "/store/f.bin"}) as server:
        fetch(server.url("/record/f.bin?download=1"), tmp_path / "f.bin", md5_of(data), config_key="k", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert [(r.path, r.range, r.status) for r in server.requests] == [
        ("/record/f.bin?download=1", "bytes=1000-", 302),
        ("/store/f.bin", "bytes=1000-", 206),
    ]


def test_fetch_restarts_cleanly_when_server_ignores_range(tmp_path):
    data = payload()
    place(tmp_path, "f.bin.part", b"\x00" * 50_000)  # wrong bytes: appending to them would corrupt the file
    with serve({"/f.bin": data}, mode="ignore_range") as server:
        fetch(server.url("/f.bin"), tmp_path / "f.bin", md5_of(data), config_key="k", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert server.requests[0].range == "bytes=50000-" and server.requests[0].status == 200


def test_fetch_restarts_after_416(tmp_path):
    data = payload(10_000)
    place(tmp_path, "f.bin.part", b"\x01" * 20_000)  # longer than the file: cannot be resumed
    with serve({"/f.bin": data}) as server:
        fetch(server.url("/f.bin"), tmp_path / "f.bin", md5_of(data), config_key="k", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    assert [(r.range, r.status) for r in server.requests] == [("bytes=20000-", 416), (None, 200)]


def test_fetch_resumes_after_connection_drop(tmp_path):
    data = payload()
    with serve({"/f.bin": data}, mode="truncate_once") as server:
        fetch(server.url("/f.bin"), tmp_path / "f.bin", md5_of(data), config_key="k", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data
    first, second = server.requests
    assert first.range is None and first.body_bytes == len(data) // 2
    assert second.range == f"bytes={len(data) // 2}-" and second.status == 206
    assert server.bytes_sent() == len(data)


def test_fetch_keeps_resuming_while_data_arrives(tmp_path):
    """Every body is cut in half: each resume makes progress (and is not counted as a failure) until
    one byte remains, whose half is nothing; then the attempts without progress run out."""
    data = payload(1000)
    with serve({"/f.bin": data}, mode="truncate") as server:
        with pytest.raises(DownloadError, match="failed 2 times in a row") as error:
            fetch(server.url("/f.bin"), tmp_path / "f.bin", md5_of(data), config_key="k", attempts=2, progress=False)
    assert "Run again to resume" in str(error.value) and "f.bin.part" in str(error.value)
    assert not (tmp_path / "f.bin").exists()
    part = (tmp_path / "f.bin.part").read_bytes()
    assert len(part) == len(data) - 1 and data.startswith(part)  # every delivered byte was kept
    ranges = [r.range for r in server.requests]
    assert ranges[0] is None and ranges[1] == "bytes=500-"  # resumed where the data stopped
    assert server.requests[-1].body_bytes == 0 and server.requests[-2].body_bytes == 0


def test_fetch_gives_up_after_attempts_without_progress(tmp_path):
    with serve({"/f.bin": payload(1000)}, mode="truncate") as server:
        place(tmp_path, "f.bin.part", payload(1000)[:999])
        with pytest.raises(DownloadError, match="failed 3 times in a row"):
            fetch(server.url("/f.bin"), tmp_path / "f.bin", md5_of(payload(1000)), config_key="k", progress=False)
    assert len(server.requests) == 3 and all(r.range == "bytes=999-" for r in server.requests)
    assert (tmp_path / "f.bin.part").stat().st_size == 999


def test_fetch_wrong_md5_deletes_download_and_says_so(tmp_path):
    data = payload()
    with serve({"/f.bin": data}) as server:
        with pytest.raises(ChecksumError, match=f"has md5 {md5_of(data)}, expected {'0' * 32}") as error:
            fetch(server.url("/f.bin"), tmp_path / "f.bin", "0" * 32, config_key="dataset_settings.x.urls.y", progress=False)
    assert "dataset_settings.x.urls.y" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_fetch_existing_file_with_wrong_md5_is_reported_not_deleted(tmp_path):
    placed = place(tmp_path, "f.bin", b"not the file")
    with pytest.raises(ChecksumError, match="Delete it and run again"):
        fetch("http://127.0.0.1:9/unused", placed, md5_of(b"the file"), config_key="k", progress=False)
    assert placed.read_bytes() == b"not the file"


def test_fetch_missing_file_without_url_says_where_to_put_it(tmp_path):
    with pytest.raises(MissingFileError) as error:
        fetch(None, tmp_path / "raw" / "car_ims.tgz", "a" * 32, config_key="dataset_settings.cars196.urls.images")
    message = str(error.value)
    assert isinstance(error.value, DataError)  # the CLI prints these without a traceback
    assert str(tmp_path / "raw" / "car_ims.tgz") in message and "dataset_settings.cars196.urls.images" in message


def test_fetch_http_error_is_clear(tmp_path):
    with serve({}) as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(server.url("/gone.tgz"), tmp_path / "gone.tgz", "a" * 32, config_key="k", progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ archives


UNSAFE = {
    "traversal": [("ok.txt", b"ok"), ("../evil.txt", b"evil")],
    "nested_traversal": [("a/../../evil.txt", b"evil")],
    "absolute": [("/tmp/dmlsynth-evil.txt", b"evil")],
    "symlink": [("link", None, tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [("ok.txt", b"ok"), ("hard", None, tarfile.LNKTYPE, "ok.txt")],
    "char_device": [("dev", None, tarfile.CHRTYPE)],
    "block_device": [("blk", None, tarfile.BLKTYPE)],
    "fifo": [("pipe", None, tarfile.FIFOTYPE)],
}
REASONS = {
    "traversal": "'..'",
    "nested_traversal": "'..'",
    "absolute": "absolute path",
    "symlink": "symbolic link",
    "hardlink": "hard link",
    "char_device": "device file",
    "block_device": "device file",
    "fifo": "FIFO",
}


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_unsafe_members_are_refused_and_nothing_is_written(tmp_path, kind):
    archive = place(tmp_path, "a.tgz", tar_bytes(UNSAFE[kind]))
    target = tmp_path / "out" / "extracted"
    with pytest.raises(ArchiveError, match="not extracted for safety") as error:
        safe_extract(archive, target)
    assert REASONS[kind] in str(error.value)
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no staging folder left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "out"]  # nothing escaped


def test_truncated_archive_is_reported_and_leaves_nothing(tmp_path, cub_fx):
    archive = place(tmp_path, "a.tgz", cub_fx.archive[: len(cub_fx.archive) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        safe_extract(archive, tmp_path / "out" / "x")
    assert list((tmp_path / "out").iterdir()) == []


def test_truncated_uncompressed_tar_is_reported(tmp_path):
    data = tar_bytes([("a.bin", payload(50_000)), ("b.bin", payload(50_000))], mode="w")
    archive = place(tmp_path, "a.tar", data[:70_000])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        safe_extract(archive, tmp_path / "out" / "x")
    assert list((tmp_path / "out").iterdir()) == []


def test_not_an_archive_is_reported(tmp_path):
    archive = place(tmp_path, "a.tgz", b"<html>mirror says: file not found</html>")
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        safe_extract(archive, tmp_path / "out" / "x")


def test_safe_extract_replaces_an_older_extraction_and_killed_leftovers(tmp_path):
    archive = place(tmp_path, "a.tgz", tar_bytes([("d", None, tarfile.DIRTYPE), ("d/new.txt", b"new")]))
    target = place(tmp_path / "out" / "x", "old.txt", b"old").parent
    place(tmp_path / "out" / ".x.partial", "half.bin", b"half")  # an extraction killed earlier
    safe_extract(archive, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["d", "d/new.txt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x"]


# ------------------------------------------------------------------- CUB-200


def cub_settings(fx, url: str | None = None, **overrides) -> dict:
    settings = {"urls": {"archive": url} if url else {}, "md5": {"archive": fx.md5}, "expected": fx.expected}
    settings.update(overrides)
    return settings


def test_cub_download_and_prepare(tmp_path, cub_fx):
    out, raw = tmp_path / "cub200", tmp_path / "raw" / "cub200"
    with serve({"/CUB_200_2011.tgz": cub_fx.archive}) as server:
        manifest = cub.prepare(cub_settings(cub_fx, server.url("/CUB_200_2011.tgz?download=1")), out, raw, LOG)
    assert manifest == out / "manifest.csv"
    frame = read_manifest(manifest)  # also checks every listed file exists
    assert len(frame) == 12 and frame["label"].nunique() == 4
    # class-disjoint split by class id halves, not train_test_split.txt
    assert frame.groupby("label")["split"].unique().map(list).to_dict() == {
        1: ["train"], 2: ["train"], 3: ["test"], 4: ["test"]
    }
    assert frame.groupby("label").size().tolist() == [3, 3, 3, 3]
    assert frame.loc[frame.label == 3, "class_name"].unique().tolist() == ["Species number 3"]
    assert all(p.startswith("extracted/CUB_200_2011/images/003.Species_number_3/") for p in frame.loc[frame.label == 3, "path"])
    attributes = pd.read_csv(out / "class_attributes.csv")
    assert list(attributes.columns[:2]) == ["class_id", "class_name"]
    assert list(attributes.columns[2:]) == [
        "has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_wing_color::brown", "has_size::small"
    ]
    assert attributes["class_id"].tolist() == [1, 2, 3, 4]
    assert attributes["class_name"].tolist() == [f"Species number {c}" for c in range(1, 5)]
    assert attributes.iloc[:, 2:].to_numpy() == pytest.approx(cub_fx.attributes)
    assert (raw / "CUB_200_2011.tgz").read_bytes() == cub_fx.archive
    assert leftovers(out) == ["class_attributes.csv", "extracted", "manifest.csv"]


def test_cub_uses_a_file_placed_by_hand(tmp_path, cub_fx):
    raw = tmp_path / "raw" / "cub200"
    place(raw, "CUB_200_2011.tgz", cub_fx.archive)
    with serve({}) as server:
        cub.prepare(cub_settings(cub_fx, server.url("/CUB_200_2011.tgz")), tmp_path / "cub200", raw, LOG)
    assert server.requests == []  # present and verified: never downloaded again
    assert len(read_manifest(tmp_path / "cub200" / "manifest.csv")) == 12


def test_cub_published_values_are_the_defaults():
    assert cub.FILES["archive"].md5 == "97eceeb196236b17998738112f37df78"
    assert cub.FILES["archive"].url.startswith("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz")
    assert cub.EXPECTED == {"images": 11788, "classes": 200, "train_images": 5864, "test_images": 5924}
    assert cars.FILES["images"].md5 == "d5c8f0aa497503f355e17dc7886c3f14"
    assert cars.FILES["annotations"].md5 == "b407c6086d669747186bd1d764ff9dbc"
    assert cars.EXPECTED == {"images": 16185, "classes": 196, "train_images": 8054, "test_images": 8131}


def test_cub_real_md5_rejects_other_archives(tmp_path, cub_fx):
    """Without overrides the published md5 applies: the fixture archive is refused before extraction."""
    with serve({"/c.tgz": cub_fx.archive}) as server:
        with pytest.raises(ChecksumError, match="expected 97eceeb196236b17998738112f37df78"):
            cub.prepare({"urls": {"archive": server.url("/c.tgz")}}, tmp_path / "cub200", tmp_path / "raw", LOG)
    assert leftovers(tmp_path / "cub200") == []
    assert list((tmp_path / "raw").iterdir()) == []


def test_cub_count_mismatch_stops_and_cleans_up(tmp_path, cub_fx):
    place(tmp_path / "raw", "CUB_200_2011.tgz", cub_fx.archive)
    settings = cub_settings(cub_fx, expected={**cub_fx.expected, "images": 11788})
    with pytest.raises(DatasetError, match=r"12 images \(expected 11788\)"):
        cub.prepare(settings, tmp_path / "cub200", tmp_path / "raw", LOG)
    assert leftovers(tmp_path / "cub200") == []


def test_cub_truncated_archive_stops_and_leaves_nothing(tmp_path, cub_fx):
    cut = cub_fx.archive[: len(cub_fx.archive) * 3 // 4]
    with serve({"/c.tgz": cut}) as server:
        with pytest.raises(ArchiveError, match="truncated or corrupt"):
            cub.prepare(cub_settings(cub_fx, server.url("/c.tgz"), md5={"archive": md5_of(cut)}), tmp_path / "cub200", tmp_path / "raw", LOG)
    assert leftovers(tmp_path / "cub200") == []


def test_cub_archive_with_traversal_member_is_refused(tmp_path):
    evil = cub_fixture(extra=[("CUB_200_2011/../../../escaped.txt", b"gotcha")])
    with serve({"/c.tgz": evil.archive}) as server:
        with pytest.raises(ArchiveError, match="not extracted for safety"):
            cub.prepare(cub_settings(evil, server.url("/c.tgz")), tmp_path / "d" / "cub200", tmp_path / "d" / "raw", LOG)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert leftovers(tmp_path / "d" / "cub200") == []


def test_cub_unreadable_image_is_named(tmp_path):
    broken = cub_fixture(bad_image=True)
    place(tmp_path / "raw", "CUB_200_2011.tgz", broken.archive)
    with pytest.raises(DatasetError, match="1 image\\(s\\) cannot be read: CUB_200_2011/images/001.Species_number_1/"):
        cub.prepare(cub_settings(broken), tmp_path / "cub200", tmp_path / "raw", LOG)
    assert leftovers(tmp_path / "cub200") == []


def test_cub_rerun_after_failure_then_success_replaces_nothing_stale(tmp_path, cub_fx):
    raw = tmp_path / "raw"
    place(raw, "CUB_200_2011.tgz", cub_fx.archive)
    out = tmp_path / "cub200"
    cub.prepare(cub_settings(cub_fx), out, raw, LOG)
    # a second run with a wrong expectation must not leave the old manifest looking valid
    with pytest.raises(DatasetError):
        cub.prepare(cub_settings(cub_fx, expected={"classes": 200}), out, raw, LOG)
    assert not (out / "manifest.csv").exists()


def test_unknown_url_key_is_rejected(tmp_path, cub_fx):
    with pytest.raises(DatasetError, match="unknown key\\(s\\) \\['images'\\]; cub200 uses: archive"):
        cub.prepare({"urls": {"images": "http://127.0.0.1:9/x"}}, tmp_path / "c", tmp_path / "r", LOG)


# ------------------------------------------------------------------- Cars-196


def cars_settings(fx, urls: dict | None = None, **overrides) -> dict:
    settings = {"urls": urls or {}, "md5": fx.md5, "expected": fx.expected}
    settings.update(overrides)
    return settings


def check_cars_manifest(manifest: Path, fx) -> None:
    frame = read_manifest(manifest)
    assert len(frame) == 12
    assert frame.groupby("label")["split"].unique().map(list).to_dict() == {
        1: ["train"], 2: ["train"], 3: ["test"], 4: ["test"]
    }
    # image i+1 carries the class of annotation i, whatever the order of classes in the file
    assert frame["path"].tolist() == [f"extracted/car_ims/{i:06d}.jpg" for i in range(1, 13)]
    assert frame["label"].tolist() == fx.labels
    assert frame["class_name"].tolist() == [fx.class_names[c - 1] for c in fx.labels]


def test_cars_download_and_prepare(tmp_path, cars_fx):
    out, raw = tmp_path / "cars196", tmp_path / "raw" / "cars196"
    files = {"/m/car_ims.tgz": cars_fx.images, "/m/cars_annos.mat": cars_fx.annotations}
    with serve(files) as server:
        urls = {"images": server.url("/m/car_ims.tgz"), "annotations": server.url("/m/cars_annos.mat")}
        manifest = cars.prepare(cars_settings(cars_fx, urls), out, raw, LOG)
    check_cars_manifest(manifest, cars_fx)
    assert sorted(p.name for p in raw.iterdir()) == ["car_ims.tgz", "cars_annos.mat"]
    assert leftovers(out) == ["extracted", "manifest.csv"]


def test_cars_files_placed_by_hand_without_urls(tmp_path, cars_fx):
    raw = tmp_path / "raw" / "cars196"
    place(raw, "car_ims.tgz", cars_fx.images)
    place(raw, "cars_annos.mat", cars_fx.annotations)
    check_cars_manifest(cars.prepare(cars_settings(cars_fx), tmp_path / "cars196", raw, LOG), cars_fx)


def test_cars_missing_file_without_url_says_where_to_put_it(tmp_path, cars_fx):
    raw = tmp_path / "raw" / "cars196"
    place(raw, "cars_annos.mat", cars_fx.annotations)
    with pytest.raises(MissingFileError) as error:
        cars.prepare(cars_settings(cars_fx), tmp_path / "cars196", raw, LOG)
    message = str(error.value)
    assert f"place the file at {raw / 'car_ims.tgz'}" in message
    assert "d5c8f0aa497503f355e17dc7886c3f14" not in message  # the override applies
    assert "dataset_settings.cars196.urls.images" in message
    assert leftovers(tmp_path / "cars196") == []


def test_cars_default_md5_is_checked_for_files_placed_by_hand(tmp_path, cars_fx):
    raw = tmp_path / "raw" / "cars196"
    place(raw, "cars_annos.mat", cars_fx.annotations)
    with pytest.raises(ChecksumError, match="expected b407c6086d669747186bd1d764ff9dbc"):
        cars.prepare({}, tmp_path / "cars196", raw, LOG)


def test_cars_unreadable_annotations_are_reported(tmp_path, cars_fx):
    raw = tmp_path / "raw" / "cars196"
    junk = b"this is not a MATLAB file" * 10
    place(raw, "cars_annos.mat", junk)
    place(raw, "car_ims.tgz", cars_fx.images)
    settings = cars_settings(cars_fx, md5={"images": cars_fx.md5["images"], "annotations": md5_of(junk)})
    with pytest.raises(DatasetError, match="not a readable MATLAB file"):
        cars.prepare(settings, tmp_path / "cars196", raw, LOG)
    assert leftovers(tmp_path / "cars196") == []


def test_cars_annotations_and_images_that_do_not_match(tmp_path, cars_fx):
    raw = tmp_path / "raw" / "cars196"
    fewer = tar_bytes([("car_ims", None, tarfile.DIRTYPE), ("car_ims/000001.jpg", jpeg(1))])
    place(raw, "car_ims.tgz", fewer)
    place(raw, "cars_annos.mat", cars_fx.annotations)
    settings = cars_settings(cars_fx, md5={"images": md5_of(fewer), "annotations": cars_fx.md5["annotations"]})
    with pytest.raises(DatasetError, match="11 image\\(s\\) listed in cars_annos.mat are not in car_ims.tgz"):
        cars.prepare(settings, tmp_path / "cars196", raw, LOG)
    assert leftovers(tmp_path / "cars196") == []


def test_md5sum_matches_hashlib(tmp_path):
    data = payload(3_000_001)
    assert md5sum(place(tmp_path, "x", data)) == md5_of(data)
