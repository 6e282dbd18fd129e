"""Before a SLURM run submits anything: can the plugin see jobs end, and would GPU jobs be accepted (dmlsynth.cluster)."""

import pytest

from dmlsynth import cluster
from dmlsynth.config import filled

# As `scontrol show config` prints it (Slurm 22.05, trimmed).
SCONTROL = """Configuration data as of 2026-12-02T01:00:00
AccountingStorageType   = {accounting}
AuthType                = auth/munge
MinJobAge               = {min_job_age}
SlurmctldPort           = 6817
"""


def problem(accounting: bool, min_job_age: str, command: str | None, first_check_s: int = 40, sacct: bool = True):
    text = SCONTROL.format(
        accounting="accounting_storage/slurmdbd" if accounting else "accounting_storage/none", min_job_age=min_job_age
    )
    return cluster.status_query_problem(cluster.parse_scontrol_config(text), command, first_check_s, sacct)


def test_the_parsed_config_has_its_keys():
    config = cluster.parse_scontrol_config(SCONTROL.format(accounting="accounting_storage/none", min_job_age="300 sec"))
    assert config["MinJobAge"] == "300 sec" and config["AccountingStorageType"] == "accounting_storage/none"


@pytest.mark.parametrize(
    "accounting, min_job_age, command",
    [
        (False, "300 sec", "squeue"),  # the profile's choice on a cluster without accounting
        (True, "300 sec", "squeue"),
        (True, "10 sec", "squeue"),  # the plugin falls back to sacct, which has accounting
        (True, "10 sec", "sacct"),
        (True, "10 sec", None),  # the plugin's own default: sacct
        (False, "1h", "squeue"),
    ],
)
def test_a_cluster_whose_status_queries_work_passes(accounting, min_job_age, command):
    assert problem(accounting, min_job_age, command) is None


def test_sacct_without_accounting_would_wait_forever():
    for command in ("sacct", None):  # None: the plugin's default where sacct is installed
        message = problem(False, "300 sec", command)
        assert "accounting_storage/none" in message and "--slurm-status-command squeue" in message


def test_squeue_falls_back_to_sacct_where_min_job_age_is_below_three_first_checks():
    # A user already on squeue (the profile's) is not told to use squeue: only the cluster can change.
    message = problem(False, "60 sec", "squeue", first_check_s=40)
    assert "would not use the status command squeue you gave" in message and "MinJobAge = 60 sec" in message
    assert f"MinJobAge >= {cluster.SQUEUE_MIN_JOB_AGE_S} s or for accounting" in message
    assert "--slurm-status-command squeue" not in message and "as profiles/slurm does" not in message
    assert problem(False, "60 sec", "squeue", first_check_s=40, sacct=False).startswith("the SLURM plugin would ask squeue")


def test_squeue_with_too_short_a_memory_of_ended_jobs_is_refused():
    message = problem(False, "150 sec", "squeue")
    assert "MinJobAge = 150 sec" in message and f"MinJobAge >= {cluster.SQUEUE_MIN_JOB_AGE_S}" in message
    assert "--slurm-status-command sacct" in problem(True, "150 sec", "squeue")


SINFO = "cpu*|(null)\ngpu|gpu:a100:4(S:0-1)\ngpu|gpu:v100:2\n"


def test_gpu_jobs_on_partitions_with_their_gpus_pass():
    assert cluster.gpu_problem([("train", "gpu", None), ("generate", "gpu", "a100"), ("fine_tune", "gpu", "v100")], SINFO) is None
    assert cluster.gpu_problem([], "debug*|(null)") is None


def test_gpu_jobs_without_gpus_are_named_with_the_way_out():
    message = cluster.gpu_problem([("train", None, None), ("train", None, None), ("generate", "cpu", None)], SINFO)
    assert message.startswith("3 job(s) ask for a GPU (generate x1, train x2), but partition 'cpu' has no GPUs")
    assert "cluster.gpu_partition" in message and "resources.gpu: 0" in message


def test_a_missing_gpu_model_or_partition_is_named():
    message = cluster.gpu_problem([("train", "gpu", "h100"), ("generate", "gpus", None)], SINFO)
    assert "partition 'gpu' has no GPU of model 'h100' (it has a100, v100)" in message
    assert "there is no partition 'gpus'" in message


def test_placement_sets_only_what_is_configured():
    gpus = lambda w: int(w == "gpu job")  # noqa: E731
    none = {**cluster.settings(filled({}))}
    assert cluster.placement(none, gpus) == {}
    placed = cluster.placement({**none, "gpu_partition": "gpu", "gpu_model": "a100"}, gpus)
    assert placed["slurm_partition"]("gpu job") == "gpu" and placed["slurm_partition"]("cpu job") is None
    assert placed["gpu_model"]("gpu job") == "a100" and placed["gpu_model"]("cpu job") is None


def test_a_partition_the_cluster_does_not_have_is_named():
    assert cluster.partition_problem([("train", "gpu"), ("evaluate", "cpu"), ("prepare_data", None)], SINFO) is None
    message = cluster.partition_problem([("train", "gpus"), ("train", "gpus"), ("evaluate", "cpu")], SINFO)
    assert message.startswith("there is no partition 'gpus' (2 job(s)) on this cluster (sinfo lists cpu, gpu)")
    assert "cluster.gpu_partition" in message


def test_only_the_plugin_versions_whose_timing_is_known_pass():
    assert cluster.plugin_version_problem("2.8.0") is None and cluster.plugin_version_problem("2.8.7") is None
    assert cluster.plugin_version_problem(None) is None
    for version in ("2.9.0", "3.0.1", "2.7.4"):
        assert f"snakemake-executor-plugin-slurm {version} is installed" in cluster.plugin_version_problem(version)


def test_pyproject_bounds_the_plugin_as_the_checks_do():
    import tomllib

    from tests.conftest import ROOT

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["slurm"]
    low, high = (".".join(map(str, v)) for v in cluster.PLUGIN_VERSIONS)
    assert extra == [f"snakemake-executor-plugin-slurm>={low},<{high}"]
