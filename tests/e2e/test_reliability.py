"""Results that can be trusted after failures, code changes and re-runs (issue #12), through the real workflow."""

import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmlsynth.layout import Layout
from tests.conftest import ROOT
from tests.helpers.workflow import copy_of, project_copy, snakemake, tiny_workflow

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def one_run(default_params, workdir, **overrides):
    config = tiny_workflow(
        default_params, workdir, methods=["baseline"], losses=["multi_similarity"], seeds=[0], **overrides
    )
    return config, Layout.of(config).run("digits", "baseline", "multi_similarity", 0)


@pytest.fixture(scope="module")
def finished_one_run(default_params, tmp_path_factory):
    """(config, run, folder): the baseline's one run trained, evaluated and tabled, with the umask 022 of a
    shared machine (test_result_files_are_readable_by_the_group). Read it as it is, or take a copy (copy_of)."""
    workdir = tmp_path_factory.mktemp("one-run")
    config, run = one_run(default_params, workdir)
    old = os.umask(0o022)
    try:
        snakemake(workdir, "results/table.csv")
    finally:
        os.umask(old)
    return config, run, workdir


def test_a_failed_training_never_leaves_old_metrics_in_the_table(finished_one_run, tmp_path):
    config, run, finished = finished_one_run
    config = copy.deepcopy(config)
    copy_of(finished, tmp_path)
    old_table = (tmp_path / "results" / "table.csv").read_text()

    # A new config whose training fails (the loss diverges): Snakemake removes the training outputs.
    config["training"]["lr"] = 1e30
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    failed = snakemake(tmp_path, "results/table.csv", check=False)
    assert failed.returncode != 0 and "lower training.lr" in (tmp_path / "logs/train/digits/baseline/multi_similarity/seed0.log").read_text()
    assert not (tmp_path / run.record).exists()

    # The run's old evaluation and the table of the old run are gone: nothing is left looking current.
    assert not (tmp_path / run.metrics).exists() and not (tmp_path / "results" / "table.csv").exists()
    again = snakemake(tmp_path, "results/table.csv", check=False)
    assert again.returncode != 0 and "Nothing to be done" not in again.output
    assert not (tmp_path / "results" / "table.csv").exists() and old_table  # never re-made from stale numbers


def test_forcerun_retrains_and_a_code_change_reruns_exactly_its_runs(finished_baseline_symm, tmp_path):
    copy_of(finished_baseline_symm[1], tmp_path)
    log = tmp_path / "logs/train/digits/baseline/multi_similarity/seed0.log"

    forced = snakemake(tmp_path, "--forcerun", "train", "results/table.csv")
    assert "resuming" not in log.read_text() and "epoch 1/1" in log.read_text()  # trained again, from scratch
    assert forced.returncode == 0

    # More threads change float reductions, so they are part of what decides a re-run.
    config = yaml.safe_load((tmp_path / "params.yaml").read_text())
    config["dataset_settings"]["digits"]["resources"] = {"threads": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(tmp_path, "-n", "results/table.csv")
    assert "Params have changed since last execution" in dry.output
    assert dry.output.count("rule train:") == 2


@pytest.fixture(scope="module")
def finished_project_copy(finished_baseline_symm, tmp_path_factory):
    """A folder with a copy of the project (workflow and package, imported instead of the installed one: the
    workflow refuses a package of another checkout) and a copy of the finished tiny baseline+symm workflow: its
    records are those the copy's workflow would make (same code, same digests; the first test below checks that
    it has nothing to do). Tests that edit its source take a copy of the folder (copy_of)."""
    config, finished = finished_baseline_symm
    workdir = project_copy(copy_of(finished, tmp_path_factory.mktemp("project-copy")))
    return copy.deepcopy(config), workdir


def test_a_code_change_reruns_only_the_runs_that_execute_it(finished_project_copy, tmp_path):
    copy_of(finished_project_copy[1], tmp_path)
    env = {"PYTHONPATH": str(tmp_path / "src")}
    # A run of the copy where it lies now: nothing to do (the copy's code is the code its runs were made with).
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "results/table.csv", env=env, snakefile=tmp_path / "Snakefile").output
    symm = tmp_path / "src/dmlsynth/methods/symm.py"
    symm.write_text(symm.read_text() + "\n# a comment changes the code digest of the symm runs\n")
    dry = snakemake(tmp_path, "-n", "results/table.csv", env=env, snakefile=tmp_path / "Snakefile")
    assert "method=symm" in dry.output and "method=baseline" not in dry.output
    # The repository's workflow with the copied package: another checkout's code, refused.
    other = snakemake(tmp_path, "-n", "results/table.csv", env=env, check=False)
    assert other.returncode != 0 and "another checkout" in other.output


