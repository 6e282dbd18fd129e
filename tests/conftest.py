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
