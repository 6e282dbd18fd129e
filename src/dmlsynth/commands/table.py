"""``table``: the results over seeds, each method paired with its control (summary, table, headline metrics)."""

from __future__ import annotations

from pathlib import Path

from dmlsynth import recovery
from dmlsynth.commands import log, remove_stale, tracked
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    import pandas as pd

    from dmlsynth import tracking
    from dmlsynth.layout import TableFiles
    from dmlsynth.table import write_table

    remove_stale(job)
    files = TableFiles.under(job.outputs["results"])
    generation = pd.read_csv(job.inputs["generation"]) if "generation" in job.inputs else None
    runs = [str(Path(record).parent) for record in job.inputs["records"]]
    table = write_table(runs, files, job.params["statistics"], generation)
    log.info("table with %d rows written to %s (in brief: %s)", len(table), files.csv, files.summary_md)
    if job.params["tracking"]["runs"] == "with_table":
        # Every run first (idempotent: a run tracked before gains only what it lacks), then the rows that nest
        # them. One call: an unreachable store fails once, not once per run.
        tracked(
            job, f"the {len(runs)} training runs", f"dmlsynth track {Path(job.outputs['results']) / 'runs'}",
            lambda settings: [tracking.track_run(run_dir, settings) for run_dir in runs],
        )  # fmt: skip
    tracked(
        job, "the results table", recovery.remake(files.csv),
        lambda settings: tracking.track_table(settings, files.all(), table),
    )  # fmt: skip
