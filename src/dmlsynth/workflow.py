"""What a job knows of the Snakemake run that started it.

The Snakefile exports :data:`WORKFLOW_VARIABLE` (host, pid and start time of
the Snakemake process). A long job checks it between epochs: when that
process is gone (``kill -9`` of Snakemake, a closed terminal), the job stops
after its last checkpoint instead of running on unseen; running the workflow
again resumes it. On another host (cluster jobs) or without ``/proc`` the
check cannot tell and never stops a job.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from dmlsynth.errors import DmlsynthError

WORKFLOW_VARIABLE = "DMLSYNTH_WORKFLOW_PROCESS"


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


def workflow_alive(token: str | None = None) -> bool | None:
    """True/False when the process of ``token`` (default: the exported one) is alive/gone; None if unknown."""
    token = token if token is not None else os.environ.get(WORKFLOW_VARIABLE)
    if not token:
        return None
    host, pid, start = token.rsplit(":", 2)
    if host != socket.gethostname() or start == "?" or not Path("/proc/self/stat").exists():
        return None
    return _start_time(int(pid)) == start


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
