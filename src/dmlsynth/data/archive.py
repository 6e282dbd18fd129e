"""Safe extraction of dataset archives (tar, any compression, and zip).

:func:`safe_extract` checks every member of an archive before writing
anything, extracts into a temporary folder next to the destination and
renames it into place only when everything was written, so a folder under
the final name is always a complete extraction. Zip archives (Stanford
Online Products, In-Shop) get the same member checks (a symbolic link is
recognised by the Unix mode bits of its external attributes); a member whose
CRC does not match stops the extraction.

Refused members (the whole archive is rejected, nothing is written):
absolute paths, paths with ``..`` or that otherwise resolve outside the
destination, symbolic and hard links, character/block devices, FIFOs and
any other non-regular member. On top of these checks the standard
library's ``data`` extraction filter (PEP 706) is applied as a second line
of defence.

Refused archives (decompression bombs): an archive, or a zip member, that
expands to more than :data:`MAX_RATIO` times its compressed size (past
:data:`RATIO_FLOOR`), and one that does not fit on the destination's disk.
The declared sizes are checked before anything is written (a tar's as its
headers are read, so a bomb is refused before its data is decompressed), and
each zip member's write stops at its declared size (a zip's sizes can lie; a
tar member is always exactly its declared size).
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dmlsynth.data.errors import DataError
from dmlsynth.io import atomic_directory


# What reading a truncated or corrupt archive raises (gzip: EOFError / BadGzipFile, bz2/xz: OSError
# subclasses / EOFError, tar: ReadError).
_READ_ERRORS = (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


class ArchiveError(DataError):
    """An archive is damaged or contains members that must not be extracted."""


# Dataset archives hold JPEG or PNG images, which gzip and deflate leave at about 1:1, and text lists (under
# 20:1); zeros reach about 1000:1. An archive that expands 100 times its size is no dataset but a bomb.
MAX_RATIO = 100
# Below 16 MiB expanded no ratio is checked: small, repetitive text may compress well and fills no disk.
RATIO_FLOOR = 1 << 24


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.1f} MiB"


def check_expansion(archive: Path, what: str, expanded: int, compressed: int) -> None:
    """Refuse ``what`` (the archive or one of its members) if it expands more than :data:`MAX_RATIO` times."""
    if expanded > RATIO_FLOOR and expanded > MAX_RATIO * max(compressed, 1):
        raise ArchiveError(
            f"{archive}: {what} expands to {_gib(expanded)} from {_gib(compressed)} (more than {MAX_RATIO} times); "
            "a dataset archive of images does not compress like that, so it is not extracted (a decompression bomb "
            "or the wrong file). Delete it and get the file from the official source or a trusted mirror; if it is "
            "genuine, extract it yourself into the dataset's raw folder."
        )


def check_space(archive: Path, expanded: int, folder: Path) -> None:
    """Refuse to start an extraction of ``expanded`` bytes that cannot fit on ``folder``'s disk."""
    free = shutil.disk_usage(folder).free
    if expanded > free:
        raise ArchiveError(
            f"{archive} expands to {_gib(expanded)} but only {_gib(free)} is free at {folder}: free space (or put "
            "paths.data on a larger disk) and run again"
        )


