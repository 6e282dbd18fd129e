"""One instruction set for the numbers: the CPU libraries' kernel dispatch pinned to one level.

PyTorch, oneDNN, MKL and OpenBLAS each pick their kernels from the CPU they load on; float reductions
then sum in another order on an AVX-512 machine than on an AVX2 one, and a training run's numbers (and
so the table's verdicts) differ from the first epochs on. ``reproducibility.cpu_isa: avx2`` (the
default) caps every library the jobs use at AVX2, which every x86-64 CPU of the last decade has, so the
same params and seed give the same digits on any of them; ``native`` lets each library use the best
instructions of its machine (faster, numbers of that CPU kind only).

The variables are read when a library loads, so they are set before numpy or torch is imported:
:func:`dmlsynth.cli.main` applies the job record's level first thing (:func:`pin_process`).

Which variables matter was measured on this project's training step and evaluation (a training
step's parameter sums and k-means/faiss results, bit by bit, with each variable alone; docs/development.md):

- ``ATEN_CPU_CAPABILITY`` (PyTorch's own kernels): ``default`` vs ``avx2`` changes the loss bits;
- ``ONEDNN_MAX_CPU_ISA`` (oneDNN: convolutions): ``AVX2`` on an AVX-512 CPU changes the weights' bits;
- ``OPENBLAS_CORETYPE`` (numpy, scikit-learn's k-means): ``SkylakeX`` vs ``Haswell`` changes a matmul's bits;
- ``MKL_CBWR`` (MKL's conditional numerical reproducibility; torch's BLAS): set because MKL is loaded, though
  the measured steps did not change on an AMD CPU, where MKL takes its AVX2 path anyway.

faiss's flat search gave the same bits with its generic, AVX2 and AVX-512 builds, so its loader is left alone;
so did numpy's own dispatch (sums, exp, log1p with ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

from dmlsynth.errors import DmlsynthError

# What each level sets; native sets nothing (and clears nothing a user set by hand).
VARIABLES: Mapping[str, Mapping[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
    },
    "native": {},
}
LEVELS = tuple(VARIABLES)  # the setting's default: the schema's reproducibility.cpu_isa
# The CPU flags a pinned level needs (/proc/cpuinfo): AVX2 kernels use FMA too.
REQUIRED_FLAGS: Mapping[str, tuple[str, ...]] = {"avx2": ("avx2", "fma"), "native": ()}
# Libraries whose dispatch the variables decide: once one is loaded, setting them changes nothing.
NUMERIC_LIBRARIES = ("numpy", "torch", "faiss", "sklearn", "scipy")


class CpuIsaError(DmlsynthError):
    """The CPU cannot run the pinned level."""


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's flags from ``path`` (Linux's cpuinfo; empty where it cannot be read)."""
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def missing_flags(level: str, flags: set[str] | None = None) -> list[str]:
    """The flags ``level`` needs that this CPU lacks (none where the flags cannot be read: not x86 Linux)."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return []
    return [flag for flag in REQUIRED_FLAGS[level] if flag not in flags]


def environment(level: str, flags: set[str] | None = None) -> dict[str, str]:
    """The variables that pin ``level``; a clear error where this CPU cannot run it."""
    if level not in LEVELS:
        raise CpuIsaError(f"reproducibility.cpu_isa is {level!r}; one of {', '.join(LEVELS)}")
    missing = missing_flags(level, flags)
    if missing:
        raise CpuIsaError(
            f"reproducibility.cpu_isa is {level!r} but this CPU lacks {', '.join(missing)}: its numbers cannot match "
            f"the pinned record. Set reproducibility.cpu_isa: native (--config reproducibility='{{cpu_isa: native}}') "
            f"to run with this CPU's own kernels; run.yaml records it and the table shows it"
        )
    return dict(VARIABLES[level])


def is_applied(level: str) -> bool:
    """Whether this process's environment holds ``level``'s variables."""
    return all(os.environ.get(name) == value for name, value in VARIABLES[level].items())


def apply(level: str) -> None:
    """Set ``level``'s variables in this process's environment (and its children's)."""
    os.environ.update(environment(level))


def loaded_libraries() -> list[str]:
    return [name for name in NUMERIC_LIBRARIES if name in sys.modules]


def level_of_record(argv: Sequence[str]) -> str | None:
    """The ``cpu_isa`` of the job record on a command line (``--job JSON``), read without any library."""
    for i, arg in enumerate(argv):
        text = argv[i + 1] if arg == "--job" and i + 1 < len(argv) else arg.removeprefix("--job=") if arg.startswith("--job=") else None
        if text is not None:
            try:
                return json.loads(text).get("cpu_isa")
            except (ValueError, AttributeError):
                return None
    return None


def pin_process(argv: Sequence[str]) -> None:
    """Before any numeric library loads: apply the level the command line's job record names."""
    level = level_of_record(argv)
    if level in LEVELS:
        try:
            apply(level)
        except CpuIsaError:
            pass  # the job reports it (dmlsynth.cli), as a one-line error


def in_effect() -> str:
    """The level this process's environment pins (``native`` where none is set in full)."""
    return next((level for level, variables in VARIABLES.items() if variables and is_applied(level)), "native")


def effective() -> dict[str, str]:
    """What the running process computes with, for run.yaml: the setting's variables as set and torch's
    dispatch as it took them (``AVX2`` when pinned, the CPU's best otherwise)."""
    facts = {name: os.environ[name] for name in sorted({n for v in VARIABLES.values() for n in v}) if name in os.environ}
    if "torch" in sys.modules:
        facts["torch_dispatch"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return facts
