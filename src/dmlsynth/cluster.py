"""What the workflow checks and sets for cluster jobs (docs/cluster.md).

- :func:`placement`: which SLURM partition and GPU model a job asks for, from the ``cluster`` settings
  of params.yaml (``partition``, ``gpu_partition``, ``gpu_model``): every job that takes a GPU goes to
  the GPU partition, whichever rule it belongs to.
- :func:`status_query_problem`: before any job is submitted, whether the SLURM executor plugin can
  learn that a job has ended. It asks ``sacct`` (accounting) or ``squeue`` (the controller's memory of
  ended jobs, ``MinJobAge``); where neither can answer it would wait forever without a word.
- :func:`gpu_problem`: jobs that ask for a GPU on a partition without any (sbatch rejects them with
  "Invalid generic resource", and Snakemake would retry each of them twice).
- :func:`partition_problem`: jobs sent to a partition the cluster does not have.
- :func:`slurm_job_active`: whether a SLURM job has ended (a run folder's lock, :mod:`dmlsynth.run_lock`).
- :data:`OFFLINE_VARIABLES`: the hubs' offline switches jobs run with under ``cluster.offline``
  (after ``dmlsynth prefetch``, :mod:`dmlsynth.prefetch`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from typing import Any, Callable, Iterable, Mapping


# Hugging Face hub, transformers and diffusers read only their local caches (HF_HOME) with these set.
OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# The versions of snakemake-executor-plugin-slurm whose status timing the checks below copy (pyproject.toml's
# `slurm` extra has the same bounds; a test compares them). Another version is refused before anything
# is submitted: its timing may differ, and a wrong guess hangs the workflow.
PLUGIN_VERSIONS = ((2, 8), (2, 9))  # from, up to (excluded)
# The plugin waits at most this long between two status queries (its max_sleep_time), so an ended job must
# stay visible to squeue at least that long, with some margin.
PLUGIN_MAX_STATUS_INTERVAL_S = 180
SQUEUE_MIN_JOB_AGE_S = PLUGIN_MAX_STATUS_INTERVAL_S + 20


def plugin_version_problem(version: str | None) -> str | None:
    """Why the installed SLURM plugin (``version``; None: not installed) is not one these checks know, or None."""
    if version is None:
        return None
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    low, high = PLUGIN_VERSIONS
    if low <= numbers < high:
        return None
    return (
        f"snakemake-executor-plugin-slurm {version} is installed, but dmlsynth's checks of how it sees jobs end "
        f"know versions {'.'.join(map(str, low))} to below {'.'.join(map(str, high))} only (a wrong guess hangs "
        "the workflow). Install a known one: pip install -e '.[slurm]'."
    )


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``cluster`` block of a validated config (its defaults filled)."""
    return dict(config["cluster"])


def placement(cluster: Mapping[str, Any], gpus: Callable[..., int]) -> dict[str, Callable[..., Any]]:
    """Snakemake resources placing a job by whether it takes a GPU (``gpus(wildcards)`` > 0).

    Only the configured settings become resources: without any, the profile's default-resources
    decide alone. A resource function returning None leaves the resource unset for that job.
    """
    resources: dict[str, Callable[..., Any]] = {}
    if cluster["partition"] or cluster["gpu_partition"]:

        def partition(wildcards):
            return (gpus(wildcards) and cluster["gpu_partition"]) or cluster["partition"]

        resources["slurm_partition"] = partition
    if cluster["gpu_model"]:
        resources["gpu_model"] = lambda wildcards: cluster["gpu_model"] if gpus(wildcards) else None
    return resources


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``scontrol show config`` as a mapping of its ``Key = value`` lines."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            values[key.strip()] = value.strip()
    return values


def _seconds(value: str | None) -> int | None:
    found = re.match(r"^(\d+)\s*(\w*)", value or "")
    if not found:
        return None
    return int(found[1]) * (3600 if found[2].lower() in ("h", "hour", "hours") else 1)


def status_query_problem(
    config: Mapping[str, str], status_command: str | None, first_check_s: int, sacct_installed: bool
) -> str | None:
    """Why the SLURM plugin could not see jobs end on this cluster, or None when it can.

    ``config`` is :func:`parse_scontrol_config` of the cluster. The plugin's own choice is followed:
    with ``squeue`` it falls back to ``sacct`` where MinJobAge < 3 x the first check's delay.
    """
    accounting = config.get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none"
    min_job_age = _seconds(config.get("MinJobAge"))
    command = status_command or ("sacct" if sacct_installed else "squeue")
    if command == "squeue" and (min_job_age is None or min_job_age < 3 * first_check_s) and sacct_installed:
        command = "sacct"
        if not accounting:  # the user already asked for squeue: only the cluster (or the first check) can change
            return (
                f"the SLURM plugin would not use the status command squeue you gave: with MinJobAge = "
                f"{config.get('MinJobAge')}, below 3 x the first status check's delay ({first_check_s} s), it "
                "switches to sacct, and this cluster has no accounting (AccountingStorageType = "
                "accounting_storage/none), so Snakemake would wait forever. Ask the administrators for "
                f"MinJobAge >= {SQUEUE_MIN_JOB_AGE_S} s or for accounting (slurmdbd). See docs/cluster.md."
            )
    if command == "sacct" and not accounting:
        return (
            "the SLURM plugin would ask sacct whether jobs have ended, but this cluster has no accounting "
            "(AccountingStorageType = accounting_storage/none: sacct answers 'Slurm accounting storage is "
            "disabled'), so Snakemake would wait forever. Use the status command squeue "
            "(--slurm-status-command squeue, as profiles/slurm does)"
            + (
                f" on a cluster whose MinJobAge is at least {SQUEUE_MIN_JOB_AGE_S} s (here {config.get('MinJobAge')})"
                if min_job_age is None or min_job_age < SQUEUE_MIN_JOB_AGE_S
                else ""
            )
            + "; or ask the administrators for accounting (slurmdbd). See docs/cluster.md."
        )
    if command == "squeue" and (min_job_age is None or min_job_age < SQUEUE_MIN_JOB_AGE_S):
        return (
            f"the SLURM plugin would ask squeue whether jobs have ended, but this cluster forgets ended jobs "
            f"after MinJobAge = {config.get('MinJobAge')}, and the plugin may wait up to "
            f"{PLUGIN_MAX_STATUS_INTERVAL_S} s between two queries: a job that ended in between would never "
            f"be seen to end and Snakemake would wait forever. "
            + (
                "Use --slurm-status-command sacct (this cluster has accounting)"
                if accounting
                else f"Ask the administrators for MinJobAge >= {SQUEUE_MIN_JOB_AGE_S} s or for accounting (slurmdbd)"
            )
            + ". See docs/cluster.md."
        )
    return None


