"""The pipeline's stages for DVC, derived from the same layout and code as the Snakemake rules.

``dmlsynth dvc-yaml`` writes ``dvc.yaml`` from :func:`dvc_yaml`. Each DVC
stage runs Snakemake up to one rule (``snakemake --until RULE``), so both
tools run the very same jobs and Snakemake decides which are out of date:

- a stage's ``outs`` are the files its rules write (:mod:`dmlsynth.layout`;
  a test compares them with Snakemake's own ``--summary``), marked
  ``persist`` so DVC leaves existing results in place and Snakemake re-runs
  only the jobs whose params, code or inputs changed — ``dvc repro`` after
  the Snakemake quick start or after a code change redoes exactly that work;
- a stage's code dependencies are the source files its jobs execute
  (:func:`dmlsynth.provenance.source_files`, the same closure the Snakemake
  rules' code digests hash).
"""

from __future__ import annotations

from typing import Any, Mapping

import yaml

from dmlsynth import provenance, registry
from dmlsynth.data.split import training_class_count, uses_validation
from dmlsynth.config import filled
from dmlsynth.layout import Layout
from dmlsynth.published import FILE as PUBLISHED_FILE
from dmlsynth.resolve import comparison_groups, runs

# Params each stage depends on (top-level keys of params.yaml).
STAGE_PARAMS = {
    "data": ["paths", "datasets", "dataset_settings"],
    "generate": ["datasets", "methods", "dataset_settings", "generation"],
    "train": ["datasets", "methods", "losses", "seeds", "exclude", "dataset_settings", "training", "loss_params", "method_loss_params", "method_params"],
    "evaluate": ["evaluation"],
    "report": ["statistics"],
}
# The stages whose outputs each stage reads (as in the Snakemake rules' inputs).
STAGE_INPUTS = {
    "data": [],
    "generate": ["data"],
    "train": ["data", "generate"],
    "evaluate": ["train"],
    "report": ["train", "evaluate", "generate"],
}
# The Snakemake rules each stage runs up to (None: the default target, the table).
STAGE_UNTIL = {
    "data": ["prepare_data"],
    "generate": ["generation_report"],
    "train": ["train"],
    "evaluate": ["evaluate"],
    "report": None,
}
# The data stage also makes the resized copies of photo datasets (dmlsynth.data.image_cache).
CACHE_RULE = "cache_images"
CACHE_MODULE = "dmlsynth.data.image_cache"


def cached_datasets(config: Mapping[str, Any]) -> list[str]:
    """The datasets of ``config`` that training reads through a resized copy."""
    return [d for d in config["datasets"] if _dataset_value(config, d, "cache_short_side")]


