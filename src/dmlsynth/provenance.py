"""What produced a number: the code that ran and the software environment.

Two records of the code, because either alone can mislead:

- :func:`code_digest` — a hash of the source files a stage executes: the
  module(s) it starts from and every ``dmlsynth`` module they import,
  transitively (read from the source with :mod:`ast`, so it is known before
  anything runs and costs no torch import). It is part of a job's identity
  (:meth:`dmlsynth.jobs.Job.identity`), which re-runs the job and keys its
  checkpoints; DVC's stage dependencies are the same files. A comment added
  to ``methods/symm.py`` re-runs the ``symm`` runs and nothing else.
  Modules that change no number (:data:`BOOKKEEPING`: they record, write,
  schedule, or build the job record and the command line, whose decisions
  are in the job's params) are neither hashed nor followed, and the registry
  is represented by the entries a job uses (passed as ``entries``), so adding
  a method to the registry re-runs nothing.
- :func:`code_version` — the git commit of the *project folder* (the folder
  with the Snakefile; ``$DMLSYNTH_PROJECT_DIR``, which the workflow sets, or
  the working directory) and whether its tree had local changes.

Torch-free: the Snakefile imports this module to build its DAG.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

PACKAGE = "dmlsynth"
PACKAGE_DIR = Path(__file__).resolve().parent
# The workflow exports the folder of its Snakefile here, so jobs record the project's git state.
PROJECT_DIR_VARIABLE = "DMLSYNTH_PROJECT_DIR"

# Modules that change no number: neither hashed nor followed (what only they import is not the job's
# computation). They record or write results, list, load or check entries (contract: it only stops a plugin's
# method that breaks it from training); build the job record and parse the command line (what they decide is
# in the record's params: a new default is a new params value); schedule and supervise a job (which GPU, whether
# its workflow lives, one job per run folder and its SLURM job, the machine's load); remove stale files and track (the commands
# package module); word the commands printed after a failure (recovery). ``data.manifest`` reads a manifest's CSV: the numbers come from the file, which the
# prepare_data job writes (its digest names the module, :class:`dmlsynth.jobs.Jobs`).
BOOKKEEPING = frozenset(
    f"{PACKAGE}.{name}"
    for name in (
        "provenance", "io", "layout", "tracking", "docblocks", "registry", "errors", "plugins", "catalog", "contract",
        "jobs", "cli", "commands", "workflow", "heartbeat", "machine", "gpu_slots", "run_lock", "cluster", "data.manifest",
        "recovery",
    )
)  # fmt: skip

PACKAGES = [
    "dmlsynth",
    "torch",
    "torchvision",
    "pytorch-metric-learning",
    "faiss-cpu",
    "numpy",
    "pandas",
    "scikit-learn",
    "diffusers",
    "transformers",
    "snakemake",
    "mlflow",
    "dvc",
]


def params_hash(params: Mapping[str, Any]) -> str:
    """A short hash of resolved params (what a run records and is keyed on)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def module_file(module: str) -> Path:
    """The source file of a ``dmlsynth`` module (``dmlsynth.methods.iaa`` -> ``.../methods/iaa.py``)."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        raise ValueError(f"{module!r} is not a module of {PACKAGE}")
    relative = Path(*module.split(".")[1:])
    package_init = PACKAGE_DIR / relative / "__init__.py"
    if package_init.is_file():
        return package_init
    file = (PACKAGE_DIR / relative).with_suffix(".py")
    if not file.is_file():
        raise FileNotFoundError(f"no source file for module {module} ({file})")
    return file


def _is_package(module: str) -> bool:
    return module_file(module).name == "__init__.py"


@functools.lru_cache(maxsize=None)
def _direct_imports(module: str) -> frozenset[str]:
    """``dmlsynth`` modules imported anywhere in ``module``'s source (function-level imports too)."""
    tree = ast.parse(module_file(module).read_text(), filename=str(module_file(module)))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        # The deepest prefix that is a dmlsynth module ("dmlsynth.io.atomic_write_text" -> "dmlsynth.io").
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            try:
                module_file(candidate)
            except (ValueError, FileNotFoundError):
                continue
            found.add(candidate)
            return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                add(f"{origin}.{alias.name}")
    # Importing a submodule runs its parent packages' __init__ too (the module's own parents included).
    for name in [*found, module]:
        parts = name.split(".")
        found.update(".".join(parts[:end]) for end in range(1, len(parts)))
    found.discard(module)
    return frozenset(found)


def is_own(module: str) -> bool:
    """Whether ``module`` is dmlsynth's (else a plugin's, :mod:`dmlsynth.plugins`)."""
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def module_closure(modules: Iterable[str]) -> list[str]:
    """``modules`` and every ``dmlsynth`` module they import, transitively (sorted), not following the
    imports of :data:`BOOKKEEPING` modules (``modules`` themselves are followed); a plugin's modules are
    left out (they count by :func:`dmlsynth.plugins.code_fingerprint`)."""
    roots = [m for m in modules if is_own(m)]
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module in BOOKKEEPING and module not in roots:
            continue
        todo.extend(_direct_imports(module) - seen)
    return sorted(seen)


