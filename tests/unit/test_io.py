"""A write the filesystem refuses names the file and the reason, and leaves nothing that looks complete.

On a real full filesystem where this process may mount one (root: a 64 KiB tmpfs), and with the
errno faked where it may not.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest

from dmlsynth import io
from dmlsynth.errors import DmlsynthError


def _mount_tmpfs(folder, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 64 KiB filesystem (skipped where this process may not mount one)."""
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(folder, "64k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _torch(path):
    import torch

    io.save_torch({"weights": torch.zeros(40_000)}, path)  # 160 kB: more than the disk holds


def _text(path):
    io.atomic_write_text(path, "x" * 200_000)


def _numpy(path):
    with io.atomic_output(path) as tmp:
        np.savez(tmp, embeddings=np.zeros((400, 128), dtype=np.float32))


def _folder(path):
    with io.atomic_directory(path) as staging:
        (staging / "unet").mkdir()
        (staging / "unet" / "weights.bin").write_bytes(b"\0" * 200_000)


WRITERS = {"model.pt": _torch, "table.csv": _text, "embeddings.npz": _numpy, "generator": _folder}


@pytest.mark.parametrize("name", WRITERS)
def test_a_full_disk_names_the_file_and_leaves_nothing(full_disk, name):
    target = full_disk / "run" / name
    with pytest.raises(io.WriteError) as caught:
        WRITERS[name](target)
    message = str(caught.value)
    assert message.startswith(f"could not write {target}: no space left on device; free space on that disk")
    assert isinstance(caught.value, DmlsynthError) and caught.value.errno == errno.ENOSPC
    assert not target.exists() and os.listdir(target.parent) == []  # no final file, no temporary one


def test_torch_save_on_a_full_disk_is_one_error_not_two_tracebacks(full_disk):
    """torch's own file writer says "unexpected pos ..." twice; the error says what happened, with its cause kept."""
    with pytest.raises(io.WriteError) as caught:
        _torch(full_disk / "checkpoint.pt")
    assert "unexpected pos" not in str(caught.value)
    assert any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in _chain(caught.value))


def _chain(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_a_writer_without_an_errno_on_a_full_disk_is_named_too(full_disk):
    """safetensors reports a full disk as its own exception without an errno: the filesystem says it is full."""

    class SafetensorError(Exception):
        pass

    with pytest.raises(io.WriteError, match="no space left on device"):
        with io.atomic_output(full_disk / "lora.safetensors") as tmp:
            try:
                tmp.write_bytes(b"\0" * 200_000)
            except OSError:
                raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })") from None


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded")])
def test_the_errno_of_a_refused_write_says_why(tmp_path, monkeypatch, code, reason):
    """Wherever mounting is not allowed: torch.save failing as it does on a full disk (its error raised while
    handling the OSError of the write)."""
    import torch

    def full(obj, handle):
        handle.write(b"PK")
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 88640 vs 88536")

    monkeypatch.setattr(torch, "save", full)
    target = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(io.WriteError, match=f"^could not write {target}: {reason}; "):
        io.save_torch({}, target)
    assert os.listdir(target.parent) == []


def test_errors_that_are_not_about_writing_keep_their_type(tmp_path):
    """A writer's own bug, or a file it could not read, is not reported as a refused write."""
    with pytest.raises(FileNotFoundError):
        with io.atomic_output(tmp_path / "out.txt"):
            (tmp_path / "missing.txt").read_text()
    with pytest.raises(ZeroDivisionError):
        with io.atomic_directory(tmp_path / "folder"):
            1 / 0
    assert os.listdir(tmp_path) == []


def test_a_read_only_folder_is_named(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(io.WriteError, match=f"could not write {folder / 'x.txt'}: permission denied"):
            io.atomic_write_text(folder / "x.txt", "x")
    finally:
        folder.chmod(0o700)


def test_a_refused_file_inside_a_folder_is_named_by_its_final_path(tmp_path):
    """The writer saw the staging name; the message names where the file was going."""
    target = tmp_path / "generator"
    with pytest.raises(io.WriteError, match=f"^could not write {target / 'unet' / 'w.bin'}: no space left"):
        with io.atomic_directory(target) as staging:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "unet" / "w.bin"))
    assert os.listdir(tmp_path) == []
