"""Writing outputs so that a file under its final name is always complete.

Every output of the project goes through :func:`atomic_output`: the caller
writes to a temporary path in the same folder, and only when that succeeded
is it renamed to the final name (``os.replace``, atomic on POSIX). A crash,
a kill or an exception leaves no half-written file that looks complete.

Files get the permissions an ordinary ``open()`` would give them
(``0o666`` less the process umask), so results on a shared filesystem are
readable by the team; ``tempfile.mkstemp`` alone would leave them ``0600``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _publish(tmp, path, 0o666)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through a temporary file (load it back with ``weights_only=True``)."""
    import torch

    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
