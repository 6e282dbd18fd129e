# Shared definitions: the validated config, the layout of every file, the job matrix and helpers.
import importlib.metadata
import json
import os
import re
import shutil
import sys
from pathlib import Path

from dmlsynth import cluster
from dmlsynth import config as dmlsynth_config
from dmlsynth import gpu_slots, jobs, layout, pipeline, provenance, recovery, registry, resolve, tracking, workflow as dmlsynth_workflow

try:
    CFG = dmlsynth_config.validate(config, source="the workflow config (params.yaml, --configfile, --config)")
except dmlsynth_config.ConfigError as error:
    # Stop before any job runs, with the message only (no traceback to dig through).
    sys.exit(f"dmlsynth: {error}")

# The one code tree: the dmlsynth the jobs import is this checkout's (its digests, git commit and DVC
# dependencies all describe one tree).
PACKAGE_PROBLEM = provenance.other_checkout(Path(workflow.basedir))
if PACKAGE_PROBLEM:
    sys.exit(f"dmlsynth: {PACKAGE_PROBLEM}")

# Every path comes from dmlsynth.layout; rules ask it, with Snakemake wildcards as defaults.
LAYOUT = layout.Layout.of(CFG)
# Every job's resolved record (dmlsynth.jobs): its params, files, threads, resources, GPU and identity.
# A rule takes its files, threads and resources from it, compares its identity (a change re-runs it)
# and hands the job the whole record (--job {params.job:jsonq}, which Snakemake does not compare).
JOBS = jobs.Jobs(CFG)
# Jobs call `dmlsynth` by name. The environment that runs Snakemake comes first on their PATH, so the
# workflow and its jobs share one environment (`.venv/bin/snakemake` finds the venv's dmlsynth without an
# activated venv); a software environment (--software-deployment-method conda) puts its own in front.
dmlsynth_workflow.put_first_on_path(Path(sys.executable).parent)
# Each rule's shell command ends with `2>&1 | tee -a {log:q}.tries >{log:q}`: its log holds this try
# (Snakemake deletes a job's log before each try), <log>.tries keeps every try, appended (docs/cluster.md).
# Each rule's `benchmark:` file (dmlsynth.layout.Layout.benchmark, logs/benchmarks/<rule>/...tsv) is
# Snakemake's record of the job's wall time, max RSS and CPU time; benchmarks/bench_embedded_default.py
# sums them per rule.
# Jobs record the git state of this project folder (not of wherever the package is installed).
os.environ[provenance.PROJECT_DIR_VARIABLE] = str(Path(workflow.basedir).resolve())
# The commands jobs print to recover from a failure name this workflow and this config (dmlsynth.recovery).
os.environ[recovery.VARIABLE] = json.dumps(
    recovery.workflow_options(
        workflow.main_snakefile, Path.cwd(), workflow.config_settings.configfiles, workflow.config_settings.config_args
    )
)
# Long jobs stop (after a checkpoint) when the main Snakemake process is killed; a cluster job's own
# Snakemake (job step) keeps the main process's identity and heartbeat (dmlsynth.workflow.announce).
dmlsynth_workflow.announce(workflow.is_main_process)
# Jobs leave a note here when MLflow tracking fails; the workflow prints them once at the end.
TRACKING_FAILURES = Path(layout.WORKFLOW_STATE, "tracking-failures").resolve()
os.environ[tracking.FAILURES_VARIABLE] = str(TRACKING_FAILURES)


