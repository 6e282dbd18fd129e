"""``compare``: the comparison report (forest plots, published numbers beside ours, cost per method)."""

from __future__ import annotations

from pathlib import Path

from dmlsynth.commands import log
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    import pandas as pd

    from dmlsynth.compare import write_comparison
    from dmlsynth.table import collect, read_table

    generation = pd.read_csv(job.inputs["generation"]) if "generation" in job.inputs else None
    runs = collect([str(Path(record).parent) for record in job.inputs["records"]])
    frame = write_comparison(
        read_table(job.inputs["table"]), runs, generation, job.outputs["csv"], job.outputs["report"], job.outputs["figures"],
        {"confidence": job.params["confidence"]},
    )  # fmt: skip
    log.info("comparison of %d rows written to %s and %s", len(frame), job.outputs["csv"], job.outputs["report"])