def hashed_modules(modules: Iterable[str]) -> list[str]:
    """The modules of :func:`module_closure` whose source a digest hashes: all but bookkeeping, which
    counts only where a job names it as where its code starts (``modules``)."""
    roots = set(modules)
    return [m for m in module_closure(roots) if m not in BOOKKEEPING or m in roots]


def source_files(modules: Iterable[str]) -> list[Path]:
    """The source files of :func:`hashed_modules` (absolute paths, sorted)."""
    return sorted({module_file(m) for m in hashed_modules(modules)})


def read_source(file: Path) -> bytes:
    """A module's source as a digest reads it (the re-run tests edit it here)."""
    return file.read_bytes()


@functools.lru_cache(maxsize=None)
def _digest(modules: tuple[str, ...], entries: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for file in source_files(modules):
        digest.update(file.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(read_source(file) + b"\0")
    for entry in entries:
        digest.update(entry.encode() + b"\0")
    return digest.hexdigest()[:16]


def code_digest(modules: Iterable[str], entries: Iterable[str] = ()) -> str:
    """Hash of the source of ``modules`` and everything they import, and of ``entries``
    (the ``repr`` of the registry entries the job uses), 16 hex digits. A plugin's module among
    ``modules`` counts by its package's source or its distribution's version (:mod:`dmlsynth.plugins`)."""
    from dmlsynth.plugins import code_fingerprint

    modules = set(modules)
    foreign = sorted({code_fingerprint(m) for m in modules if not is_own(m)})
    return _digest(tuple(sorted(m for m in modules if is_own(m))), tuple(sorted(entries)) + tuple(foreign))


# Where the training's code starts; the job's own registry entries add their modules.
TRAINING_MODULE = f"{PACKAGE}.training.loop"
# Fields of a registry entry that only describe it (help texts): they change no number.
HELP_FIELDS = frozenset({"description"})


def stable_repr(value: Any) -> str:
    """The same text for the same value in every process (sets sorted: their order follows string
    hashing, which differs between Python processes); an entry's help texts (:data:`HELP_FIELDS`) left out."""
    import dataclasses

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            # A field added later with metadata {"identity": "omit_if_default"} leaves the identity of the
            # entries that keep its default as it was (a plugin loss's `build`).
            def default(f: dataclasses.Field) -> Any:
                return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

            fields = [
                f for f in dataclasses.fields(v)
                if f.name not in HELP_FIELDS
                and not (f.metadata.get("identity") == "omit_if_default" and getattr(v, f.name) == default(f))
            ]  # fmt: skip
            return {"__type__": type(v).__name__, **{f.name: plain(getattr(v, f.name)) for f in fields}}
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (set, frozenset)):
            return sorted(plain(x) for x in v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(value), sort_keys=True, default=str)


def other_checkout(project: str | Path, what: str = "the workflow in") -> str | None:
    """Why the workflow (or a job run by hand: ``what``) of ``project`` must not run with the imported package,
    or None.

    A checkout with a package of its own (``<project>/src/dmlsynth``) must import that one: otherwise the
    code digests (what re-runs a job) come from one tree while the git commit and DVC's dependencies
    describe another. A workflow folder without a package of its own uses the installed one.
    """
    own = Path(project).resolve() / "src" / PACKAGE
    if own.is_dir() and own.resolve() != PACKAGE_DIR:
        return (
            f"{what} {Path(project).resolve()} imports dmlsynth from {PACKAGE_DIR}, another checkout: its code "
            f"would decide the re-runs while {own} is what git and DVC record. Install this checkout "
            f"(pip install -e {Path(project).resolve()}) or run with PYTHONPATH={own.parent}"
        )
    return None


def project_dir() -> Path:
    return Path(os.environ.get(PROJECT_DIR_VARIABLE) or Path.cwd())


def code_version(root: str | Path | None = None) -> dict[str, str | bool]:
    """The git commit of the project folder (and whether its tree had local changes)."""
    root = Path(root) if root else project_dir()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty, "project_dir": str(root), "dmlsynth_version": _version("dmlsynth")}


def plugin_versions(params: Mapping[str, Any]) -> dict[str, str]:
    """The plugins (:mod:`dmlsynth.plugins`) a run's ``params`` use: ``"<kind>.<name>"`` -> distribution and
    version; empty for a run of built-in entries only."""
    from dmlsynth import plugins

    return plugins.versions({"methods": params["method"], "losses": params["loss"], "datasets": params["dataset"]})


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(device: str | None = None) -> dict[str, str]:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    env.update({f"package.{name}": _version(name) for name in PACKAGES})
    if device is not None:
        env["device"] = device
    try:
        import torch

        env["torch.cuda"] = torch.version.cuda or "none"
        env["torch.threads"] = str(torch.get_num_threads())
        from dmlsynth.machine import cpu_signature

        env["cpu"] = cpu_signature()  # float results on the CPU depend on it (dmlsynth.machine)
        from dmlsynth import cpu_isa

        # The instruction set the CPU libraries were pinned to (reproducibility.cpu_isa) and torch's dispatch.
        env["cpu_isa"] = cpu_isa.in_effect()
        env["cpu_isa.torch_dispatch"] = torch.backends.cpu.get_cpu_capability()
        if device and device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return env
