"""The pipeline's stages for DVC: the job records of :mod:`dmlsynth.jobs`, grouped per stage.

``dmlsynth dvc-yaml`` writes ``dvc.yaml`` from :func:`dvc_yaml`. Each DVC
stage runs Snakemake up to the rules of its jobs (``snakemake --until RULE…``),
so both tools run the very same jobs and Snakemake decides which are out of date:

- a stage's ``outs`` are what its jobs' records say they make
  (:meth:`dmlsynth.jobs.Job.made`; a test compares them with Snakemake's own
  ``--summary``) and the image folders their manifests list, marked
  ``persist`` so DVC leaves existing results in place and Snakemake re-runs
  only the jobs whose params, code or inputs changed — ``dvc repro`` after
  the Snakemake quick start or after a code change redoes exactly that work;
- its ``deps`` are its jobs' record inputs that other stages make (with the
  images a manifest lists) and the source files its jobs execute
  (:func:`dmlsynth.provenance.source_files`, the same closure the Snakemake
  rules' code digests hash).
"""

from __future__ import annotations

from typing import Any, Mapping

import yaml

from dmlsynth import provenance, registry
from dmlsynth.config import filled
from dmlsynth.data.split import training_class_count
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
# The DVC stages, in pipeline order (:func:`stage_jobs` puts each rule's jobs into one).
STAGES = ("data", "generate", "train", "evaluate", "report")


def stage_jobs(config: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The jobs of each DVC stage (:class:`dmlsynth.jobs.Job`), as its Snakemake rules run them."""
    from dmlsynth.jobs import Jobs
    from dmlsynth.generation.fine_tuning import fine_tunes
    from dmlsynth.generation.settings import generation_settings, image_sets

    jobs = Jobs(config)
    stages: dict[str, list[Any]] = {stage: [] for stage in STAGES}
    for dataset in config["datasets"]:
        stages["data"].append(jobs.prepare_data(dataset))
        if jobs.dataset_settings(dataset)["cache_short_side"]:  # read through a resized copy
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


def stage_modules(stages: Mapping[str, list[Any]]) -> dict[str, list[str]]:
    """The modules each stage's jobs (:func:`stage_jobs`) start from — their commands, the runtime and the
    registry-named modules they use (:meth:`dmlsynth.jobs.Job.code_digest`); their imports follow
    (:mod:`dmlsynth.provenance`)."""
    return {stage: sorted({m for job in jobs for m in job.code_modules}) for stage, jobs in stages.items()
    }


def _files(value: Any) -> list[str]:
    return [str(f) for f in (value if isinstance(value, (list, tuple)) else [value])]


def _image_folders(config: Mapping[str, Any], job: Any) -> list[str]:
    """The folders of images a job's manifest or index lists (DVC versions them; Snakemake knows them through
    the manifest, written last, that marks them complete)."""
    layout = Layout.of(config)
    if job.rule == "prepare_data":  # what the preparation leaves beside the manifest (its registry spec)
        dataset = job.params["dataset"]
        return [layout.dataset_file(name, dataset) for name in registry.dataset(dataset).outputs]
    if job.rule == "cache_images":
        return [layout.resized_dir(job.params["dataset"])]
    if job.rule == "merge_generated":
        return [layout.image_set_images(job.name.split("/")[0], job.params["image_set"])]
    return []


def _job_outputs(config: Mapping[str, Any], stages: Mapping[str, list[Any]]) -> dict[str, list[list[str]]]:
    """Each stage's jobs with what DVC versions of each: what its record says it makes
    (:meth:`dmlsynth.jobs.Job.made`) and the image folders it lists; a file inside one of these folders is in
    it (DVC versions a folder as a whole: the resized copy's index is in the resized copy)."""
    result: dict[str, list[list[str]]] = {}
    for stage, jobs in stages.items():
        result[stage] = []
        for job in jobs:
            files = list(dict.fromkeys([*job.made(), *_image_folders(config, job)]))
            result[stage].append([f for f in files if not any(f.startswith(other + "/") for other in files)])
    return result


def stage_outputs(config: Mapping[str, Any], stages: Mapping[str, list[Any]] | None = None) -> dict[str, list[str]]:
    """Every file (or folder) each stage's jobs (:func:`stage_jobs`) write, from their records."""
    per_job = _job_outputs(config, stage_jobs(config) if stages is None else stages)
    return {stage: list(dict.fromkeys(f for files in jobs for f in files)) for stage, jobs in per_job.items()}


def stage_inputs(config: Mapping[str, Any], stages: Mapping[str, list[Any]]) -> dict[str, list[str]]:
    """The files each stage reads that other stages write: its jobs' record inputs (as the rules' inputs), a
    manifest with the images it lists."""
    made: dict[str, tuple[str, list[str]]] = {}
    for (stage, jobs), outputs in zip(stages.items(), _job_outputs(config, stages).values()):
        for job, files in zip(jobs, outputs):
            images = [f for f in _image_folders(config, job) if f in files]
            for f in [*files, *job.made()]:  # a file inside a versioned folder (the resized copy's index): the folder
                out = next(o for o in files if f == o or f.startswith(o + "/"))
                made[f] = (stage, list(dict.fromkeys([out, *images])))
    return {
        stage: list(dict.fromkeys(
            dependency
            for job in jobs for value in job.inputs.values() for f in _files(value) if made.get(f, (stage,))[0] != stage
            for dependency in made[f][1]
        ))
        for stage, jobs in stages.items()
    }  # fmt: skip


def dvc_yaml(config: Mapping[str, Any]) -> str:
    """The text of dvc.yaml for ``config`` (params.yaml)."""
    layout = Layout.of(config)
    jobs = stage_jobs(config)
    outputs = stage_outputs(config, jobs)
    upstream = stage_inputs(config, jobs)
    modules = stage_modules(jobs)
    project = provenance.PACKAGE_DIR.parent.parent  # src/dmlsynth -> the project folder
    stages: dict[str, Any] = {}
    unset = filled({})
    for stage, stage_job_list in jobs.items():
        if not outputs[stage]:
            continue  # no generation stage when nothing is generated
        # Snakemake runs the stage's last rules and what they need (up to date already when the stages before ran):
        # the rules of the jobs whose files no other job of the stage reads (naming the rules in between too
        # trips Snakemake's scheduler, "Out of jobs ready to be started", snakemake/snakemake#823).
        read = {f for job in stage_job_list for f in job.input_files()}
        last = dict.fromkeys(job.rule for job in stage_job_list if not set(job.made()) & read)
        cmd = "snakemake --cores all --until " + " ".join(last)
        code = [path.relative_to(project).as_posix() for path in provenance.source_files(modules[stage])]
        # The published numbers the comparison report puts beside ours are data, not code.
        data = [(provenance.PACKAGE_DIR / PUBLISHED_FILE).relative_to(project).as_posix()] if stage == "report" else []
        entry: dict[str, Any] = {"cmd": cmd, "deps": ["Snakefile", "rules", *code, *data, *upstream[stage]]}
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
