"""What each job does with its record: one module per rule, ``run(job)`` (:class:`dmlsynth.jobs.Job`).

The command line (``dmlsynth <rule> --job …``) parses the record and calls the rule's module; a
module calls the stage functions with what the record holds and never reads the config. A job's
code digest starts from its module (:meth:`dmlsynth.jobs.Job.code_digest`), so what a job imports
there decides which jobs a code change re-runs. This package module holds only what changes no number
(removing stale files, tracking): it is bookkeeping (:data:`dmlsynth.provenance.BOOKKEEPING`); code that
computes (the training rows of a class) lives in the command modules, whose digests follow it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from dmlsynth.jobs import Job

log = logging.getLogger("dmlsynth")


def remove_stale(job: Job) -> None:
    """Remove the files of jobs that depend on this one (their inputs are about to change): none of them is
    left looking current while this job runs, or after it fails. The workflow rebuilds them."""
    removed = []
    for name in job.stale:
        path = Path(name)
        if path.is_file():
            path.unlink()
            removed.append(name)
    if removed:
        log.info("removed %d file(s) this job makes out of date (rebuilt after it): %s", len(removed), ", ".join(removed))


def tracked(job: Job, what: str, resync: str, call: Callable[[Any], Any]) -> bool:
    """Track with the job's tracking settings; a failure is reported, never raised (dmlsynth.tracking.tracked)."""
    from dmlsynth import tracking

    return tracking.tracked({"tracking": job.params.get("tracking") or {}}, what, resync, call)
