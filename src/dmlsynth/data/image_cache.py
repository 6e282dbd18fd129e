"""A resized JPEG copy of a photo dataset, written once after the dataset is prepared.

Training decodes every image in every epoch. CUB's and Cars' photos are about
500x375 pixels and 100 KB each; a copy whose short side is 256 pixels (the
``Resize(256)`` of the evaluation transform, and 1.14x the 224-pixel crops of
training) decodes about three times faster. ``dataset_settings.<dataset>.
cache_short_side`` sets that size (0: no copy, training reads the originals).

Layout, next to the manifest (``{data}/{dataset}/resized/``)::

    settings.json        {"short_side": 256, "quality": 95, "format": 1}
    images/ab/<key>.jpg  one RGB JPEG per source image; <key> hashes the source's bytes and the settings
    index.csv            written last (its presence means the copy is complete):
                         path (as in the manifest), cached (relative to resized/),
                         source_bytes, source_sha256, width, height (of the copy)

Resizing is what ``torchvision.transforms.Resize(short_side)`` does (bilinear
with antialiasing, the long side truncated to an integer), so evaluating on
the copy differs from evaluating on the original only by the JPEG
re-encoding (quality 95). Images whose short side is already at most
``short_side`` keep their size.

Invalidation: the ``cache_images`` rule runs again whenever the manifest is
rewritten (the dataset was prepared again) or ``cache_short_side`` changes;
a copy whose key (source bytes + settings) is unchanged is reused, so a
rebuild over the same images costs a read and a hash per image. Training
(:func:`open_cache`) checks that the index lists every image of the manifest
with the byte size the file has now, and stops with the command to rebuild
otherwise: a copy of other images is never used silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dmlsynth import recovery
from dmlsynth.data.errors import DataError
from dmlsynth.data.manifest import read_manifest
from dmlsynth.io import WriteError, atomic_output, atomic_write_text
from dmlsynth.layout import RESIZED, RESIZED_INDEX as INDEX

# Inside the copy's folder.
SETTINGS = "settings.json"
IMAGES = "images"
QUALITY = 95
# Bumped when the way copies are made changes, so older copies are rebuilt.
FORMAT = 1
INDEX_COLUMNS = ["path", "cached", "source_bytes", "source_sha256", "width", "height"]

log = logging.getLogger("dmlsynth.data.image_cache")


class ImageCacheError(DataError):
    """The resized copy is missing, incomplete or was made from other images; the message says how to rebuild it."""


def cache_dir(manifest: str | os.PathLike[str]) -> Path:
    """The resized copy of the dataset whose manifest is ``manifest``."""
    return Path(manifest).parent / RESIZED


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) after ``torchvision.transforms.Resize(short_side)``; never enlarges."""
    short, long = (width, height) if width <= height else (height, width)
    if short <= short_side:
        return width, height
    new_long = int(short_side * long / short)
    return (short_side, new_long) if width <= height else (new_long, short_side)


def _settings(short_side: int) -> dict[str, int]:
    return {"short_side": int(short_side), "quality": QUALITY, "format": FORMAT}


def _cache_key(source_sha256: str, settings: Mapping[str, int]) -> str:
    return hashlib.sha256(f"{source_sha256}:{json.dumps(dict(settings), sort_keys=True)}".encode()).hexdigest()[:40]


def _copy_one(source: Path, out_dir: Path, settings: Mapping[str, int]) -> dict[str, object]:
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = _cache_key(digest, settings)
    relative = f"{IMAGES}/{key[:2]}/{key}.jpg"
    target = out_dir / relative
    reused = target.is_file()
    try:
        if reused:  # written atomically, so complete: made from these bytes with these settings
            with Image.open(target) as cached:
                width, height = cached.size
        else:
            with Image.open(io.BytesIO(data)) as image:
                rgb = image.convert("RGB")
            width, height = resized_size(*rgb.size, settings["short_side"])
            if (width, height) != rgb.size:
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(target) as tmp:
                rgb.save(tmp, format="JPEG", quality=settings["quality"])
    except WriteError:
        raise  # the copy could not be written (a full disk): the source is fine
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageCacheError(
            f"cannot make the resized copy of {source} ({exc}); the dataset folder is damaged: delete it and "
            "prepare the dataset again"
        ) from exc
    return {
        "cached": relative,
        "source_bytes": len(data),
        "source_sha256": digest,
        "width": width,
        "height": height,
        "reused": reused,
    }


