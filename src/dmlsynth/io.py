"""Writing outputs so that a file under its final name is always complete.

Every output of the project goes through :func:`atomic_output`: the caller
writes to a temporary path in the same folder, and only when that succeeded
is it renamed to the final name (``os.replace``, atomic on POSIX). A crash,
a kill or an exception leaves no half-written file that looks complete.

Files get the permissions an ordinary ``open()`` would give them
(``0o666`` less the process umask), so results on a shared filesystem are
readable by the team; ``tempfile.mkstemp`` alone would leave them ``0600``.

A write the filesystem refuses (a full disk, a quota, a read-only mount) is
a :class:`WriteError` naming the file that could not be written and why —
never a library's own traceback (``torch.save``'s "unexpected pos 88640 vs
88536" on a full disk) — and leaves nothing under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from dmlsynth.errors import DmlsynthError


class WriteError(DmlsynthError, OSError):
    """An output could not be written; the message names the file and the filesystem's reason."""


# What the filesystem said, in words, and what to do about it.
_FULL = "free space on that disk, or set paths.data / paths.results / paths.logs to a disk with room; then run the same command again"
_REASONS = {
    errno.ENOSPC: ("no space left on device", _FULL),
    errno.EDQUOT: ("disk quota exceeded", _FULL),
    errno.EFBIG: ("file too large for the filesystem", "set paths.data / paths.results to another filesystem"),
    errno.EROFS: ("read-only file system", "set paths.data / paths.results / paths.logs to a writable folder"),
    errno.EACCES: ("permission denied", "make the folder writable, or set paths.* to a folder you may write"),
    errno.EPERM: ("operation not permitted", "make the folder writable, or set paths.* to a folder you may write"),
}
# Errors of a writer that are the filesystem's, whichever file the writer was at (a read fails with others).
_FILESYSTEM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def _os_errors(exc: BaseException) -> Iterator[OSError]:
    """The OSErrors of ``exc`` and of the exceptions it was raised from or while handling (torch wraps them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            yield exc
        exc = exc.__cause__ or exc.__context__


def _disk_full(folder: Path) -> bool:
    """Whether the filesystem of ``folder`` has no block left (a writer that reports no errno: safetensors)."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def write_error(path: str | os.PathLike[str], exc: BaseException, scratch: Path | None = None, any_errno: bool = False) -> WriteError | None:
    """The :class:`WriteError` for a failed write of ``path``, or None when ``exc`` is not about writing.

    ``exc`` is about writing when it (or an exception it came from) is an OSError of the filesystem
    (full, quota, read-only, I/O), any OSError with ``any_errno`` (the writer's own calls: creating the
    folder, the temporary file, the rename), or when the filesystem of ``scratch`` (where the bytes went)
    is full however the writer reported it.
    """
    if isinstance(exc, WriteError):
        return exc
    code = next((e.errno for e in _os_errors(exc) if any_errno or e.errno in _FILESYSTEM_ERRNOS), None)
    if code is None:
        if scratch is None or not _disk_full(scratch):
            return None
        code = errno.ENOSPC
    reason, what_to_do = _REASONS.get(code, (os.strerror(code).lower(), ""))
    error = WriteError(f"could not write {path}: {reason}" + (f"; {what_to_do}" if what_to_do else ""))
    error.errno = code
    return error


def _umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, final: Path, mode: int) -> None:
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the final suffix (``.x.tmp123.png``), so writers
    that pick a format from the suffix (matplotlib, numpy) behave as for the
    final file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc, any_errno=True) from exc
    tmp = Path(name)
    try:
        yield tmp
    except BaseException as exc:
        failed = write_error(path, exc, scratch=tmp.parent) if isinstance(exc, Exception) else None
        tmp.unlink(missing_ok=True)
        if failed is not None and failed is not exc:
            raise failed from exc
        raise
    try:
        _publish(tmp, path, 0o666)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc, any_errno=True) from exc


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through a temporary file (load it back with ``weights_only=True``).

    Written through a Python file object: torch's own file writer reports a full disk as
    "unexpected pos ..." without an errno; Python's says ENOSPC, which :class:`WriteError` names.
    """
    import torch

    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save a matplotlib figure through a temporary file and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder next to ``path``; it replaces ``path`` when the block succeeds.

    A staging folder left by a killed process is removed first, and on any
    error the staging folder is removed: a folder under the final name is
    always complete.
    """
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as exc:
        raise write_error(path, exc, any_errno=True) from exc
    try:
        yield staging
    except BaseException as exc:
        # The file of the folder that failed, under its final name (the writer saw the staging name).
        failed_file = next((e.filename for e in _os_errors(exc) if isinstance(e.filename, str)), None)
        named = path / Path(failed_file).relative_to(staging) if failed_file and Path(failed_file).is_relative_to(staging) else path
        failed = write_error(named, exc, scratch=staging) if isinstance(exc, Exception) else None
        shutil.rmtree(staging, ignore_errors=True)
        if failed is not None and failed is not exc:
            raise failed from exc
        raise
    try:
        os.chmod(staging, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise write_error(path, exc, any_errno=True) from exc


def read_yaml(path: str | os.PathLike[str], error: type[Exception], missing_hint: str) -> Any:
    """The YAML document of a file the user may have written; ``error`` says what is wrong with it.

    ``missing_hint`` completes "<path> does not exist; ..." with how to make the file.
    """
    import yaml  # here: the rest of this module is used by code that never reads YAML

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist; {missing_hint}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from exc
