"""What a job knows of the Snakemake run that started it.

Two ways a job could outlive what started it, and what stops it:

- **Its parent ends** (the ``bash -c`` wrapper Snakemake runs the job's shell command in is killed,
  e.g. by Snakemake giving up on the job, by a user or by the OOM killer): Snakemake counts the job
  as failed and removes its outputs, while the job itself would go on and write them later, and a
  later run would accept them. :func:`die_with_parent` (called first thing by every ``dmlsynth``
  subcommand a workflow starts) makes the kernel end the job with its parent (Linux:
  ``prctl(PR_SET_PDEATHSIG)``; elsewhere a thread that watches ``getppid()``).
- **The workflow's Snakemake ends** (``kill -9`` of Snakemake, a closed terminal, a login node's
  session ended) while the job lives on, e.g. as a SLURM job: the Snakefile of the *main* Snakemake
  process (the one a user started) exports :data:`WORKFLOW_VARIABLE` (host, pid and start time) and
  :data:`HEARTBEAT_VARIABLE` (a file in the workflow's ``.snakemake/dmlsynth/workflow/`` it rewrites
  every 20 s, :mod:`dmlsynth.heartbeat`); a long job checks between epochs and stops after its last
  checkpoint instead of running on unseen; running the workflow again resumes it (Snakemake marks
  the outputs of jobs it did not see finish as incomplete, so they are never accepted). The
  Snakemake a cluster executor starts inside each job (a job step, ``--mode remote``) and the one a
  local job may run in (``--mode subprocess``) keep the main process's values (:func:`announce`):
  sbatch passes the submitting environment on. On the workflow's host the check reads ``/proc``
  (at once); on another host (a compute node) it watches the heartbeat file on the shared
  filesystem, by its own clock, and judges the workflow gone when the file stopped changing for
  :data:`dmlsynth.heartbeat.STALE_AFTER_S` or went away. Without either (an executor that passes no
  environment on) the job watches the Snakemake that started it on its own host.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import MutableMapping

from dmlsynth.errors import DmlsynthError
from dmlsynth.heartbeat import Heartbeat, HeartbeatWatch

WORKFLOW_VARIABLE = "DMLSYNTH_WORKFLOW_PROCESS"
# The heartbeat file of the main Snakemake process (an absolute path on the shared filesystem).
HEARTBEAT_VARIABLE = "DMLSYNTH_WORKFLOW_HEARTBEAT"
# The Snakemake process on the job's own host that starts its shell (the main process, or a cluster job's
# job step): the kernel ends the job with that shell, so it must descend from this process.
SUPERVISOR_VARIABLE = "DMLSYNTH_JOB_SUPERVISOR"
# Where the main process keeps its heartbeat, below the workflow's directory.
HEARTBEAT_FOLDER = Path(".snakemake", "dmlsynth", "workflow")
_heartbeats: dict[str, Heartbeat] = {}
_watches: dict[str, HeartbeatWatch] = {}


class WorkflowGone(DmlsynthError, RuntimeError):
    """The Snakemake process that started this job no longer exists."""


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (start time); the command name (field 2) may contain spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def process_token(pid: int | None = None) -> str:
    """``host:pid:start-time`` of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '?'}"


def process_alive(token: str) -> bool | None:
    """Whether the process of a :func:`process_token` lives; None where this host cannot tell (another
    host, no ``/proc``)."""
    host, pid, start = token.rsplit(":", 2)
    if host == socket.gethostname() and start != "?" and Path("/proc/self/stat").exists():
        return _start_time(int(pid)) == start
    return None


def announce(main_process: bool, workdir: str | os.PathLike[str] = ".", environ: MutableMapping[str, str] = os.environ) -> None:
    """Export what jobs watch (module docstring). ``main_process``: this Snakemake is the one a user started
    (Snakemake's ``workflow.is_main_process``), not a job step or a local job's subprocess; those keep the
    main process's values that came with their environment."""
    token = process_token()
    environ[SUPERVISOR_VARIABLE] = token
    if not main_process and environ.get(WORKFLOW_VARIABLE):
        return
    environ[WORKFLOW_VARIABLE] = token
    environ.pop(HEARTBEAT_VARIABLE, None)
    if not main_process:
        return  # nothing of the main process came along: the job watches this one, on its own host
    path = (Path(workdir) / HEARTBEAT_FOLDER / token.replace(":", "-")).resolve()
    if str(path) not in _heartbeats:  # (the Snakefile may be read more than once by one process)
        path.parent.mkdir(parents=True, exist_ok=True)
        _heartbeats[str(path)] = Heartbeat(path, {"workflow": token}).start()
        atexit.register(_heartbeats[str(path)].stop)
    environ[HEARTBEAT_VARIABLE] = str(path)


