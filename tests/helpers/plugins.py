"""Installed plugins made at test time: a distribution's metadata (entry points) and its package in a folder
put on ``sys.path`` (``monkeypatch.syspath_prepend``), as ``pip install --target`` leaves them."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping


def write_distribution(
    folder: Path, name: str, entry_points: Mapping[str, Mapping[str, str]], modules: Mapping[str, str], version: str = "1.2.3"
) -> Path:
    """A distribution ``name`` in ``folder``: ``modules`` (dotted name -> source) and its dist-info with
    ``entry_points`` (group -> entry name -> "module:attribute")."""
    for module, source in modules.items():
        parts = module.split(".")
        for depth in range(1, len(parts)):
            package = folder.joinpath(*parts[:depth])
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").touch()
        folder.joinpath(*parts).with_suffix(".py").write_text(source)
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    top_levels = sorted({module.split(".")[0] for module in modules})
    (info / "top_level.txt").write_text("".join(f"{top}\n" for top in top_levels))
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n" for group, entries in entry_points.items())
    )
    return folder

