"""The commands the workflow prints after a failure, run as printed: each plans exactly the job it names, on the
user's config (the workflow ran with --configfile; params.yaml beside it has one seed more, so a command that
dropped the option would plan the new seed's jobs too), and the corrupt run record's command leads out."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.helpers.workflow import copy_of, snakemake

pytestmark = pytest.mark.slow

RUN = "results/runs/digits/baseline/multi_similarity/seed0"


def printed(text: str, before: str) -> str:
    """The command printed after ``before`` (in parentheses, or after 'then run: ')."""
    found = re.findall(re.escape(before) + r"[ (]*(snakemake [^)\n]*)", text)
    assert found, f"no command after {before!r} in:\n{text[-3000:]}"
    return found[-1].strip()


def run_printed(command: str, folder, *extra: str) -> subprocess.CompletedProcess:
    words = shlex.split(command)
    result = subprocess.run([sys.executable, "-m", "snakemake", *words[1:], *extra], cwd=folder, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


def planned(command: str, folder) -> dict[str, int]:
    """The jobs the command's dry run plans, per rule."""
    output = run_printed(command, folder, "-n").stdout
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output, re.M) if rule != "total"}


@pytest.fixture
def project(finished_baseline_symm, tmp_path):
    """The finished tiny workflow, whose config is now tiny.yaml (given by --configfile); params.yaml has 2 seeds."""
    copy_of(finished_baseline_symm[1], tmp_path)
    config = yaml.safe_load((tmp_path / "params.yaml").read_text())
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**config, "seeds": [0, 1]}))
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "--configfile", "tiny.yaml").output
    return tmp_path


def test_a_corrupt_run_record_gives_a_command_that_trains_it_again(project):
    (project / RUN / "run.yaml").write_text(": not: [a run record\n")
    failed = snakemake(project, "--configfile", "tiny.yaml", check=False)
    assert failed.returncode != 0
    command = printed((project / "logs/table.log").read_text(), "train it again")
    assert "--configfile" in command and command.count("--force") == 1
    assert planned(command, project) == {"train": 1}
    run_printed(command, project)  # out of the loop: the record is made again ...
    assert yaml.safe_load((project / RUN / "run.yaml").read_text())["params"]["seed"] == 0
    again = snakemake(project, "--configfile", "tiny.yaml")  # ... and the workflow finishes from it
    assert (project / "results/table.csv").is_file(), again.output


def test_unreadable_per_query_results_give_a_command_that_evaluates_that_run_again(project):
    (project / RUN / "queries.npz").write_bytes(b"not an npz file")
    assert snakemake(project, "--configfile", "tiny.yaml", check=False).returncode != 0
    command = printed((project / "logs/table.log").read_text(), "re-run its evaluation")
    assert planned(command, project) == {"evaluate": 1}


def test_a_failed_table_tracking_gives_a_command_that_makes_the_table_again(project):
    import socket

    with socket.socket() as probe:  # a port on this machine with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = yaml.safe_load((project / "tiny.yaml").read_text())
    # A tracking server that does not answer: the table is written, its tracking fails and says how to do it again.
    config["tracking"] = {"enabled": True, "uri": f"http://127.0.0.1:{port}", "timeout": 2}
    (project / "tiny.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(project, "--configfile", "tiny.yaml", "--force", "results/table.csv", timeout=600)
    assert "WARNING: MLflow tracking failed" in result.output
    command = printed(result.output, "then run:")
    assert planned(command, project) == {"table": 1}
