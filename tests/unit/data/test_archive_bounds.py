"""Decompression bombs are refused before anything is written: 0.2 MB that would expand to 200 MB of zeros."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from collections import namedtuple

import pytest

from dmlsynth.data import archive as archive_module
from dmlsynth.data.archive import ArchiveError, extract_into, safe_extract

ZEROS_MB = 200
CHUNK = bytes(1 << 20)


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read in pieces (the archive is made without holding them in memory)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped, zipped.open("images/zeros.jpg", "w") as member:
        for _ in range(ZEROS_MB):
            member.write(CHUNK)
    assert path.stat().st_size < 0.5e6
    return path


@pytest.fixture(scope="module")
def tar_bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.tgz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.addfile(tarfile.TarInfo("readme.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo("images/zeros.jpg")
        info.size = ZEROS_MB << 20
        tar.addfile(info, io.BufferedReader(Zeros(info.size)))
    assert path.stat().st_size < 2e6
    return path


@pytest.mark.parametrize("bomb", ["zip_bomb", "tar_bomb"])
def test_a_bomb_is_refused_quickly_before_anything_is_written(bomb, request, tmp_path):
    path = request.getfixturevalue(bomb)
    folder = tmp_path / "staging"
    folder.mkdir()
    started = time.perf_counter()
    with pytest.raises(ArchiveError, match=r"expands to 200\.0 MiB .*more than 100 times.*official source"):
        extract_into(path, folder)  # no cleanup of its own: whatever it wrote would still be here
    assert time.perf_counter() - started < 3
    assert not any(folder.iterdir())
    with pytest.raises(ArchiveError):
        safe_extract(path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_the_archive_as_a_whole_is_bounded_too(kind, tmp_path, monkeypatch):
    """Many members, each below the floor, that together expand far past the ratio."""
    monkeypatch.setattr(archive_module, "RATIO_FLOOR", 1 << 20)
    path = tmp_path / f"many.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
            for i in range(4):
                zipped.writestr(f"part{i}.txt", bytes(1 << 19))  # 512 KiB each, below the (lowered) floor
    else:
        with tarfile.open(path, "w:gz") as tar:
            for i in range(4):
                info = tarfile.TarInfo(f"part{i}.txt")
                info.size = 1 << 19
                tar.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match="the archive expands to"):
        extract_into(path, tmp_path / "out")


def test_the_bounds_are_inclusive(tmp_path, monkeypatch):
    """Exactly MAX_RATIO times, and exactly the free space, still extract."""
    floor = archive_module.RATIO_FLOOR
    archive_module.check_expansion(tmp_path, "x", 100 * floor, floor)
    with pytest.raises(ArchiveError):
        archive_module.check_expansion(tmp_path, "x", 100 * floor + 1, floor)
    archive_module.check_expansion(tmp_path, "x", floor, 1)  # at the floor: no ratio checked
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda folder: usage(10**6, 0, 1000))
    archive_module.check_space(tmp_path, 1000, tmp_path)
    with pytest.raises(ArchiveError):
        archive_module.check_space(tmp_path, 1001, tmp_path)


def test_images_that_do_not_compress_are_extracted(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "RATIO_FLOOR", 1 << 10)
    import os

    path = tmp_path / "photos.zip"
    data = os.urandom(1 << 16)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("a/1.jpg", data)
        zipped.writestr("a/list.txt", b"a/1.jpg 1\n" * 100)  # 10:1, a text list
    extract_into(path, tmp_path)
    assert (tmp_path / "a/1.jpg").read_bytes() == data


def test_an_archive_larger_than_the_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    path = tmp_path / "photos.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("1.jpg")
        info.size = 1000
        tar.addfile(info, io.BytesIO(bytes(1000)))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda folder: usage(10**6, 10**6 - 500, 500))
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match=r"only 0\.0 MiB is free .*free space"):
        extract_into(path, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


class Trickle(io.RawIOBase):
    """A member's stream that hands out 4 bytes per read (the declared size is counted over all of them)."""

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = min(4, self.left)
        self.left -= n
        return bytes(n)


def test_a_member_longer_than_it_declares_stops_at_its_declared_size(tmp_path):
    out = io.BytesIO()
    with pytest.raises(ArchiveError, match="more than the 10 bytes it declares"):
        archive_module._copy_at_most(Trickle(11), out, 10, tmp_path / "a.zip", "x")
    assert len(out.getvalue()) <= 10  # stopped at the bound, not after writing the rest
    out = io.BytesIO()
    archive_module._copy_at_most(Trickle(10), out, 10, tmp_path / "a.zip", "x")
    assert out.getvalue() == bytes(10)
