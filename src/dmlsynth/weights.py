"""ImageNet weights of a backbone from a published file, a URL or a file the user gives, checksum-verified.

``dataset_settings.<dataset>.weights`` names where the weights come from (a
URL, or a path on this machine) and ``weights_sha256`` their SHA-256 (all 64
hex digits, or the leading ones, as torch hub names its files, e.g. the
``52deb4733`` of ``bn_inception-52deb4733.pth``). Unset, a backbone's
published file (:class:`PublishedWeights`) is used, checked against the hash
in its name.

- A download goes through ``torch.hub.download_url_to_file`` into torch hub's
  checkpoint folder (where torchvision keeps its weights too), which writes a
  temporary file, checks the hash and only then renames it: a file under the
  final name is always complete.
- A file that is already there (downloaded earlier, or given as a path) is
  hashed again before it is used; a mismatch stops with what to do, and the
  file is left alone.
- Loading is safe: ``.safetensors`` files through safetensors, anything else
  through ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dmlsynth.data.errors import DataError

_HEX = re.compile(r"^[0-9a-f]{8,64}$")


class WeightsError(DataError):
    """Backbone weights are missing, damaged, of another file, or not a plain state dict; the message says what to do."""


@dataclass(frozen=True)
class PublishedWeights:
    """The file a backbone's published ImageNet weights come in."""

    filename: str
    url: str | None  # None: no known working URL; the user gives one or the file
    sha256: str  # all or the leading hex digits of the file's SHA-256


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights of one run's backbone come from (``dataset_settings.<dataset>.weights``)."""

    location: str | None  # a URL or a local path; None: the backbone's published file
    sha256: str | None  # None: the published file's hash


def source_of(settings: Mapping[str, Any]) -> WeightsSource | None:
    """The weights the dataset settings ask for, or None when they name none (the backbone's own default)."""
    location, sha256 = settings.get("weights"), settings.get("weights_sha256")
    if location is None and sha256 is None:
        return None
    return WeightsSource(location, sha256)


def sha256sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("http", "https", "ftp", "file")


def checkpoint_dir() -> Path:
    """Where downloaded weights are kept: torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve(backbone: str, source: WeightsSource | None, published: PublishedWeights | None) -> Path:
    """The local file of the weights, downloaded if needed and checked against the expected SHA-256."""
    source = source or WeightsSource(None, None)
    expected = (source.sha256 or (published.sha256 if published and source.location is None else "") or "").lower()
    if source.location is None and published is None:
        raise WeightsError(f"backbone {backbone!r} has no published weights file: set dataset_settings.<dataset>.weights")
    if not expected:
        raise WeightsError(
            f"the weights of {backbone!r} at {source.location} have no checksum to be verified against: set "
            "dataset_settings.<dataset>.weights_sha256 to the file's SHA-256 (sha256sum FILE)"
        )
    if not _HEX.match(expected):
        raise WeightsError(f"weights_sha256 {expected!r} is not 8 to 64 hex digits of a SHA-256")
    location = source.location or published.url  # type: ignore[union-attr]
    if location is not None and not _is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise WeightsError(f"the weights file {path} of backbone {backbone!r} does not exist: fix dataset_settings.<dataset>.weights")
        _check(path, expected, f"the weights file {path}", "replace it with the right file or fix weights_sha256")
        return path
    filename = Path(urllib.parse.urlparse(location).path).name if location else published.filename  # type: ignore[union-attr]
    path = checkpoint_dir() / filename
    if path.is_file():
        _check(path, expected, f"{path} (downloaded earlier)", "delete it to download it again")
        return path
    if location is None:
        raise WeightsError(
            f"the ImageNet weights of {backbone!r} ({published.filename}) have no known download URL: give the file "  # type: ignore[union-attr]
            f"or a mirror with dataset_settings.<dataset>.weights, or place it at {path}"
        )
    return _download(location, path, expected, backbone)


def _check(path: Path, expected: str, what: str, fix: str) -> None:
    actual = sha256sum(path)
    if not actual.startswith(expected):
        raise WeightsError(f"{what} has SHA-256 {actual}, expected one starting {expected}: it is another or a damaged file; {fix}")


def _download(url: str, path: Path, expected: str, backbone: str) -> Path:
    import torch.hub

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=expected, progress=False)
    except RuntimeError as exc:  # torch hub's hash mismatch (the temporary file is removed)
        raise WeightsError(
            f"the weights downloaded from {url} for {backbone!r} do not match SHA-256 {expected} ({exc}): the server "
            "sent another file; check dataset_settings.<dataset>.weights and weights_sha256"
        ) from exc
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"cannot download the weights of {backbone!r} from {url} ({exc}): check the URL, or download the file "
            f"yourself and give its path in dataset_settings.<dataset>.weights"
        ) from exc
    return path


def load_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a weights file: safetensors, or a plain state dict that ``weights_only`` loading accepts."""
    import pickle

    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(
            f"{path} is not a plain state dict of tensors that can be loaded safely ({type(exc).__name__}: {exc}); "
            "give the published weights file"
        ) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict (names -> tensors); give the published weights file")
    return dict(state)
