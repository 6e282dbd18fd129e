# Shared definitions: the validated config, the layout of every file, the job matrix and helpers.
import os
import re
import sys
from pathlib import Path

from dmlsynth import config as dmlsynth_config
from dmlsynth import layout, pipeline, provenance, registry, tracking, workflow as dmlsynth_workflow
from dmlsynth.data import split

try:
    CFG = dmlsynth_config.validate(config, source="the workflow config (params.yaml, --configfile, --config)")
except dmlsynth_config.ConfigError as error:
    # Stop before any job runs, with the message only (no traceback to dig through).
    sys.exit(f"dmlsynth: {error}")

# Every path comes from dmlsynth.layout; rules ask it, with Snakemake wildcards as defaults.
LAYOUT = layout.Layout.of(CFG)
# Jobs run with the interpreter that runs Snakemake, so the workflow and its jobs share one environment.
PY = sys.executable
# The merged config (params.yaml + --configfile + --config) that every job reads.
EFFECTIVE_CONFIG = str(dmlsynth_config.write_effective(CFG, layout.WORKFLOW_STATE))
# Jobs record the git state of this project folder (not of wherever the package is installed).
os.environ[provenance.PROJECT_DIR_VARIABLE] = str(Path(workflow.basedir).resolve())
# Long jobs stop (after a checkpoint) when this Snakemake process is killed.
os.environ[dmlsynth_workflow.WORKFLOW_VARIABLE] = dmlsynth_workflow.process_token()
# Jobs leave a note here when MLflow tracking fails; the workflow prints them once at the end.
TRACKING_FAILURES = Path(layout.WORKFLOW_STATE, "tracking-failures").resolve()
os.environ[tracking.FAILURES_VARIABLE] = str(TRACKING_FAILURES)


def warn_about_tracking_failures():
    notes = tracking.failure_notes(TRACKING_FAILURES)
    if notes:
        print(
            f"\ndmlsynth: WARNING: MLflow tracking failed in {len(notes)} job(s); results on disk are complete.\n  "
            + "\n  ".join(sorted(set(notes)))
            + "\n",
            file=sys.stderr,
        )

# `--resources gpu=N`: each GPU job takes a GPU slot of its own (dmlsynth.gpu_slots). Only for jobs this
# Snakemake process starts itself: under a cluster executor the scheduler assigns the GPUs.
def gpus_given():
    value = workflow.global_resources.get("gpu")
    return int(getattr(value, "value", value) or 0)  # Snakemake 9 wraps the number in a Resource


GPU_SLOTS = gpus_given() if workflow.local_exec and not workflow.remote_exec else 0

RUNS = pipeline.runs(CFG)
# Whether runs choose their epoch on validation classes (dataset_settings.<dataset>.validation_classes).
VALIDATION = split.uses_validation(CFG)
RUN = LAYOUT.run()  # the run folder pattern, {dataset}/{method}/{loss}/seed{seed}


wildcard_constraints:
    dataset="|".join(registry.DATASETS),
    # A method, or a control with a method's loss params ("baseline+beta=40", dmlsynth.registry.control_label).
    method="|".join(re.escape(name) for name in dict.fromkeys([*registry.METHODS, *(run["method"] for run in RUNS)])),
    loss="|".join(registry.LOSSES),
    seed=r"\d+",


def dataset_resource(key, default):
    """A per-dataset resource from dataset_settings.<name>.resources (cluster profiles read these)."""

    def get(wildcards, attempt=1):
        value = dmlsynth_config.dataset_settings(CFG, wildcards.dataset)["resources"].get(key, default)
        # Retried jobs (e.g. out of memory on a cluster) ask for more memory and time.
        return value * attempt if key in ("mem_mb", "runtime") else value

    return get


def dataset_threads(wildcards):
    return dmlsynth_config.dataset_settings(CFG, wildcards.dataset)["resources"].get("threads", 1)


def run_params(wildcards):
    return dmlsynth_config.run_params(CFG, wildcards.dataset, wildcards.method, wildcards.loss, int(wildcards.seed))


def run_identity(wildcards):
    """What makes a training run's numbers: params hash, code digest, threads.

    Jobs that consume a run (its evaluation, the table) carry this in their params, so a
    changed or failed training makes them out of date too: Snakemake never keeps metrics,
    or a table, made from a run of another config.
    """
    params = run_params(wildcards)
    return f"{provenance.params_hash(params)}-{provenance.run_code_digest(params)}-t{dataset_threads(wildcards)}"
