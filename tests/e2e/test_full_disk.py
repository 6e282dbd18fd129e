"""A workflow whose results disk is full says which file could not be written and why, in the job's log.

Needs a real full filesystem: a 64 KiB tmpfs mounted over the results folder (root only; skipped
elsewhere — tests/unit/test_io.py fakes the errno there).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.helpers.workflow import snakemake, tiny_workflow


@pytest.fixture
def full_results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_training_job_on_a_full_disk_names_the_file_and_the_reason(default_params, tmp_path, full_results):
    tiny_workflow(default_params, tmp_path, methods=["baseline"], seeds=[0])
    run = "results/runs/digits/baseline/multi_similarity/seed0"
    result = snakemake(tmp_path, f"{run}/run.yaml", check=False, timeout=900)
    assert result.returncode != 0
    log = (tmp_path / "logs" / "train" / "digits" / "baseline" / "multi_similarity" / "seed0.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("dmlsynth train: error:")]
    assert len(errors) == 1, log
    assert f"could not write {run}/" in errors[0] and ": no space left on device; free space on that disk" in errors[0]
    assert "Traceback" not in log and "unexpected pos" not in log
    assert not any(p.name.startswith(".") for p in (tmp_path / run).iterdir())  # no temporary file left behind