def test_readme_override_examples_run_as_written(default_params, tmp_path):
    # The README's and docs/configuration.md's override examples (their report commands: test_readme_report.py).
    lines = [line for doc in ("README.md", "docs/configuration.md") for line in (ROOT / doc).read_text().splitlines()]
    examples = [
        line.split("#")[0].strip() for line in lines
        if line.startswith("snakemake --cores") and ("--config " in line or "--configfile=my-settings.yaml" in line)
    ]  # fmt: skip
    assert len(examples) >= 5, "README / docs/configuration.md lost their --config override examples"
    tiny_workflow(default_params, tmp_path)
    (tmp_path / "my-settings.yaml").write_text("seeds: [0]\ntraining: {epochs: 3}\n")  # the --configfile example's file
    for example in examples:
        args = shlex.split(example)[1:]  # as a shell would split it, without the program name
        result = snakemake(tmp_path, "-n", *args, check=False)
        assert result.returncode == 0, f"{example}\n{result.output}"


def test_the_run_record_names_the_projects_git_state_not_the_working_folder(finished_one_run):
    _, run, workdir = finished_one_run
    record = yaml.safe_load((workdir / run.record).read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert record["code"]["project_dir"] == str(ROOT) and record["code"]["git_commit"] == head
    assert record["code"]["digest"] and record["environment"]["torch.threads"] == "1"


def test_an_unreachable_tracking_server_is_reported_once_and_costs_no_result(default_params, tmp_path):
    import socket

    with socket.socket() as probe:  # a port on this machine with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, run = one_run(default_params, tmp_path, tracking={"enabled": True, "uri": f"http://127.0.0.1:{port}", "timeout": 2})
    result = snakemake(tmp_path, "results/table.csv", timeout=600)
    assert (tmp_path / run.metrics).is_file() and (tmp_path / "results" / "table.csv").is_file()
    assert result.output.count("WARNING: MLflow tracking failed") == 1
    # The table job tracks every run (tracking.runs: with_table) and says how to track them again.
    assert "dmlsynth track results/runs" in result.output


def test_result_files_are_readable_by_the_group(finished_one_run):
    _, run, workdir = finished_one_run
    for name in (run.metrics, run.record, run.embeddings, "results/table.csv"):
        assert (workdir / name).stat().st_mode & 0o777 == 0o644, name


def test_dvc_repro_after_the_quick_start_and_after_a_code_change(finished_project_copy, tmp_path):
    from dmlsynth import config as cfg
    from dmlsynth.pipeline import dvc_yaml

    # The quick start, with this project's copy of the Snakefile and the package (the fixture ran it).
    config, _ = finished_project_copy
    copy_of(finished_project_copy[1], tmp_path)
    (tmp_path / "dvc.yaml").write_text(dvc_yaml(cfg.validate(config)))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(tmp_path / "src")}

    def run(*command):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
        assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    run("git", "init", "-q")
    run(str(BIN / "dvc"), "init", "-q")
    # A job's log is written by the job alone (DVC copies results in and out of its cache, logs it leaves alone).
    baseline_log = tmp_path / "logs/train/digits/baseline/multi_similarity/seed0.log"
    symm_log = tmp_path / "logs/train/digits/symm/multi_similarity/seed0.log"
    before = baseline_log.stat().st_mtime_ns, symm_log.stat().st_mtime_ns
    run(str(BIN / "dvc"), "repro")  # records the results Snakemake made, retrains nothing
    assert (baseline_log.stat().st_mtime_ns, symm_log.stat().st_mtime_ns) == before

    symm = tmp_path / "src/dmlsynth/methods/symm.py"
    symm.write_text(symm.read_text() + "\n# a comment\n")
    run(str(BIN / "dvc"), "repro")  # used to stop with "output ... does not exist"
    assert symm_log.stat().st_mtime_ns != before[1] and baseline_log.stat().st_mtime_ns == before[0]
    status = run(str(BIN / "dvc"), "status")
    assert "up to date" in status.lower()
