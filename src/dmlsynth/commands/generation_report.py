"""``generation_report``: fidelity, diversity, guidance and cost of the generated images, and sample grids."""

from __future__ import annotations

from dmlsynth import recovery
from dmlsynth.commands import tracked
from dmlsynth.jobs import Job


def run(job: Job) -> None:
    from dmlsynth import tracking
    from dmlsynth.generation.quality import generation_report
    from dmlsynth.layout import Layout

    layout = Layout.of({"paths": job.params["layout"]})
    datasets = {name: {**values, "settings": values["generation"]} for name, values in job.params["datasets"].items()}
    table = generation_report(datasets, list(job.params["image_sets"]), layout, threads=job.threads)
    print(table.to_string(index=False))
    tracked(
        job, "the generation report", recovery.remake(layout.generation_csv()),
        lambda settings: tracking.track_generation(
            settings, table, {d: layout.generated_grid(d) for d in datasets}, layout.generation_csv()
        ),
    )  # fmt: skip
