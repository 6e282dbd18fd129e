"""Workflow runs that several end-to-end tests start from, each made once per session, whichever pytest-xdist
worker asks first (the others wait for it and read the same folder)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from tests.helpers.workflow import snakemake, tiny_workflow


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder ``name``, made by ``make(folder)`` once per test session: under xdist, in the temporary folder
    all workers share (the pytest-xdist documentation's recipe), by the first worker that asks, while the
    others wait; a folder whose making failed is made again. Read it as it is; change a copy."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base  # the workers' common folder
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed try left
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def finished_baseline_symm(default_params, tmp_path_factory):
    """(config, folder) of the tiny workflow of baseline and symm (multi_similarity, seed 0) run to its default
    target (table and comparison). Read it as it is; a test that changes it takes a copy
    (:func:`tests.helpers.workflow.copy_of`)."""

    def make(workdir: Path) -> None:
        tiny_workflow(default_params, workdir, methods=["baseline", "symm"], losses=["multi_similarity"], seeds=[0])
        snakemake(workdir)

    workdir = made_once(tmp_path_factory, "finished-baseline-symm", make)
    return copy.deepcopy(yaml.safe_load((workdir / "params.yaml").read_text())), workdir
