"""The embedded workflow on a real one-node SLURM cluster, through profiles/slurm (docs/cluster.md).

Debian's slurm-wlm and munge on localhost (tests/helpers/slurm.py), without accounting: the
profile's status command must see jobs end all the same. Skipped where SLURM or the executor
plugin is not installed (a laptop); `.ci/run` installs both and sets DMLSYNTH_REQUIRE_SLURM=1,
which turns the skip into a failure.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmlsynth.layout import Layout
from tests.conftest import ROOT
from tests.helpers import slurm
from tests.helpers.workflow import snakemake, tiny_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REQUIRE_VARIABLE = "DMLSYNTH_REQUIRE_SLURM"
# The profile as a user runs it, with the plugin's default status timing (the first query 40 s after a
# submission) on a cluster with Slurm's default MinJobAge (300 s): what users have.
PROFILE = ("--profile", str(ROOT / "profiles" / "slurm"))
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
    assert "MinJobAge               = 300 sec" in local.query("scontrol", "show", "config")  # Slurm's default
    yield local
    local.stop()


def _workflow(default_params, workdir: Path, methods=("baseline",), device="cpu", cluster=None, generation=None, **resources) -> dict:
    config = tiny_workflow(
        default_params, workdir, methods=list(methods), losses=["multi_similarity"], seeds=[0],
        # Three epochs of a few seconds each, so the test can catch the job between two checkpoints.
        training={**default_params["training"], "device": device, "epochs": 3, "batches_per_epoch": 40},
    )  # fmt: skip
    config["dataset_settings"]["digits"]["resources"] = resources
    if cluster:
        config["cluster"] = cluster
    if generation:
        config.setdefault("generation", {}).setdefault("digits", {}).update(generation)
    (workdir / "params.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def reference(cluster, default_params, tmp_path_factory) -> Path:
    """The tiny workflow run to its end without SLURM: its prepared data seed each test's folder, and its
    numbers are what a run interrupted on the cluster must reproduce."""
    workdir = tmp_path_factory.mktemp("reference")
    _workflow(default_params, workdir)
    snakemake(workdir, "results/table.csv")
    return workdir


def _seeded(reference: Path, workdir: Path) -> None:
    """The reference's prepared data and Snakemake's records of them (of nothing else: a record of an output
    that is not there would make Snakemake compare the params of its job before its inputs exist)."""
    shutil.copytree(reference / "data", workdir / "data", dirs_exist_ok=True)
    records = workdir / ".snakemake" / "metadata"
    records.mkdir(parents=True, exist_ok=True)
    for record in (reference / ".snakemake" / "metadata").iterdir():
        if base64.urlsafe_b64decode(record.name).decode().startswith("data/"):
            shutil.copy2(record, records / record.name)


def _start(workdir: Path, cluster, *args: str, name: str = "snakemake.out") -> subprocess.Popen:
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
        *PROFILE, *args, "results/table.csv",
    ]  # fmt: skip
    out = open(workdir / name, "w")
    return subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **cluster.env})


def _wait_for(condition, what: str, timeout: float, cluster, workflow: subprocess.Popen | None = None, output: Path | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if workflow is not None:
            assert workflow.poll() is None, f"the workflow ended while waiting for {what}:\n" + output.read_text()
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}\n" + cluster.logs()
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _jobs_after(cluster, last: int) -> list[dict[str, str]]:
    """The jobs submitted after job ``last`` (by id: the controller forgets ended jobs after MinJobAge)."""
    return [job for job in cluster.jobs() if int(job["id"]) > last]


def _last_job(cluster) -> int:
    return max((int(job["id"]) for job in cluster.jobs()), default=0)


def _train_jobs(cluster, label="baseline") -> list[dict[str, str]]:
    return [job for job in cluster.jobs() if job["comment"].startswith(f"rule_train_wildcards_digits_{label}")]


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


def _same_numbers(workdir: Path, reference: Path, run) -> None:
    """The run's embeddings and metrics are those of the reference's uninterrupted run (its timings aside)."""
    with np.load(workdir / run.embeddings) as resumed, np.load(reference / run.embeddings) as uninterrupted:
        assert np.array_equal(resumed["embeddings"], uninterrupted["embeddings"])
    metrics = [json.loads((folder / run.metrics).read_text()) for folder in (workdir, reference)]
    assert [{k: v for k, v in m.items() if not k.endswith("seconds")} for m in metrics] == [
        {k: v for k, v in metrics[1].items() if not k.endswith("seconds")}
    ] * 2


def test_a_killed_workflows_job_stops_a_second_job_is_refused_and_a_rerun_resumes_through_a_timeout(
    cluster, reference, default_params, tmp_path
):
    """One run through everything that interrupts a cluster job (one test: each part waits for the plugin's
    status checks, 40 s and more apart):

    1. the workflow is killed (kill -9) while its training job runs on: the job, held still in its second
       epoch, is an orphan that holds the run folder;
    2. a second workflow (after --unlock, as a user would) submits the run again: that job is refused by the
       run folder's lock, naming the orphan, and writes nothing;
    3. let go, the orphan finishes its epoch, writes the checkpoint and stops: its workflow is gone;
    4. run again, with one minute per try: the job resumes from the orphan's checkpoint, is held still, and
       SLURM times it out; the retry gets twice the time and memory, resumes again and finishes, with the
       numbers of an uninterrupted run; every try is in the log; a further run submits nothing.
    """
    config = _workflow(default_params, tmp_path, runtime=10)
    _seeded(reference, tmp_path)
    run = Layout.of(config).run("digits", "baseline", "multi_similarity", 0)
    output, tries = tmp_path / "snakemake.out", tmp_path / f"{TRAIN_LOG}.tries"
    workflow = _start(tmp_path, cluster)
    try:
        _wait_for(lambda: (tmp_path / run.checkpoint).exists(), "the first checkpoint", 300, cluster, workflow, output)
        pid = _training_process(tmp_path)
        assert pid, "the training job's process is not running here"
        os.kill(pid, signal.SIGSTOP)
        os.kill(workflow.pid, signal.SIGKILL)
        workflow.wait()
    finally:
        if workflow.poll() is None:
            workflow.kill()
    (orphan,) = _train_jobs(cluster)
    assert orphan["state"] == "RUNNING", orphan
    checkpoint = (tmp_path / run.checkpoint).stat().st_mtime_ns

    # 2. (Stopped once its job is refused and ended: waiting for the plugin to see that would only cost time.)
    snakemake(tmp_path, *PROFILE, "--unlock", env=cluster.env)
    refused = f"being trained by another job: process {pid} on {socket.gethostname()}, SLURM job {orphan['id']}"
    second = _start(tmp_path, cluster, "--retries", "0", name="second.out")
    try:
        _wait_for(lambda: refused in tries.read_text(), "the second job's refusal", 120, cluster, second, tmp_path / "second.out")
        _wait_for(lambda: len(_train_jobs(cluster)) == 2 and _train_jobs(cluster)[1]["state"] == "FAILED", "it to end", 60, cluster)
    finally:
        second.kill()  # (its job has ended; a Snakemake told to stop would wait for its next status check)
        second.wait()
    refused_job = _train_jobs(cluster)[1]["id"]
    assert (tmp_path / run.checkpoint).stat().st_mtime_ns == checkpoint and not (tmp_path / run.record).exists()

    # 3.
    os.kill(pid, signal.SIGCONT)
    _wait_for(lambda: not _alive(pid), "the orphan to stop", 120, cluster)
    assert "the Snakemake process that started this job is gone; stopped after epoch 2" in tries.read_text()
    assert "epoch 3/3" not in tries.read_text() and not (tmp_path / run.record).exists()
    assert not (tmp_path / run.file("train.lock")).exists()  # released on the way out
    _wait_for(lambda: _train_jobs(cluster)[0]["state"] == "FAILED", "SLURM to see the orphan end", 60, cluster)

    # 4. (The time limit changes no number: the run is the same run.)
    _workflow(default_params, tmp_path, runtime=1, mem_mb=1000)
    snakemake(tmp_path, *PROFILE, "--unlock", env=cluster.env)
    started = tries.read_text().count("dmlsynth train started")
    workflow = _start(tmp_path, cluster, name="third.out")
    try:
        resumed = lambda: tries.read_text().count("resuming from") >= 1 and tries.read_text().count("dmlsynth train started") > started
        _wait_for(resumed, "the resumed try", 300, cluster, workflow, tmp_path / "third.out")
        pid = _training_process(tmp_path)
        assert pid, "the resumed training's process is not running here"
        os.kill(pid, signal.SIGSTOP)
        workflow.wait(timeout=600)
    finally:
        if workflow.poll() is None:
            workflow.kill()
    assert workflow.returncode == 0, (tmp_path / "third.out").read_text() + cluster.logs()
    assert (tmp_path / "results" / "table.csv").is_file()
    # (The orphan and the refused job are forgotten MinJobAge after they ended: the later ids are this run's.)
    train = [job for job in _train_jobs(cluster) if int(job["id"]) > int(refused_job)]
    assert [job["state"] for job in train] == ["TIMEOUT", "COMPLETED"], train
    # The retry asked for twice the time and memory.
    assert [(job["time_limit"], job["memory"]) for job in train] == [("1:00", "1000M"), ("2:00", "2000M")], train
    # The job's log is its last try, which resumed; <log>.tries keeps every try.
    log, all_tries = (tmp_path / TRAIN_LOG).read_text(), tries.read_text()
    assert log.count("dmlsynth train started") == 1 and "after epoch 2 of 3" in log and "epoch 3/3 loss" in log, log
    assert all_tries.count("dmlsynth train started") == 4 and all_tries.count("after epoch 2 of 3") == 2, all_tries
    # SLURM's own log of the timed-out try is kept; the plugin deletes those of successful jobs.
    slurm_logs = {p.stem for p in (tmp_path / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert train[0]["id"] in slurm_logs and train[1]["id"] not in slurm_logs, slurm_logs
    assert "CANCELLED" in (next((tmp_path / ".snakemake" / "slurm_logs").rglob(f"{train[0]['id']}.log")).read_text())
    _same_numbers(tmp_path, reference, run)
    assert not (tmp_path / run.file("train.lock")).exists()

    # A further run would submit nothing (its dry run: the same decision, without the status checks' wait).
    again = snakemake(tmp_path, *PROFILE, "--dry-run", "results/table.csv", env=cluster.env)
    assert "Nothing to be done" in again.output, again.output


def test_gpu_jobs_go_to_the_gpu_partition_and_misplaced_jobs_stop_before_anything_is_submitted(
    cluster, reference, default_params, tmp_path
):
    # A GPU for the training (`device: cpu` would keep it off any) and for the generator, whose device asks for one.
    gpu = {"gpu_partition": slurm.GPU_PARTITION, "gpu_model": slurm.GPU_MODEL}
    before = _last_job(cluster)
    for placement, message in [
        ({**gpu, "gpu_model": "a100"}, f"partition '{slurm.GPU_PARTITION}' has no GPU of model 'a100' (it has {slurm.GPU_MODEL})"),
        ({**gpu, "partition": "cpus"}, "there is no partition 'cpus'"),
    ]:
        _workflow(default_params, tmp_path, methods=("baseline", "blender"), device="auto", cluster=placement, generation={"device": "cuda"}, gpu=1)
        result = snakemake(tmp_path, *PROFILE, "results/table.csv", env=cluster.env, check=False)
        assert result.returncode != 0 and "nothing was submitted: " in result.output and message in result.output, result.output
        assert not _jobs_after(cluster, before)  # not even the jobs without a GPU: it fails once, not once per try

    _workflow(default_params, tmp_path, methods=("baseline", "blender"), device="auto", cluster=gpu, generation={"device": "cuda"}, gpu=1)
    _seeded(reference, tmp_path)
    workflow = _start(tmp_path, cluster)
    try:
        wanted = {"train", "train_generator"}
        submitted = lambda: {re.match(r"rule_([a-z_]+?)_wildcards", j["comment"])[1] for j in _jobs_after(cluster, before)}
        _wait_for(lambda: wanted <= submitted(), "the GPU jobs' submission", 120, cluster, workflow, tmp_path / "snakemake.out")
    finally:
        workflow.kill()
        workflow.wait()
        for job in _jobs_after(cluster, before):
            cluster.query("scancel", job["id"])
    placed = {}
    for job in _jobs_after(cluster, before):
        shown = cluster.query("scontrol", "show", "job", job["id"])
        rule = re.match(r"rule_([a-z_]+?)_wildcards", job["comment"])[1]
        placed[rule] = re.search(r"Partition=(\S+)", shown)[1], f"gpu:{slurm.GPU_MODEL}:1" in shown
    assert placed["train"] == placed["train_generator"] == (slurm.GPU_PARTITION, True), placed


def test_sacct_on_a_cluster_without_accounting_stops_instead_of_waiting_forever(cluster, default_params, tmp_path):
    _workflow(default_params, tmp_path)
    before = _last_job(cluster)
    result = snakemake(
        tmp_path, *PROFILE, "--slurm-status-command", "sacct", "results/table.csv", env=cluster.env, check=False, timeout=120
    )
    assert result.returncode != 0
    assert "nothing was submitted: the SLURM plugin would ask sacct" in result.output
    assert "accounting_storage/none" in result.output and "squeue" in result.output
    assert not _jobs_after(cluster, before)
