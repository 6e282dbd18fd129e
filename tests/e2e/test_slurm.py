"""The embedded workflow on a real one-node SLURM cluster, through profiles/slurm (docs/cluster.md).

Debian's slurm-wlm and munge on localhost (tests/helpers/slurm.py), without accounting: the
profile's status command must see jobs end all the same. Skipped where SLURM or the executor
plugin is not installed (a laptop); `.ci/run` installs both and sets DMLSYNTH_REQUIRE_SLURM=1,
which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dmlsynth.layout import Layout
from tests.conftest import ROOT
from tests.helpers import slurm
from tests.helpers.workflow import snakemake, tiny_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REQUIRE_VARIABLE = "DMLSYNTH_REQUIRE_SLURM"
# The profile as a user runs it; the plugin's first status query comes after 1 s instead of 40 s
# (only the test's speed: every job would otherwise wait 40 s to be seen ending).
PROFILE = ("--profile", str(ROOT / "profiles" / "slurm"), "--slurm-init-seconds-before-status-checks", "1")
TRAIN_LOG = "logs/train/digits/baseline/multi_similarity/seed0.log"


def _plugin_missing() -> list[str]:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return ["snakemake-executor-plugin-slurm (pip install -e '.[slurm]')"]
    return []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = slurm.missing() + _plugin_missing()
    if missing:
        reason = f"no SLURM here: {', '.join(missing)} not installed (apt-get install slurm-wlm munge; .ci/run does)"
        if os.environ.get(REQUIRE_VARIABLE):
            pytest.fail(f"{REQUIRE_VARIABLE} is set but {reason}")
        pytest.skip(reason)
    local = slurm.LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield local
    local.stop()


def _workflow(default_params, workdir: Path, methods=("baseline",), device="cpu", **resources) -> dict:
    config = tiny_workflow(
        default_params, workdir, methods=list(methods), losses=["multi_similarity"], seeds=[0],
        # Three epochs of a few seconds each, so the test can catch the job between two checkpoints.
        training={**default_params["training"], "device": device, "epochs": 3, "batches_per_epoch": 40},
    )  # fmt: skip
    config["dataset_settings"]["digits"]["resources"] = resources
    (workdir / "params.yaml").write_text(yaml.safe_dump(config))
    return config


def _training_process(workdir: Path) -> int | None:
    """PID of the `dmlsynth train` process of this workflow's baseline run (not its shell wrapper, srun or Snakemake)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args]
        if "train" in words and "--job" in words and any(w.endswith("dmlsynth") for w in words):
            record = json.loads(words[words.index("--job") + 1])
            if record["params"]["label"] != "baseline":
                continue
            try:
                if Path(os.readlink(proc / "cwd")) == workdir.resolve():
                    return int(proc.name)
            except OSError:
                continue
    return None


def test_the_workflow_runs_through_sbatch_retries_a_timeout_and_resumes(cluster, default_params, tmp_path):
    # BLenDeR too: its generation jobs go through sbatch, its prompts and merge jobs (seconds) run locally.
    # The first try of the baseline training has one minute; it is held still after its first epoch,
    # so SLURM times it out. The retry gets twice the time and memory and resumes from the checkpoint.
    config = _workflow(default_params, tmp_path, methods=("baseline", "blender"), runtime=1, mem_mb=1000)
    run = Layout.of(config).run("digits", "baseline", "multi_similarity", 0)
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
        *PROFILE, "results/table.csv",
    ]  # fmt: skip
    out = open(tmp_path / "snakemake.out", "w")
    workflow = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **cluster.env})
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / run.checkpoint).exists():
            assert workflow.poll() is None, (tmp_path / "snakemake.out").read_text()
            assert time.monotonic() < deadline, "no checkpoint of the first try:\n" + cluster.logs()
            time.sleep(0.05)
        pid = _training_process(tmp_path)
        assert pid, "the training job's process is not running here"
        os.kill(pid, signal.SIGSTOP)
        workflow.wait(timeout=600)
    finally:
        if workflow.poll() is None:
            workflow.kill()
    output = (tmp_path / "snakemake.out").read_text()
    assert workflow.returncode == 0, output + cluster.logs()
    assert (tmp_path / "results" / "table.csv").is_file()

    jobs = cluster.jobs()
    rules = [re.match(r"rule_([a-z_]+?)(_wildcards_|$)", job["comment"])[1] for job in jobs]
    # Every job went through sbatch but the local ones (prompts from attributes, merge_generated, table, compare).
    submitted = {"prepare_data", "train_generator", "generate", "filter_generated", "generation_report", "train", "evaluate"}
    assert set(rules) == submitted, jobs
    assert rules.count("generate") == rules.count("filter_generated") == 5 and rules.count("evaluate") == 2
    train = [job for job in jobs if job["comment"].startswith("rule_train_wildcards_digits_baseline")]
    assert [job["state"] for job in train] == ["TIMEOUT", "COMPLETED"], train
    # The retry asked for twice the time and memory.
    assert [(job["time_limit"], job["memory"]) for job in train] == [("1:00", "1000M"), ("2:00", "2000M")], train

    # The job's log is its last try, which resumed; <log>.tries keeps both: the first one's epoch, then the second.
    log, tries = (tmp_path / TRAIN_LOG).read_text(), (tmp_path / f"{TRAIN_LOG}.tries").read_text()
    assert log.count("dmlsynth train started") == 1 and "resuming from" in log and "epoch 3/3 loss" in log, log
    assert tries.count("dmlsynth train started") == 2, tries
    assert re.search(r"epoch 1/3 loss[\s\S]*started[\s\S]*resuming from .*checkpoint.pt after epoch [12] of 3", tries), tries
    # SLURM's own log of the timed-out try is kept; the plugin deletes those of successful jobs.
    slurm_logs = {p.stem for p in (tmp_path / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert train[0]["id"] in slurm_logs and train[1]["id"] not in slurm_logs, slurm_logs
    assert "CANCELLED" in (next((tmp_path / ".snakemake" / "slurm_logs").rglob(f"{train[0]['id']}.log")).read_text())

    again = snakemake(tmp_path, *PROFILE, "results/table.csv", env=cluster.env)
    assert "Nothing to be done" in again.output
    assert len(cluster.jobs()) == len(jobs)  # submitted nothing


def test_gpu_jobs_on_a_cluster_without_gpus_stop_before_anything_is_submitted(cluster, default_params, tmp_path):
    # A GPU for the training jobs: `device: cpu` would keep them off any GPU (dmlsynth.jobs.gpus_for).
    _workflow(default_params, tmp_path, device="auto", gpu=1)
    before = len(cluster.jobs())
    result = snakemake(tmp_path, *PROFILE, "results/table.csv", env=cluster.env, check=False)
    assert result.returncode != 0
    assert "nothing was submitted: 1 job(s) ask for a GPU (train x1), but partition 'debug' has no GPUs" in result.output
    assert "cluster.gpu_partition" in result.output
    assert len(cluster.jobs()) == before  # not even the jobs without a GPU: it fails once, not once per try


def test_sacct_on_a_cluster_without_accounting_stops_instead_of_waiting_forever(cluster, default_params, tmp_path):
    _workflow(default_params, tmp_path)
    before = len(cluster.jobs())
    result = snakemake(
        tmp_path, *PROFILE, "--slurm-status-command", "sacct", "results/table.csv", env=cluster.env, check=False, timeout=120
    )
    assert result.returncode != 0
    assert "nothing was submitted: the SLURM plugin would ask sacct" in result.output
    assert "accounting_storage/none" in result.output and "squeue" in result.output
    assert len(cluster.jobs()) == before
