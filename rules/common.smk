# Shared definitions: the validated config, paths, the job matrix and helpers.
import sys
from pathlib import Path

from dmlsynth import config as dmlsynth_config
from dmlsynth import pipeline, registry

try:
    CFG = dmlsynth_config.validate(config, source="the workflow config (params.yaml, --configfile, --config)")
except dmlsynth_config.ConfigError as error:
    # Stop before any job runs, with the message only (no traceback to dig through).
    sys.exit(f"dmlsynth: {error}")

DATA = CFG["paths"]["data"]
RESULTS = CFG["paths"]["results"]
LOGS = CFG["paths"]["logs"]
# Jobs run with the interpreter that runs Snakemake, so the workflow and its jobs share one environment.
PY = sys.executable
# The merged config (params.yaml + --configfile + --config) that every job reads.
EFFECTIVE_CONFIG = str(dmlsynth_config.write_effective(CFG, Path(".snakemake") / "dmlsynth"))

RUNS = pipeline.runs(CFG)
RUN_DIR = pipeline.RUN_DIR.format(results=RESULTS, dataset="{dataset}", method="{method}", loss="{loss}", seed="{seed}")

# Other rule files append inputs the table waits for (e.g. the generation report).
TABLE_EXTRA_INPUTS = []


wildcard_constraints:
    dataset="|".join(registry.DATASETS),
    method="|".join(registry.METHODS),
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
