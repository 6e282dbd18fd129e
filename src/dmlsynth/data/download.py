"""Verified, resumable downloads of dataset files.

:func:`fetch` makes sure a raw file is present in the raw-data folder with
the expected md5, downloading it if needed:

- a file already there (downloaded earlier, or placed by the user) is
  checked and used; a wrong checksum stops with a message, it is never
  deleted behind the user's back;
- a download goes to ``<name>.part`` and is renamed only after its md5
  matched, so a file under the final name is always complete;
- an interrupted download resumes with an HTTP ``Range`` request; a
  server that ignores ``Range`` (``200`` instead of ``206``), answers
  ``416`` or sends a ``Content-Range`` that does not continue the partial
  file makes the download restart cleanly from byte 0;
- a connection that drops is retried (resuming) a few times; if it keeps
  dropping, the ``.part`` file is kept and the message says that running
  again continues where it stopped.

Only the standard library (``urllib``) is used for HTTP; progress is shown
with tqdm.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from dmlsynth.data.errors import DataError

log = logging.getLogger("dmlsynth.data.download")

CHUNK = 1 << 20
# Pause before resuming a dropped transfer (module-level so tests can shorten it).
RETRY_WAIT_SECONDS = 2.0
# Connections one fetch may use when each dropped one still delivered data.
MAX_TRANSFERS = 100
USER_AGENT = "dmlsynth-dataset-download/1.0 (+https://github.com/)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DatasetFileError(DataError):
    """A dataset file is missing, damaged or could not be fetched; the message says what to do."""


class MissingFileError(DatasetFileError):
    """A raw file is not in the raw-data folder and no URL is configured for it."""


class ChecksumError(DatasetFileError):
    """A file's md5 differs from the published one."""


class DownloadError(DatasetFileError):
    """The HTTP transfer failed."""


def md5sum(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    url: str | None,
    dest: str | os.PathLike[str],
    md5: str | None,
    *,
    config_key: str,
    attempts: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    retry_wait: float | None = None,
) -> Path:
    """Return ``dest`` after making sure it holds the file with checksum ``md5``.

    ``config_key`` names the setting that holds ``url`` (for example
    ``dataset_settings.cars196.urls.images``) so messages can tell the user
    what to set. ``md5`` None: no checksum is published for the file (In-Shop's
    Google Drive files); it is used unchecked, with a warning that says how to
    pin the copy (the dataset's counts are still checked).
    """
    dest = Path(dest)
    if md5 is None:
        pin = config_key.replace(".urls.", ".md5.")
        if dest.is_file():
            log.warning("%s has no published md5: used as it is (md5 %s; set %s to pin it)", dest, md5sum(dest), pin)
            return dest
        md5 = _download_unchecked(url, dest, config_key=config_key, attempts=attempts, timeout=timeout, progress=progress, retry_wait=retry_wait)
        log.warning("downloaded %s, which has no published md5 (md5 %s; set %s to pin it)", dest, md5, pin)
        return dest
    md5 = md5.lower()
    if dest.is_file():
        actual = md5sum(dest)
        if actual == md5:
            log.info("%s present, md5 ok", dest)
            return dest
        raise ChecksumError(
            f"{dest} has md5 {actual}, expected {md5}: the file is damaged or a different version. "
            f"Delete it and run again"
            + (f" (it will be downloaded again from {url})" if url else ", or replace it with the correct file")
            + "."
        )
    part = _transfer(url, dest, md5, config_key=config_key, attempts=attempts, timeout=timeout, progress=progress, retry_wait=retry_wait)
    actual = md5sum(part)
    if actual != md5:
        part.unlink()
        raise ChecksumError(
            f"the file downloaded from {url} has md5 {actual}, expected {md5}: the server sent a different or "
            f"damaged file (deleted). Check {config_key} (a mirror may host another version), or download the "
            f"file yourself and place it at {dest}."
        )
    os.replace(part, dest)
    log.info("downloaded %s, md5 ok", dest)
    return dest


def _download_unchecked(url: str | None, dest: Path, **kwargs) -> str:
    part = _transfer(url, dest, None, **kwargs)
    os.replace(part, dest)
    return md5sum(dest)


