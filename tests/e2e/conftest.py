"""Workflow runs that several end-to-end tests start from, each made once per session (per xdist worker)."""

from __future__ import annotations

import copy

import pytest

from tests.helpers.workflow import snakemake, tiny_workflow


@pytest.fixture(scope="session")
def finished_baseline_symm(default_params, tmp_path_factory):
    """(config, folder) of the tiny workflow of baseline and symm (multi_similarity, seed 0) run to its default
    target (table and comparison). Read it as it is; a test that changes it takes a copy
    (:func:`tests.helpers.workflow.copy_of`)."""
    workdir = tmp_path_factory.mktemp("finished-baseline-symm")
    config = tiny_workflow(default_params, workdir, methods=["baseline", "symm"], losses=["multi_similarity"], seeds=[0])
    snakemake(workdir)
    return copy.deepcopy(config), workdir