def check_member(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` must not be extracted, or ``None`` if it is a plain file or folder inside the target."""
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return "path leaves the target folder ('..')"
    if member.issym():
        return f"symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder"
    return None


def _members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member, header by header (reading decompresses the archive: damage shows up here); the expansion is
    checked at each header, before the data it announces is decompressed."""
    size, members, expanded = archive.stat().st_size, [], 0
    try:
        for member in tar:
            members.append(member)
            expanded += member.size if member.isfile() else 0
            check_expansion(archive, "the archive", expanded, size)
    except (*_READ_ERRORS, OSError) as exc:
        raise _damaged(archive, exc) from exc
    return members


def _damaged(archive: Path, exc: BaseException) -> ArchiveError:
    return ArchiveError(
        f"{archive} is truncated or corrupt ({type(exc).__name__}: {exc}). Delete it and run again to download it "
        "again (or replace it with a complete copy)."
    )


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract the tar archive ``archive`` (any compression tarfile reads) to the folder ``dest``.

    ``dest`` is replaced if it exists. On any error nothing is left under
    ``dest`` or in the temporary folder (:func:`dmlsynth.io.atomic_directory`).
    """
    with atomic_directory(dest) as staging:
        extract_into(archive, staging)
    return Path(dest)


def _refuse(archive: Path, refused: list[tuple[str, str]]) -> None:
    if refused:
        listed = "; ".join(f"{name!r}: {why}" for name, why in refused[:5])
        more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
        raise ArchiveError(
            f"{archive} contains {len(refused)} member(s) that are not extracted for safety: {listed}{more}. "
            "The file is not the expected dataset archive; delete it and get the file from the official "
            "source or a trusted mirror."
        )


def check_zip_member(member: zipfile.ZipInfo) -> str | None:
    """Why a zip ``member`` must not be extracted (as :func:`check_member` for tar members), or ``None``."""
    name = member.filename
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path leaves the target folder ('..')"
    kind = stat.S_IFMT(member.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return "symbolic link"
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "not a regular file or folder"
    if member.flag_bits & 0x1:
        return "encrypted"
    return None


def _extract_zip(archive: Path, folder: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            _refuse(archive, [(m.filename, why) for m in members if (why := check_zip_member(m)) is not None])
            for member in members:
                check_expansion(archive, f"member {member.filename!r}", member.file_size, member.compress_size)
            expanded = sum(m.file_size for m in members)
            check_expansion(archive, "the archive", expanded, archive.stat().st_size)
            check_space(archive, expanded, folder)
            for member in members:
                target = folder / member.filename
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(target, "wb") as out:
                    _copy_at_most(source, out, member.file_size, archive, member.filename)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError) as exc:
        raise _damaged(archive, exc) from exc
    except OSError as exc:
        raise ArchiveError(
            f"cannot write the contents of {archive} to {folder.parent} ({exc}); check free disk space and permissions"
        ) from exc


def _copy_at_most(source, out, declared: int, archive: Path, name: str) -> None:
    """Copy ``source`` to ``out``, stopping at ``declared`` bytes (a CRC mismatch raises at the member's end)."""
    written = 0
    while chunk := source.read(1 << 20):
        written += len(chunk)
        if written > declared:
            raise ArchiveError(
                f"{archive}: member {name!r} holds more than the {declared} bytes it declares; the archive is "
                "damaged or forged. Delete it and get the file from the official source or a trusted mirror."
            )
        out.write(chunk)


def _starts_like_zip(archive: Path) -> bool:
    """A zip file starts with a local file header (or, empty, its end record). ``zipfile.is_zipfile`` looks for
    the end record near the file's end and so also accepts a tar whose last member is a zip."""
    with open(archive, "rb") as handle:
        return handle.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def extract_into(archive: str | os.PathLike[str], folder: Path) -> None:
    """Check every member of ``archive``, then extract it into the (empty) ``folder``."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist")
    if _starts_like_zip(archive):
        _extract_zip(archive, folder)
        return
    try:
        tar = tarfile.open(archive, "r:*")
    except (*_READ_ERRORS, OSError) as exc:
        raise _damaged(archive, exc) from exc
    with tar:
        members = _members(tar, archive)
        _refuse(archive, [(m.name, why) for m in members if (why := check_member(m)) is not None])
        check_space(archive, sum(m.size for m in members if m.isfile()), folder)
        try:
            tar.extractall(folder, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise ArchiveError(f"{archive}: member refused by the tar safety filter ({exc})") from exc
        except _READ_ERRORS as exc:
            raise _damaged(archive, exc) from exc
        except OSError as exc:
            raise ArchiveError(
                f"cannot write the contents of {archive} to {folder.parent} ({exc}); check free disk space "
                "and permissions"
            ) from exc
