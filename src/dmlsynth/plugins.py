"""Methods, losses and datasets from other packages: plugins declared by entry points.

A package adds entries to dmlsynth's registry without a change to dmlsynth by declaring, in its
``pyproject.toml``::

    [project.entry-points."dmlsynth.methods"]
    mixup = "my_package.spec:MIXUP"          # a dmlsynth.registry.MethodSpec named "mixup"

(``dmlsynth.losses``: a ``LossSpec`` with ``build``; ``dmlsynth.datasets``: a ``DatasetSpec``). The
registry loads them when it is imported (:func:`install`): the entry point's object is read, never the
code it names, so the module holding the spec must not import torch (the registry stays torch-free, as
the Snakefile's DAG building needs). Then the schema, the job matrix, the controls, validation, ``dmlsynth
list``, docs/configuration.md and ``dvc.yaml`` treat it like a built-in entry.

A plugin's code is part of a job's identity (:func:`code_fingerprint`, used by
:func:`dmlsynth.provenance.code_digest`): source that is not inside an installed ``site-packages``
(an editable install, a folder on ``PYTHONPATH``) is digested file by file like dmlsynth's own
modules, so editing it re-runs exactly the jobs that use it; a package installed from a wheel counts
by its distribution's name and version.

This module imports nothing of dmlsynth at load but :mod:`dmlsynth.errors`: the registry passes
its tables and spec classes to :func:`install` (no import cycle).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, MutableMapping

from dmlsynth.errors import DmlsynthError

# The table each entry-point group fills, by the registry's name of the table.
GROUPS = {"datasets": "dmlsynth.datasets", "losses": "dmlsynth.losses", "methods": "dmlsynth.methods"}
FIX = "fix the plugin's entry point or uninstall it (pip uninstall {dist})"


class PluginError(DmlsynthError, ImportError):
    """An installed plugin cannot be loaded; the message names its distribution and what to fix."""


@dataclass(frozen=True)
class Plugin:
    """One registry entry that an installed distribution adds."""

    kind: str  # "datasets", "losses" or "methods"
    name: str
    distribution: str
    version: str
    value: str  # the entry point's target, "module:attribute"

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"


# What install() added, by (kind, name): `dmlsynth plugins` lists it, runs record it.
INSTALLED: dict[tuple[str, str], Plugin] = {}


def _distribution(entry_point: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "unknown distribution", "unknown version"
    return dist.metadata["Name"], dist.version


def _problem(entry_point: metadata.EntryPoint, group: str, message: str) -> str:
    dist, version = _distribution(entry_point)
    return (
        f"plugin {entry_point.name!r} ({group} = {entry_point.value!r}) of {dist} {version}: {message}; "
        + FIX.format(dist=dist)
    )


def _load_one(entry_point, kind: str, spec_type: type, table: Mapping[str, Any], builtin: set[str]) -> tuple[Any, str | None]:
    group = GROUPS[kind]
    try:
        spec = entry_point.load()
    except Exception as exc:  # whatever the plugin's module raises, reported as the plugin's
        return None, _problem(entry_point, group, f"importing it failed ({type(exc).__name__}: {exc})")
    if not isinstance(spec, spec_type):
        return None, _problem(
            entry_point, group, f"it names a {type(spec).__name__}, not a dmlsynth.registry.{spec_type.__name__}"
        )
    if spec.name != entry_point.name:
        return None, _problem(entry_point, group, f"the entry point's name differs from its spec's name {spec.name!r}")
    if spec.name in builtin:
        return None, _problem(entry_point, group, f"{kind[:-1]} {spec.name!r} is built into dmlsynth: rename the plugin's entry")
    if spec.name in table:
        other = INSTALLED[(kind, spec.name)]
        return None, _problem(entry_point, group, f"{other.label} already adds {kind[:-1]} {spec.name!r}: rename one of them")
    return spec, None


def install(tables: Mapping[str, MutableMapping[str, Any]], spec_types: Mapping[str, type]) -> None:
    """Add every installed plugin's spec to the registry's ``tables`` (by kind); raise one
    :class:`PluginError` listing every plugin that cannot be added, so nothing runs with half of them."""
    problems: list[str] = []
    for kind, group in GROUPS.items():
        table = tables[kind]
        builtin = set(table)
        for entry_point in sorted(metadata.entry_points(group=group), key=lambda e: (e.name, e.value)):
            spec, problem = _load_one(entry_point, kind, spec_types[kind], table, builtin)
            if problem:
                problems.append(problem)
                continue
            table[spec.name] = spec
            INSTALLED[(kind, spec.name)] = Plugin(kind, spec.name, *_distribution(entry_point), entry_point.value)
    if problems:
        raise PluginError("dmlsynth cannot load its plugins:\n  " + "\n  ".join(problems))


def plugin_of(kind: str, name: str) -> Plugin | None:
    """The plugin that adds entry ``name`` of ``kind``, or None for a built-in entry."""
    return INSTALLED.get((kind, name))


def _is_installed_copy(path: Path) -> bool:
    """Whether ``path`` lies in an installed package folder (a wheel's files), not in a source tree."""
    return any(part in ("site-packages", "dist-packages") for part in path.parts)


def _package_files(top: str) -> tuple[Path, list[Path]]:
    """The folder of top-level module ``top`` and its Python files (all of a package's, one module's own)."""
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise PluginError(f"the plugin module {top!r} cannot be found: is its package installed in this environment?")
    if spec.submodule_search_locations:  # a package (a namespace package too): all of its Python source
        locations = [Path(location).resolve() for location in spec.submodule_search_locations]
        return locations[0], sorted(p for location in locations for p in location.rglob("*.py"))
    origin = Path(spec.origin).resolve()
    return origin.parent, [origin]


def code_fingerprint(module: str) -> str:
    """What stands for a plugin module's code in a job's digest: the source of its whole top-level
    package (every ``.py`` file; a module imports its siblings) when it is a source tree, or the
    distribution's name and version when it is installed from a wheel."""
    top = module.split(".")[0]
    root, files = _package_files(top)
    names = metadata.packages_distributions().get(top) if _is_installed_copy(root) else None
    if names:  # a wheel's copy (without a known distribution its source counts, as below)
        return "plugin " + ",".join(f"{name}=={metadata.version(name)}" for name in sorted(set(names)))
    digest = hashlib.sha256()
    for file in files:
        relative = file.relative_to(root).as_posix() if file.is_relative_to(root) else file.name
        digest.update(relative.encode() + b"\0" + file.read_bytes() + b"\0")
    return f"plugin {top} source {digest.hexdigest()[:16]}"


def versions(entries: Mapping[str, str]) -> dict[str, str]:
    """For ``entries`` (kind -> name) of one run, the plugins among them: ``"<kind>.<name>"`` -> the
    distribution and version (what run.yaml and MLflow record)."""
    found = {}
    for kind, name in entries.items():
        plugin = plugin_of(kind, name)
        if plugin is not None:
            found[f"{kind[:-1]}.{name}"] = plugin.label
    return found


def render() -> str:
    """What ``dmlsynth plugins`` prints."""
    if not INSTALLED:
        groups = ", ".join(GROUPS.values())
        return f"no plugins installed (a package adds entries by the entry-point groups {groups}; docs/extending.md)\n"
    lines = []
    for (kind, name), plugin in sorted(INSTALLED.items()):
        lines.append(f"{kind[:-1]:<8} {name:<20} {plugin.label:<30} {plugin.value}")
    return "\n".join(lines) + "\n"

