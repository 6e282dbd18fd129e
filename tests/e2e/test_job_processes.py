"""A job of the real workflow never outlives the shell Snakemake runs it in (dmlsynth.workflow.die_with_parent)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmlsynth.layout import Layout
from tests.conftest import ROOT
from tests.helpers.workflow import snakemake, tiny_workflow

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")]


def _processes():
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            words = [w.decode(errors="replace") for w in (proc / "cmdline").read_bytes().split(b"\0")]
            cwd = Path(os.readlink(proc / "cwd"))
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        yield int(proc.name), parent, cwd, words


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("when", ["starting", "training"])
def test_a_training_job_whose_shell_is_killed_ends_and_writes_nothing(default_params, tmp_path, when):
    """Killed while Python is still starting (before the job could ask to die with its shell) or mid-training."""
    config = tiny_workflow(
        default_params, tmp_path, methods=["baseline"], losses=["multi_similarity"], seeds=[0],
        training={**default_params["training"], "device": "cpu", "epochs": 3, "batches_per_epoch": 40},
    )  # fmt: skip
    run = Layout.of(config).run("digits", "baseline", "multi_similarity", 0)
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--cores", "2", run.record]
    workflow = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, job = time.monotonic() + 300, None
        while job is None:
            assert workflow.poll() is None and time.monotonic() < deadline, workflow.stdout.read()
            job = next(
                (
                    (pid, parent)
                    for pid, parent, cwd, words in _processes()
                    if cwd == tmp_path.resolve() and "train" in words and any(w.endswith("dmlsynth") for w in words)
                ),
                None,
            )
            time.sleep(0.05)
        pid, shell = job
        log = tmp_path / "logs/train/digits/baseline/multi_similarity/seed0.log"
        while when == "training" and "epoch 1/3 loss" not in (log.read_text() if log.exists() else ""):
            assert workflow.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(shell, signal.SIGKILL)  # the job's `bash -c` wrapper
        output = workflow.communicate(timeout=120)[0]
    finally:
        if workflow.poll() is None:
            workflow.kill()
    assert workflow.returncode != 0 and "Error in rule train" in output, output
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the training process went on after Snakemake had given up on its job"
    for name in (run.record, run.embeddings, run.model, run.history):
        assert not (tmp_path / name).exists(), name
    dry = snakemake(tmp_path, "-n", run.record)
    assert "rule train:" in dry.output


def test_jobs_run_the_dmlsynth_of_the_environment_that_runs_snakemake(default_params, tmp_path):
    """As the quick start runs it: `.venv/bin/snakemake` with the venv not activated (its bin not on PATH),
    and another `dmlsynth` on PATH, which must not be the one the jobs run."""
    tiny_workflow(default_params, tmp_path)
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "dmlsynth").write_text("#!/bin/sh\necho 'the dmlsynth of another environment ran' >&2\nexit 3\n")
    (other / "dmlsynth").chmod(0o755)
    env = {"PATH": os.pathsep.join([str(other), "/usr/bin", "/bin"])}
    assert Path(sys.executable).parent not in map(Path, env["PATH"].split(os.pathsep))
    snakemake(tmp_path, "data/digits/manifest.csv", env=env)
    assert (tmp_path / "data/digits/manifest.csv").is_file()
    assert "dmlsynth prepare-data started" in (tmp_path / "logs/prepare_data/digits.log").read_text()