def workflow_alive(token: str | None = None, heartbeat: str | None = None) -> bool | None:
    """True/False when the process of ``token`` (default: the exported one) is alive/gone; None if unknown.

    On its own host from ``/proc``; elsewhere from its ``heartbeat`` file (default: the exported one),
    watched over successive calls."""
    token = token if token is not None else os.environ.get(WORKFLOW_VARIABLE)
    if not token:
        return None
    alive = process_alive(token)
    if alive is not None:
        return alive
    heartbeat = heartbeat if heartbeat is not None else os.environ.get(HEARTBEAT_VARIABLE)
    if not heartbeat:
        return None
    return _watches.setdefault(heartbeat, HeartbeatWatch(heartbeat)).look()


def stop_if_workflow_gone(after: str) -> None:
    """Raise :class:`WorkflowGone` when the workflow that started this job is gone; ``after`` says where
    the job stopped (e.g. ``"epoch 3"``), right after a checkpoint was written."""
    if workflow_alive() is False:
        raise WorkflowGone(
            f"the Snakemake process that started this job is gone; stopped after {after} (checkpoint "
            "written). Run `snakemake --unlock`, then the same command again to resume."
        )


def stop_when_workflow_gone():
    """A training callback: stop after the epoch's checkpoint when the workflow that started the job is gone."""

    def callback(run, epoch, history):
        stop_if_workflow_gone(f"epoch {epoch}")

    return callback


# prctl(2) option: the signal the kernel sends this process when its parent ends.
_PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int, signal_number: int, poll_seconds: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os.kill(os.getpid(), signal_number)


def die_with_parent(signal_number: int = signal.SIGTERM, poll_seconds: float = 1.0, use_prctl: bool = True) -> None:
    """Have this process sent ``signal_number`` (default: SIGTERM, which ends it) when its parent ends.

    Only where a workflow started the process (:data:`SUPERVISOR_VARIABLE` or :data:`WORKFLOW_VARIABLE` is
    set): a command typed in a terminal is left alone. Without ``prctl`` (not Linux, or ``use_prctl=False``) a thread checks the
    parent every ``poll_seconds``.
    """
    if not (os.environ.get(SUPERVISOR_VARIABLE) or os.environ.get(WORKFLOW_VARIABLE)):
        return
    parent = os.getppid()
    requested = False
    if use_prctl and sys.platform.startswith("linux"):
        try:
            requested = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0) == 0
        except (OSError, AttributeError):
            requested = False
    if not requested:
        threading.Thread(target=_watch_parent, args=(parent, signal_number, poll_seconds), daemon=True).start()
    # The parent may have ended before the kernel was told (while Python was starting): then this
    # process was handed to init, and the workflow's Snakemake is no longer among its ancestors.
    if os.getppid() != parent or _descends_from_workflow() is False:
        os.kill(os.getpid(), signal_number)


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _descends_from_workflow() -> bool | None:
    """Whether the Snakemake process that started this job's shell on this host (:data:`SUPERVISOR_VARIABLE`,
    else :data:`WORKFLOW_VARIABLE`) is an ancestor of this one; None if unknown."""
    token = os.environ.get(SUPERVISOR_VARIABLE) or os.environ.get(WORKFLOW_VARIABLE)
    host = token.rsplit(":", 2)[0] if token else None
    # Another host, no /proc, or already gone (then the epoch check stops the job).
    if host != socket.gethostname() or process_alive(token) is not True:
        return None
    workflow_pid = int(token.rsplit(":", 2)[1])
    pid: int | None = os.getppid()
    while pid is not None and pid > 1:
        if pid == workflow_pid:
            return True
        pid = _parent_of(pid)
    return False


def put_first_on_path(directory: str | os.PathLike[str], environ: MutableMapping[str, str] = os.environ) -> None:
    """Put ``directory`` first on ``environ["PATH"]`` (once), so commands named there are found first."""
    first = str(directory)
    rest = [entry for entry in environ.get("PATH", "").split(os.pathsep) if entry and entry != first]
    environ["PATH"] = os.pathsep.join([first, *rest])