def build_cache(
    manifest: str | os.PathLike[str], short_side: int, threads: int = 1, progress: bool = True
) -> Path:
    """Write the resized copy of every image of ``manifest``; returns the index (written last)."""
    if short_side < 1:
        raise ValueError(f"short_side must be positive, got {short_side}")
    manifest = Path(manifest)
    frame = read_manifest(manifest)
    out_dir = cache_dir(manifest)
    index = out_dir / INDEX
    index.unlink(missing_ok=True)  # from here on, no index until every copy exists
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(short_side)
    atomic_write_text(out_dir / SETTINGS, json.dumps(settings, sort_keys=True) + "\n")
    sources = [Path(f) for f in frame["file"]]
    # PIL releases the GIL while decoding, resizing and encoding: threads scale.
    with ThreadPoolExecutor(max(1, int(threads))) as pool:
        rows = list(
            tqdm(
                pool.map(lambda s: _copy_one(s, out_dir, settings), sources),
                total=len(sources),
                desc="resized copies",
                unit="img",
                disable=not progress,
                mininterval=2.0,
            )
        )
    table = pd.DataFrame(rows)
    table.insert(0, "path", frame["path"].tolist())
    _remove_unlisted(out_dir / IMAGES, {out_dir / c for c in table["cached"]})
    atomic_write_text(index, table[INDEX_COLUMNS].to_csv(index=False))
    log.info(
        "resized copy of %d images (short side %d, %d reused from an earlier build) in %s: %.0f MB",
        len(table),
        short_side,
        int(table["reused"].sum()),
        out_dir,
        sum((out_dir / c).stat().st_size for c in set(table["cached"])) / 1e6,
    )
    return index


def _remove_unlisted(images_dir: Path, keep: set[Path]) -> None:
    # Copies of images no longer in the manifest, and temporary files of a killed build.
    for file in images_dir.rglob("*"):
        if file.is_file() and file not in keep:
            file.unlink()


@dataclass(frozen=True)
class ImageCache:
    """A checked resized copy: maps each source file of the manifest to its copy."""

    directory: Path
    short_side: int
    files: Mapping[str, str]  # absolute source file (as in read_manifest's ``file``) -> absolute copy

    @property
    def fix(self) -> str:
        """What to do about a damaged copy."""
        return f"the resized copy is damaged: delete {self.directory} and run again (the cache_images rule makes it anew)"

    def lookup(self, files: Iterable[str]) -> list[str]:
        """The copy of each file; files that are not in the dataset (generated images) stay as they are."""
        return [self.files.get(f, f) for f in files]


def open_cache(manifest: str | os.PathLike[str], short_side: int, frame: pd.DataFrame | None = None) -> ImageCache:
    """The resized copy of ``manifest``'s images, checked against the manifest and ``short_side``."""
    manifest = Path(manifest)
    out_dir = cache_dir(manifest)
    index = out_dir / INDEX
    rebuild = (
        f"build it with `{recovery.make(index, cores=8)}` (`{recovery.remake(index, cores=8)}` rebuilds it), "
        f"or set cache_short_side: 0 in dataset_settings to train on the original images"
    )
    if not index.is_file():
        raise ImageCacheError(f"the resized copy of {manifest.parent} ({out_dir}) is missing or incomplete: {rebuild}")
    try:
        settings = json.loads((out_dir / SETTINGS).read_text())
        table = pd.read_csv(index, dtype={"path": str, "cached": str, "source_sha256": str})
    except (OSError, ValueError) as exc:
        raise ImageCacheError(f"the resized copy in {out_dir} is unreadable ({exc}): {rebuild}") from exc
    if settings != _settings(short_side):
        raise ImageCacheError(
            f"the resized copy in {out_dir} was made with {settings}, but the config asks for short side "
            f"{short_side}: {rebuild}"
        )
    missing_columns = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing_columns:
        raise ImageCacheError(f"{index} lacks columns {missing_columns}: {rebuild}")
    if frame is None:
        frame = read_manifest(manifest)
    by_path = dict(zip(table["path"], zip(table["cached"], table["source_bytes"])))
    files: dict[str, str] = {}
    for path, file in zip(frame["path"], frame["file"]):
        entry = by_path.get(path)
        if entry is None:
            raise ImageCacheError(f"the resized copy in {out_dir} has no copy of {path}: it was made from other images; {rebuild}")
        cached, size = entry
        if os.stat(file).st_size != int(size):
            raise ImageCacheError(
                f"{file} changed after its resized copy was made ({out_dir}): {rebuild}"
            )
        copy = out_dir / cached
        if not copy.is_file():
            raise ImageCacheError(f"the resized copy {copy} of {path} is missing: {rebuild}")
        files[file] = str(copy)
    return ImageCache(directory=out_dir, short_side=int(short_side), files=files)