def warn_about_tracking_failures():
    notes = tracking.failure_notes(TRACKING_FAILURES)
    if notes:
        print(
            f"\ndmlsynth: WARNING: MLflow tracking failed {len(notes)} time(s); results on disk are complete.\n  "
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
os.environ[gpu_slots.GPU_SLOTS_VARIABLE] = str(GPU_SLOTS)

# Where cluster jobs run (params.yaml `cluster`, docs/cluster.md).
CLUSTER = cluster.settings(CFG)
if CLUSTER["offline"]:  # models come from the local caches only (`dmlsynth prefetch` filled them)
    os.environ.update(cluster.OFFLINE_VARIABLES)
if (CLUSTER["partition"] or CLUSTER["gpu_partition"]) and "slurm_partition" in (
    workflow.resource_settings.default_resources or {}
):
    sys.exit(
        "dmlsynth: the SLURM partition is set twice, by cluster.partition/gpu_partition of the config and by "
        "slurm_partition of --default-resources (the profile): put the partition of the jobs without a GPU "
        "into cluster.partition and drop slurm_partition from default-resources (docs/cluster.md)."
    )


def job_resources(mem_mb, runtime, gpu=None):
    """A rule's resources: memory (MB) and time (minutes) that grow with each try (a retried job asks
    for attempt x both), its GPUs (rules that may use one), and the partition and GPU model the
    cluster settings give it. Each value: a number, or a function of the wildcards."""

    def value(given, wildcards):
        return given(wildcards) if callable(given) else given

    def per_attempt(given):
        return lambda wildcards, attempt: value(given, wildcards) * attempt

    def gpus(wildcards):
        return int(value(gpu, wildcards) or 0)

    return {
        "mem_mb": per_attempt(mem_mb),
        "runtime": per_attempt(runtime),
        **({} if gpu is None else {"gpu": gpus}),
        **cluster.placement(CLUSTER, gpus),
    }


def check_cluster():
    """Before a SLURM run submits anything: stop, saying why, where it could never see jobs end, or
    where its GPU jobs would be rejected (dmlsynth.cluster)."""
    if getattr(workflow.executor_plugin, "name", None) != "slurm":
        return
    settings = workflow.executor_settings
    problems = [cluster.plugin_version_problem(importlib.metadata.version("snakemake-executor-plugin-slurm"))]
    slurm_config = cluster.run_query(["scontrol", "show", "config"])
    if slurm_config is not None:  # (a command that fails tells nothing: then the plugin is left to it)
        problems.append(
            cluster.status_query_problem(
                cluster.parse_scontrol_config(slurm_config),
                getattr(settings, "status_command", None),
                int(getattr(settings, "init_seconds_before_status_checks", None) or 40),
                shutil.which("sacct") is not None,
            )
        )
    submitted = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
    placed = [(job.rule.name, job.resources.get("slurm_partition")) for job in submitted]
    gpu_jobs = [
        (job.rule.name, job.resources.get("slurm_partition"), job.resources.get("gpu_model"))
        for job in submitted
        if job.resources.get("gpu", 0)
    ]
    asks = gpu_jobs or any(partition for _, partition in placed)
    partitions = cluster.run_query(["sinfo", "-h", "-o", "%P|%G"]) if asks else None
    if partitions is not None:
        problems.append(cluster.partition_problem(placed, partitions))
        problems.append(None if problems[-1] else cluster.gpu_problem(gpu_jobs, partitions))
    if any(problems):
        raise WorkflowError("dmlsynth: nothing was submitted: " + "\n".join(p for p in problems if p))

RUNS = JOBS.runs
RUN = LAYOUT.run()  # the run folder pattern, {dataset}/{method}/{loss}/seed{seed}


wildcard_constraints:
    dataset="|".join(registry.datasets()),
    # A method, or a control with a method's loss params ("baseline+beta=40", dmlsynth.registry.control_label).
    method="|".join(re.escape(name) for name in dict.fromkeys([*registry.METHODS, *(run["method"] for run in RUNS)])),
    loss="|".join(registry.LOSSES),
    seed=r"\d+",


# The generation chain is the workflow's critical path (generator -> per-class images -> the runs that train
# on them): among ready jobs Snakemake starts these first, and the runs of real images fill the other cores.
CRITICAL_PATH = 10


def on_critical_path(job):
    """A Snakemake priority: CRITICAL_PATH for a run that trains on generated images, 0 otherwise."""
    return lambda wildcards: CRITICAL_PATH if "synthetic" in job(wildcards).inputs else 0


def job_of(rule, *names):
    """The record of a rule's job, from its wildcards (``names``: the constructor's arguments, in order)."""
    return lambda wildcards: getattr(JOBS, rule)(*(getattr(wildcards, name) for name in names))


def record_params(job):
    """A rule's params: the identity Snakemake compares, and the record it hands the job uncompared.

    ``inputs_present``: Snakemake keeps an output whose inputs were deleted as long as it is newer than
    the rest (a deleted run would leave the table reporting it); whether every input is there is part of
    what it compares, so a deleted input re-runs the job, which makes the input again first.
    """
    return {
        "identity": lambda w: job(w).identity(),
        "inputs_present": lambda w: job(w).inputs_present(),
        "job": lambda w: job(w).argument(),
    }


def record_resources(job, gpu=False):
    """A rule's resources from its record: memory and time (growing with each try), placement, and the
    GPUs of rules whose jobs may compute on one (``gpu``)."""
    return job_resources(
        mem_mb=lambda w: job(w).mem_mb, runtime=lambda w: job(w).runtime, gpu=(lambda w: job(w).gpus) if gpu else None
    )
