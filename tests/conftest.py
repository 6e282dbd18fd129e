"""Shared fixtures: a prepared digits dataset and small configs that train in seconds."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Tests must not depend on how many cores the machine has (float reductions differ by thread count).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Every test with a device choice runs on the CPU always and on CUDA when present:
# `pytest -m gpu` runs only the CUDA half (README, "Tests on a GPU machine").
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not _cuda_available(), reason="no CUDA device")]
    ),
]


# Seconds each module's tests took (pytest --durations, the whole suite on 2 cores and 3 workers, 2026-12-07),
# the longest first. pytest-xdist runs a module whole on one worker, in the order the modules come (pyproject's
# addopts: --no-loadscope-reorder), so the longest start first and the short ones fill the workers to the end:
# a long module started last would leave one worker alone with it. Only the order depends on these numbers;
# a module not listed comes after them (tests/unit/test_test_order.py keeps the names real).
LONGEST_MODULES = {
    "tests/e2e/test_slurm.py": 308,
    "tests/e2e/test_workflow.py": 271,
    "tests/e2e/test_dvc.py": 251,
    "tests/e2e/test_generation_workflow.py": 239,
    "tests/e2e/test_blend_operators_benchmark.py": 169,
    "tests/e2e/test_reliability.py": 154,
    "tests/unit/training/test_like_for_like.py": 98,
    "tests/e2e/test_job_code.py": 86,
    "tests/e2e/test_methods_digits_benchmark.py": 76,
    "tests/e2e/test_like_for_like_workflow.py": 76,
    "tests/e2e/test_reading_results.py": 72,
    "tests/e2e/test_plugin_workflow.py": 71,
    "tests/e2e/test_embedded_default_numbers.py": 58,
    "tests/e2e/test_recovery_hints.py": 55,
    "tests/e2e/test_reruns.py": 53,
    "tests/e2e/test_prefetch.py": 45,
    "tests/unit/test_compare.py": 43,
    "tests/e2e/test_cluster_resources.py": 36,
    "tests/e2e/test_declared_dataset_workflow.py": 34,
    "tests/e2e/test_potential_field_workflow.py": 33,
    "tests/e2e/test_training_throughput_benchmark.py": 33,
    "tests/unit/test_tracking.py": 32,
    "tests/e2e/test_documented_commands.py": 32,
    "tests/e2e/test_job_processes.py": 25,
    "tests/e2e/test_sgar_official_workflow.py": 23,
    "tests/e2e/test_devices_workflow.py": 23,
    "tests/e2e/test_cpu_isa_jobs.py": 23,
    "tests/e2e/test_paper_config.py": 21,
    "tests/e2e/test_protocols.py": 19,
    "tests/e2e/test_full_disk.py": 17,
}


def module_order(items: list) -> list:
    """``items`` with the modules in :data:`LONGEST_MODULES`'s order first (a module's own tests keep theirs),
    then the modules that run a workflow (``slow``), then the rest, each group in collection order."""

    def rank(item) -> tuple[int, float]:
        module = item.nodeid.split("::", 1)[0]
        if module in LONGEST_MODULES:
            return 0, -LONGEST_MODULES[module]
        return (1 if item.get_closest_marker("slow") else 2), 0.0

    firsts: dict[str, tuple[int, float]] = {}
    for item in items:  # a module ranks by its slowest kind of test, so it stays in one piece
        module = item.nodeid.split("::", 1)[0]
        firsts[module] = min(firsts.get(module, (3, 0.0)), rank(item))
    return sorted(items, key=lambda item: firsts[item.nodeid.split("::", 1)[0]])


def pytest_collection_modifyitems(config, items):
    items[:] = module_order(items)


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for `-n auto` (pyproject's addopts): one per core the process may use, and one more, which takes
    the time that the others leave a core idle (the SLURM test waits on the plugin's status checks, 40 s
    apart; each workflow test waits on its jobs' start-up and Snakemake's own bookkeeping between jobs)."""
    return len(os.sched_getaffinity(0)) + 1


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """``"cpu"``, and ``"cuda"`` where a GPU is present (skipped otherwise)."""
    return request.param


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


TINY_GENERATION = {
    "images_per_class": 4,
    "batch_size": 4,
    "steps": 2,
    "embedded": {"train_steps": 10, "batch_size": 16, "unet_channels": [8, 16], "text_width": 16, "text_layers": 1},
    # The filter runs, but a generator this small draws few recognisable digits: keep every image.
    "filter": {"fidelity_threshold": 0.0},
}


def small_config(base: dict, data_dir: Path, results_dir: Path, **training) -> dict:
    """params.yaml with tmp paths and a training budget of a few seconds, validated (every default filled)."""
    config = copy.deepcopy(base)
    config["paths"] = {"data": str(data_dir), "results": str(results_dir), "logs": str(results_dir / "logs")}
    # Blocks params.yaml leaves to the registry's defaults, there for tests to set keys in.
    config.setdefault("dataset_settings", {}).setdefault("digits", {})
    config.setdefault("loss_params", {})
    # On the CPU, whatever the machine: tests that are about a device take the `device` fixture.
    config["training"].update({"epochs": 2, "batches_per_epoch": 3, "device": "cpu", **training})
    config["tracking"] = {"enabled": True, "uri": f"sqlite:///{results_dir / 'mlflow.db'}"}
    # A generator that trains in seconds: the workflow tests check the plumbing, not image quality.
    config["generation"] = {"digits": TINY_GENERATION}
    from dmlsynth.config import validate

    return validate(config)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory, default_params) -> Path:
    """The digits dataset prepared once for the whole session: {data}/digits/manifest.csv."""
    from dmlsynth.data.prepare import prepare_dataset

    data = tmp_path_factory.mktemp("data")
    config = small_config(default_params, data, data / "results")
    prepare_dataset(config, "digits")
    return data


@pytest.fixture(scope="session")
def digits_manifest(digits_dir) -> Path:
    return digits_dir / "digits" / "manifest.csv"


@pytest.fixture
def config(default_params, digits_dir, tmp_path) -> dict:
    return small_config(default_params, digits_dir, tmp_path / "results")


@pytest.fixture
def quiet_log() -> logging.Logger:
    return logging.getLogger("dmlsynth.test")
