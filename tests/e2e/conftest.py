"""Workflow runs that several end-to-end tests start from, each made once per session, whichever pytest-xdist
worker asks first (the others wait for it and read the same folder)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from tests.conftest import TINY_GENERATION, small_config
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


# The GPU slots the embedded run is given: one per GPU, or two on a machine without one (taken all the same).
EMBEDDED_GPU_SLOTS = torch.cuda.device_count() or 2


@pytest.fixture(scope="session")
def finished_embedded(default_params, tmp_path_factory):
    """(config, folder): the tiny embedded workflow with generated images run to its default target (the table
    and the comparison report). Read it as it is; a test that changes it takes a copy (copy_of).

    No synthesis and both generated image sets (BLenDeR's and sd_plain's: the longest chain of jobs), one loss
    and two seeds (several losses' rows and controls: test_like_for_like_workflow.py), trained as the paper
    protocol trains (``batches_per_epoch: null``: one pass over the real training images per epoch, whatever a
    batch holds); ``device: auto`` (CUDA where present), each GPU job in a GPU slot
    of its own. A feature-space method goes through the same jobs to the table in test_like_for_like_workflow.py,
    test_declared_dataset_workflow.py and the baseline+symm run above."""

    def make(workdir: Path) -> None:
        config = small_config(default_params, workdir / "data", workdir / "results", epochs=1, batches_per_epoch=None)
        config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
        config["methods"] = ["baseline", "blender", "sd_plain"]
        config["losses"] = ["multi_similarity"]
        config["seeds"] = [0, 1]
        config["training"]["device"] = "auto"
        config["dataset_settings"]["digits"]["resources"] = {"gpu": 1}
        # The tiny generator, with 2 extra images per class for the filter to choose from (4 + 50 %).
        config["generation"] = {"digits": {**TINY_GENERATION, "device": "auto", "filter": {"extra": 0.5, "fidelity_threshold": 0.0}}}
        (workdir / "params.yaml").write_text(yaml.safe_dump(config))
        # The default target: the table and the comparison report.
        snakemake(workdir, "--resources", f"gpu={EMBEDDED_GPU_SLOTS}", cores=4)

    workdir = made_once(tmp_path_factory, "finished-embedded", make)
    return copy.deepcopy(yaml.safe_load((workdir / "params.yaml").read_text())), workdir
