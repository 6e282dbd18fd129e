"""At most one job trains a run folder at a time: a lock file in the folder, ``train.lock``.

The lock says who holds it (host, pid and start time of the process, its SLURM job id, when it took it)
and is rewritten every 20 s while it is held (:mod:`dmlsynth.heartbeat`); it is removed when the job
ends, and stays when the job is killed. A job that finds a lock asks whether its holder lives:

- on the holder's host, from ``/proc`` (pid and start time);
- elsewhere, for a SLURM job, from ``squeue`` (pending, running, suspended or completing: alive);
- otherwise by watching the lock for a beat, for up to :data:`dmlsynth.heartbeat.STALE_AFTER_S`.

A living holder: the job stops at once with :class:`RunBusy`, which names it (an orphan of a killed
workflow, another workflow, a ``dmlsynth train`` typed by hand), before it writes anything. A gone
holder (a crash, a SLURM time-out): the lock is taken over and the run resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from dmlsynth import cluster, heartbeat
from dmlsynth.errors import DmlsynthError
from dmlsynth.workflow import process_alive, process_token

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
_IDENTITY = ("process",)


class RunBusy(DmlsynthError, RuntimeError):
    """Another living job holds the run folder's lock."""


def owner() -> dict[str, Any]:
    """What this process writes into the lock."""
    return {
        "process": process_token(),  # host:pid:start time
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def same_owner(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in _IDENTITY)


def describe(holder: Mapping[str, Any]) -> str:
    slurm = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"process {holder.get('pid')} on {holder.get('host')}{slurm}, since {holder.get('since')}"


def holder_alive(path: Path, holder: Mapping[str, Any], stale_after: float = heartbeat.STALE_AFTER_S) -> bool:
    """Whether the process that wrote ``holder`` (the content of the lock at ``path``) still lives."""
    alive = process_alive(str(holder.get("process") or "?:0:?"))
    if alive is not None:
        return alive
    job = holder.get("slurm_job_id")
    if job and job == os.environ.get("SLURM_JOB_ID"):
        return False  # this very SLURM job, started again (requeued): its earlier incarnation is gone
    active = cluster.slurm_job_active(job) if job else None
    if active is not None:
        return active
    return heartbeat.HeartbeatWatch(path, stale_after).wait_for_beat()


def _take_over(path: Path, stale: Mapping[str, Any]) -> None:
    """Remove the lock of a gone holder, unless another job took it over meanwhile."""
    aside = path.with_name(f"{path.name}.gone-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if not same_owner(heartbeat.read(aside), stale):  # a fresh lock, taken a moment ago: put it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)
    log.warning("took over the lock of %s from %s, which is gone", path.parent, describe(stale))


def acquire(run_dir: str | os.PathLike[str], stale_after: float = heartbeat.STALE_AFTER_S) -> dict[str, Any]:
    """Take the lock of ``run_dir`` (see the module); returns what it holds. Raises :class:`RunBusy`."""
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = owner()
    for _ in range(5):
        if heartbeat.write(path, mine, exclusive=True):
            return mine
        holder = heartbeat.read(path)
        if holder is None:
            continue  # released between the two looks
        if holder_alive(path, holder, stale_after):
            raise RunBusy(
                f"run folder {run_dir} is being trained by another job: {describe(holder)} (its lock "
                f"{path}). One run is trained by one job at a time; this one stops without writing. Wait "
                "for that job to end, or end it (scancel <SLURM job> / kill <pid>) and run again: the run "
                "then resumes from its last checkpoint."
            )
        _take_over(path, holder)
    raise RunBusy(f"could not take the lock {path}: other jobs keep taking it; run again later")


@contextmanager
def run_lock(run_dir: str | os.PathLike[str], interval: float = heartbeat.INTERVAL_S) -> Iterator[dict[str, Any]]:
    """Hold the lock of ``run_dir`` while the block runs, rewriting it every ``interval`` seconds."""
    mine = acquire(run_dir, stale_after=6 * interval)
    beat = heartbeat.Heartbeat(
        Path(run_dir) / LOCK_NAME, mine, interval, still_mine=lambda current: same_owner(current, mine)
    ).start(write_now=False)
    try:
        yield mine
    finally:
        beat.stop(remove=True)
