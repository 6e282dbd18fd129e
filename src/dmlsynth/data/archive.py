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
    try:
        return tar.getmembers()  # reads (decompresses) the whole archive: damage shows up here
    except (*_READ_ERRORS, OSError) as exc:
        raise _damaged(archive, exc) from exc


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
                target = folder / member.filename
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)  # a CRC mismatch raises at the member's end
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError, NotImplementedError) as exc:
        raise _damaged(archive, exc) from exc
    except OSError as exc:
        raise ArchiveError(
            f"cannot write the contents of {archive} to {folder.parent} ({exc}); check free disk space and permissions"
        ) from exc


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
