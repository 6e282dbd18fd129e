"""One GPU per job on a machine with several: GPU slots claimed through lock files.

``snakemake --resources gpu=N`` only counts: it runs GPU jobs while their
``gpu`` resources add up to at most N, but tells no job which GPU is its own
(Snakemake has no such facility), so every job would use ``cuda:0``. A GPU
job of the workflow therefore starts as ``dmlsynth <command> --gpus K`` (K:
the job's own ``gpu`` resource) with ``$DMLSYNTH_GPU_SLOTS`` = N (the
Snakefile exports N of ``--resources``; ``--gpu-slots N`` says it by hand)
and, before CUDA starts, :func:`claim` takes K free slots
of 0..N-1 and sets ``CUDA_VISIBLE_DEVICES`` to those GPUs:

- a slot is taken by locking ``.snakemake/dmlsynth/gpu-slots/slot<i>.lock``
  with a POSIX record lock (``fcntl.lockf``) held for the life of the
  process. The kernel drops the lock when the process ends, however it ends
  (``kill -9`` too), so a killed job never leaves a slot taken; record locks
  are not inherited by the loader's worker processes;
- slot i is GPU i, or the i-th entry of ``CUDA_VISIBLE_DEVICES`` when
  Snakemake itself was started with one (``CUDA_VISIBLE_DEVICES=4,5,6,7
  snakemake --resources gpu=4 ...`` uses GPUs 4-7);
- since Snakemake never runs jobs needing more than N at once, a job finds
  its slots free; if another process holds them (a second workflow in the
  same folder), it waits.

Nothing is changed when the job runs under SLURM (``SLURM_JOB_ID`` is set:
the scheduler has already put the job's GPUs into ``CUDA_VISIBLE_DEVICES``),
when N is 0 (no ``--resources gpu=N``) or when K is 0 (a CPU job).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import Mapping, MutableMapping
from dmlsynth.errors import DmlsynthError

log = logging.getLogger("dmlsynth.gpu_slots")

SLOT_DIR = Path(".snakemake") / "dmlsynth" / "gpu-slots"
# N of `--resources gpu=N`, as the workflow exports it to its jobs (the default of --gpu-slots).
GPU_SLOTS_VARIABLE = "DMLSYNTH_GPU_SLOTS"
# One folder per GPU the NVIDIA driver knows (Linux); read without starting CUDA.
DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")


class GpuSlotError(DmlsynthError, ValueError):
    """More GPU slots are asked for than there are GPUs; the message says what to pass instead."""


# Held for the life of the process: closing a descriptor would release its lock.
_held: list[int] = []


def schedulers_assignment(environ: Mapping[str, str]) -> bool:
    """True where a cluster scheduler assigns the GPUs itself (SLURM sets CUDA_VISIBLE_DEVICES per job)."""
    return "SLURM_JOB_ID" in environ


def _devices(pool: int, environ: Mapping[str, str], driver_gpus: Path = DRIVER_GPUS) -> list[str]:
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        present = len(list(driver_gpus.iterdir())) if driver_gpus.is_dir() else None
        if present is not None and present < pool:
            # A slot without a GPU would leave its job none to see (and `device: auto` would quietly use the CPU).
            raise GpuSlotError(
                f"--resources gpu={pool} but this machine has {present} NVIDIA GPU(s) ({driver_gpus}); "
                f"use --resources gpu={present}"
            )
        return [str(i) for i in range(pool)]
    if len(visible) < pool:
        raise GpuSlotError(
            f"--resources gpu={pool} but CUDA_VISIBLE_DEVICES lists {len(visible)} GPU(s) ({','.join(visible)}); "
            "give Snakemake at most as many GPUs as are visible"
        )
    return visible[:pool]


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def claim(
    pool: int,
    gpus: int,
    slot_dir: str | os.PathLike[str] = SLOT_DIR,
    environ: MutableMapping[str, str] | None = None,
    poll_seconds: float = 2.0,
    driver_gpus: Path = DRIVER_GPUS,
) -> list[int]:
    """Take ``gpus`` free slots of ``pool`` and point ``CUDA_VISIBLE_DEVICES`` at them; returns the slots.

    Call it before anything initialises CUDA. Returns ``[]`` and changes
    nothing where slots do not apply (see the module docstring).
    """
    environ = os.environ if environ is None else environ
    if _held:
        # POSIX record locks belong to the process: a second claim would see its own slots as free.
        raise RuntimeError("this process already holds GPU slots; claim them once, before CUDA starts")
    if pool <= 0 or gpus <= 0 or schedulers_assignment(environ):
        return []
    if gpus > pool:
        raise GpuSlotError(f"the job needs {gpus} GPUs but --resources gpu={pool} offers only {pool}")
    devices = _devices(pool, environ, Path(driver_gpus))
    slot_dir = Path(slot_dir)
    slot_dir.mkdir(parents=True, exist_ok=True)
    waited = 0.0
    while True:
        taken: list[tuple[int, int]] = []
        for slot in range(pool):
            fd = _try_lock(slot_dir / f"slot{slot}.lock")
            if fd is not None:
                taken.append((slot, fd))
                if len(taken) == gpus:
                    break
        if len(taken) == gpus:
            break
        # Not enough free: give back what was taken (no job holds some while waiting for more), wait, retry.
        for _, fd in taken:
            os.close(fd)
        if waited % 60 < poll_seconds:
            log.warning("waiting for %d free GPU slot(s) of %d in %s (held by other processes)", gpus, pool, slot_dir)
        time.sleep(poll_seconds)
        waited += poll_seconds
    slots = [slot for slot, _ in taken]
    _held.extend(fd for _, fd in taken)
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices[s] for s in slots)
    log.info("GPU slot(s) %s of %d: CUDA_VISIBLE_DEVICES=%s", slots, pool, environ["CUDA_VISIBLE_DEVICES"])
    return slots


def release() -> None:
    """Give back the slots this process holds (normally the end of the process does)."""
    while _held:
        os.close(_held.pop())