def _transfer(
    url: str | None,
    dest: Path,
    md5: str | None,
    *,
    config_key: str,
    attempts: int,
    timeout: float,
    progress: bool,
    retry_wait: float | None,
) -> Path:
    """Download ``url`` into ``<dest>.part`` (resuming, retrying); return that file, not yet checked."""
    if not url:
        raise MissingFileError(
            f"{dest.name} is needed but not present: place the file at {dest}"
            + (f" (md5 {md5})" if md5 else "")
            + f", or set {config_key} in your config to a URL it can be downloaded from."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    # `attempts` counts transfers in a row that added nothing; a dropped connection that still
    # delivered data is resumed for free (up to MAX_TRANSFERS transfers in all).
    failures = 0
    for _ in range(MAX_TRANSFERS):
        before = part.stat().st_size if part.exists() else 0
        try:
            _download(url, part, timeout=timeout, progress=progress, desc=dest.name)
            break
        except _Retryable as exc:
            size = part.stat().st_size if part.exists() else 0
            failures = 0 if size > before else failures + 1
            if failures >= attempts:
                raise DownloadError(
                    f"downloading {url} failed {attempts} times in a row ({exc}); {size} bytes are kept in {part}. "
                    "Run again to resume, or download the file yourself and place it at "
                    f"{dest}" + (f" (md5 {md5})." if md5 else ".")
                ) from exc
            log.warning("download of %s interrupted (%s); resuming at byte %d", url, exc, size)
            time.sleep(RETRY_WAIT_SECONDS if retry_wait is None else retry_wait)
    else:
        raise DownloadError(
            f"downloading {url} needed more than {MAX_TRANSFERS} connections; {part} is kept: run again to resume."
        )
    return part


class _Retryable(Exception):
    """A transfer problem worth retrying (dropped connection, timeout, 5xx)."""


def _download(url: str, part: Path, *, timeout: float, progress: bool, desc: str) -> None:
    """Fill ``part`` with the body of ``url``, continuing an existing partial file if the server allows."""
    offset = part.stat().st_size if part.exists() else 0
    response = _open(url, offset, timeout)
    try:
        if response is None:  # 416 on a resume: the partial file cannot be continued
            log.warning("server refused to resume %s; restarting from the beginning", part)
            part.unlink(missing_ok=True)
            offset = 0
            response = _open(url, 0, timeout)
            assert response is not None  # 416 is only returned for a Range request
        mode = "wb"
        total = _length(response)
        if offset and response.status == 206:
            start, full = _parse_content_range(response.headers.get("Content-Range"))
            if start == offset:
                mode = "ab"
                total = full if full is not None else (offset + total if total is not None else None)
                log.info("resuming %s at byte %d", part, offset)
            else:
                # A range we did not ask for: continuing would corrupt the file.
                response.close()
                log.warning("server answered an unexpected range for %s; restarting from the beginning", part)
                part.unlink(missing_ok=True)
                offset = 0
                response = _open(url, 0, timeout)
                assert response is not None
                total = _length(response)
        elif offset:
            log.warning("server ignored the resume request for %s; restarting from the beginning", part)
            offset = 0
        _copy(response, part, mode, offset, total, progress, desc)
    finally:
        if response is not None:
            response.close()


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked below)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            exc.close()
            return None
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(
            f"{url} answered HTTP {exc.code} {exc.reason}: the URL is wrong or the file moved. "
            "Fix the URL in your config, or download the file yourself and place it in the raw-data folder."
        ) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, ConnectionError, TimeoutError)):
            raise _Retryable(str(exc.reason)) from exc
        raise DownloadError(
            f"cannot reach {url} ({exc.reason}): check the URL and your internet connection, or download the "
            "file yourself and place it in the raw-data folder."
        ) from exc
    except ValueError as exc:  # malformed URL / unknown scheme
        raise DownloadError(f"{url!r} is not a valid URL ({exc}); fix it in your config.") from exc
    except (ConnectionError, TimeoutError, http.client.HTTPException) as exc:
        raise _Retryable(str(exc) or type(exc).__name__) from exc


def _length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None, None
    return int(match.group(1)), (int(match.group(3)) if match.group(3) != "*" else None)


def _copy(
    response: http.client.HTTPResponse, part: Path, mode: str, offset: int, total: int | None, progress: bool, desc: str
) -> None:
    written = offset
    expected_body = None if total is None else total - offset
    try:
        with open(part, mode) as handle, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
            disable=not progress, mininterval=1.0,  # logs of cluster jobs get one update a second
        ) as bar:
            for block in iter(_reader(response), b""):
                handle.write(block)
                written += len(block)
                bar.update(len(block))
    except (ConnectionError, TimeoutError, socket.timeout, http.client.IncompleteRead) as exc:
        raise _Retryable(f"connection lost after {written} bytes ({type(exc).__name__})") from exc
    if expected_body is not None and written - offset < expected_body:
        raise _Retryable(f"connection closed after {written} of {total} bytes")


def _reader(response: http.client.HTTPResponse) -> Callable[[], bytes]:
    return lambda: response.read(CHUNK)