def partition_gres(sinfo_text: str) -> tuple[str | None, dict[str, list[str]]]:
    """``sinfo -h -o '%P|%G'`` as (the default partition, the generic resources of each partition)."""
    default, gres = None, {}
    for line in sinfo_text.splitlines():
        name, sep, resources = line.strip().partition("|")
        if not sep:
            continue
        if name.endswith("*"):
            name = default = name[:-1]
        gres.setdefault(name, []).extend(r for r in resources.split(",") if r and r != "(null)")
    return default, gres


def _gpu_models(resources: Iterable[str]) -> set[str]:
    # gpu:4, gpu:a100:4, gpu:a100:4(S:0-1): the model is the middle part when there are three.
    return {r.split(":")[1] for r in resources if r.startswith("gpu:") and len(r.split(":")) >= 3}


def gpu_problem(gpu_jobs: Iterable[tuple[str, str | None, str | None]], sinfo_text: str) -> str | None:
    """Why SLURM would reject GPU jobs, or None. ``gpu_jobs``: (rule, partition or None, GPU model or None)
    of every job to run that asks for a GPU; ``sinfo_text``: ``sinfo -h -o '%P|%G'`` of the cluster."""
    default, gres = partition_gres(sinfo_text)
    rules: Counter[str] = Counter()
    reasons = set()
    for rule, partition, model in gpu_jobs:
        name = partition or default
        resources = gres.get(name or "", [])
        models = _gpu_models(resources)
        if name not in gres:
            reasons.add(f"there is no partition {name!r}")
        elif not any(r == "gpu" or r.startswith("gpu:") for r in resources):
            reasons.add(f"partition {name!r} has no GPUs")
        elif model and model not in models:
            reasons.add(f"partition {name!r} has no GPU of model {model!r} (it has {', '.join(sorted(models)) or 'untyped GPUs'})")
        else:
            continue
        rules[rule] += 1
    if not rules:
        return None
    return (
        f"{sum(rules.values())} job(s) ask for a GPU ({', '.join(f'{r} x{n}' for r, n in sorted(rules.items()))}), but "
        + "; ".join(sorted(reasons))
        + " (sinfo -o %G). Send them to a partition with GPUs (cluster.gpu_partition, cluster.gpu_model in "
        "params.yaml or --config), or run them on the CPU (dataset_settings.<dataset>.resources.gpu: 0, "
        "generation.<dataset>.device: cpu). See docs/cluster.md."
    )


def partition_problem(jobs: Iterable[tuple[str, str | None]], sinfo_text: str) -> str | None:
    """Why sbatch would reject jobs for their partition (a typo in ``cluster.partition``/``gpu_partition``), or
    None. ``jobs``: (rule, partition or None) of every job to submit; ``sinfo_text``: ``sinfo -h -o '%P|%G'``."""
    _, gres = partition_gres(sinfo_text)
    unknown = Counter(partition for _, partition in jobs if partition and partition not in gres)
    if not unknown:
        return None
    return (
        "there is no partition "
        + ", ".join(f"{name!r} ({count} job(s))" for name, count in sorted(unknown.items()))
        + f" on this cluster (sinfo lists {', '.join(sorted(gres)) or 'none'}): sbatch would reject each job "
        "and Snakemake would submit it again. Correct cluster.partition / cluster.gpu_partition (params.yaml or "
        "--config). See docs/cluster.md."
    )


def run_query(command: list[str]) -> str | None:
    """A SLURM command's output, or None when it is not installed or fails."""
    if not shutil.which(command[0]):
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


# squeue's states of a job that has not ended yet.
ACTIVE_JOB_STATES = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "RESIZING", "REQUEUED", "STOPPED"}


def slurm_job_active(job_id: str) -> bool | None:
    """Whether a SLURM job has not ended yet (squeue); None when squeue is missing or does not answer."""
    if not shutil.which("squeue"):
        return None
    try:
        result = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        # A job the controller no longer remembers (ended more than MinJobAge ago).
        return False if "invalid job id" in result.stderr.lower() else None
    states = result.stdout.split()
    return bool(states) and states[0] in ACTIVE_JOB_STATES