def stage_jobs(config: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The jobs of each DVC stage (:class:`dmlsynth.jobs.Job`), as its Snakemake rules run them."""
    from dmlsynth.jobs import Jobs
    from dmlsynth.generation.fine_tuning import fine_tunes
    from dmlsynth.generation.settings import generation_settings, image_sets

    jobs = Jobs(config)
    stages: dict[str, list[Any]] = {stage: [] for stage in STAGE_UNTIL}
    for dataset in config["datasets"]:
        stages["data"].append(jobs.prepare_data(dataset))
        if dataset in cached_datasets(config):
            stages["data"].append(jobs.cache_images(dataset))
        if not image_sets(config):
            continue
        settings = generation_settings(config, dataset)
        stages["generate"].append(jobs.prompts(dataset))
        if registry.GENERATORS[settings["generator"]].trained_here:
            stages["generate"].append(jobs.train_generator(dataset))
        for index in range(training_class_count(config, dataset)):
            if fine_tunes(settings):
                stages["generate"].append(jobs.fine_tune(dataset, index))
            stages["generate"] += [jobs.generate(dataset, index), jobs.filter_generated(dataset, index)]
        stages["generate"] += [jobs.merge_generated(dataset, name) for name in image_sets(config)]
    if image_sets(config):
        stages["generate"].append(jobs.generation_report())
    for run in runs(config):
        stages["train"].append(jobs.train(**run))
        stages["evaluate"].append(jobs.evaluate(**run))
    stages["report"] = [jobs.table(), jobs.compare()]
    return stages


def stage_modules(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The modules each stage's jobs start from — their commands, the runtime and the registry-named
    modules they use (:meth:`dmlsynth.jobs.Job.code_digest`); their imports follow (:mod:`dmlsynth.provenance`)."""
    return {
        stage: sorted({m for job in jobs for m in job.code_modules})
        for stage, jobs in stage_jobs(config).items()
    }


def _dataset_value(config: Mapping[str, Any], dataset: str, key: str) -> Any:
    from dmlsynth.registry import dataset_settings

    return dataset_settings(config, dataset)[key]


def stage_outputs(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every file (or folder) each stage's rules write."""
    from dmlsynth.generation.fine_tuning import fine_tunes
    from dmlsynth.generation.settings import generation_settings, image_sets

    layout = Layout.of(config)
    all_runs = [layout.run(**run) for run in runs(config)]
    sets = image_sets(config)
    generated: list[str] = []
    if sets:
        for dataset in config["datasets"]:
            generated.append(layout.prompts(dataset))
            if generation_settings(config, dataset)["generator"] == "embedded":
                generated.append(layout.generator_dir(dataset))
            classes = range(training_class_count(config, dataset))
            if fine_tunes(generation_settings(config, dataset)):
                generated += [layout.fine_tuned_dir(dataset, i) for i in classes]
            generated += [layout.generated_part(dataset, i) for i in classes]
            generated += [layout.filtered_part(dataset, i) for i in classes]
            generated += [layout.image_set_manifest(dataset, s) for s in sets]
            generated += [layout.image_set_images(dataset, s) for s in sets]
        generated.append(layout.generation_csv())
        generated += [layout.generated_grid(d) for d in config["datasets"]]
    return {
        "data": [
            layout.dataset_file(name, dataset) for dataset in config["datasets"] for name in registry.dataset(dataset).outputs
        ]
        + [layout.resized_dir(dataset) for dataset in cached_datasets(config)],
        # BLenDeR's images (empty when no configured method trains with generated images).
        "generate": generated,
        "train": [path for run in all_runs for path in run.training_outputs(validation=uses_validation(config))],
        "evaluate": [path for run in all_runs for path in run.evaluation_outputs()],
        "report": layout.table_outputs() + layout.comparison_outputs(comparison_groups(config)),
    }


def dvc_yaml(config: Mapping[str, Any]) -> str:
    """The text of dvc.yaml for ``config`` (params.yaml)."""
    layout = Layout.of(config)
    outputs = stage_outputs(config)
    modules = stage_modules(config)
    project = provenance.PACKAGE_DIR.parent.parent  # src/dmlsynth -> the project folder
    stages: dict[str, Any] = {}
    unset = filled({})
    for stage, until in STAGE_UNTIL.items():
        if not outputs[stage]:
            continue  # no generation stage when nothing is generated
        if stage == "data" and cached_datasets(config):
            until = [*until, CACHE_RULE]
        cmd = "snakemake --cores all" + (f" --until {' '.join(until)}" if until else "")
        code = [path.relative_to(project).as_posix() for path in provenance.source_files(modules[stage])]
        upstream = [o for before in STAGE_INPUTS[stage] for o in outputs[before] if not o.endswith(".png")]
        # The published numbers the comparison report puts beside ours are data, not code.
        data = [(provenance.PACKAGE_DIR / PUBLISHED_FILE).relative_to(project).as_posix()] if stage == "report" else []
        entry: dict[str, Any] = {"cmd": cmd, "deps": ["Snakefile", "rules", *code, *data, *upstream]}
        # The keys params.yaml sets (validation filled the others with their defaults: DVC finds no such key there).
        params = [key for key in STAGE_PARAMS[stage] if key in config and config[key] != unset.get(key)]
        if params:
            entry["params"] = params
        outs = outputs[stage]
        if stage == "report":
            outs = [o for o in outs if o != layout.headline_metrics()]
            entry["metrics"] = [{layout.headline_metrics(): {"cache": False, "persist": True}}]
        # persist: DVC keeps existing results and lets Snakemake decide what is out of date.
        entry["outs"] = [{o: {"persist": True}} for o in outs]
        stages[stage] = entry
    # Images, which `dvc plots show` renders offline (its data plots load vega from a CDN): R@1 with each
    # method's difference to its control, and each method's mean training loss (one curve per method).
    plots: list[Any] = [layout.recall_figure(), layout.table_files().training_loss]
    header = (
        "# Generated by `dmlsynth dvc-yaml` from params.yaml and the Snakemake rules — do not edit by hand.\n"
        "# After changing datasets/methods/losses/seeds in params.yaml, regenerate it:\n"
        "#   dmlsynth dvc-yaml > dvc.yaml\n"
    )
    return header + yaml.safe_dump({"stages": stages, "plots": plots}, sort_keys=False, width=120)
