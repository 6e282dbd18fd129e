"""The workflow on whatever device is there: `device: auto`, GPU slots, and photo datasets through their resized copy."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from dmlsynth import config as cfg
from tests.conftest import ROOT, small_config
from tests.helpers.datasets import cub_fixture, place


def snakemake(workdir, *args):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"snakemake failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_embedded_workflow_with_device_auto_gives_each_gpu_job_its_own_slot(default_params, tmp_path):
    """On a GPU machine every run trains on CUDA; without one, on the CPU. Either way jobs take GPU slots."""
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=2)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config.update(methods=["baseline", "blender"], seeds=[0])
    config["training"]["device"] = "auto"
    config["generation"]["digits"]["device"] = "auto"
    config["dataset_settings"]["digits"]["resources"] = {"gpu": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    slots = torch.cuda.device_count() or 2

    snakemake(tmp_path, "results/table.csv", "--cores", "4", "--resources", f"gpu={slots}")

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    records = sorted((tmp_path / "results" / "runs").rglob("run.yaml"))
    assert len(records) == 2
    for record in records:
        assert yaml.safe_load(record.read_text())["environment"]["device"] == expected
    taken = []
    for log in sorted((tmp_path / "logs" / "train").rglob("*.log")):
        found = re.search(r"GPU slot\(s\) \[(\d+)\] of (\d+): CUDA_VISIBLE_DEVICES=(\d+)", log.read_text())
        assert found, f"{log} names no GPU slot"
        assert int(found[2]) == slots and found[1] == found[3]
        taken.append(int(found[1]))
    assert set(taken) <= set(range(slots))
    assert (pd.read_csv(tmp_path / "results" / "table.csv")["recall@1_mean"] > 30).all()  # in %
    # How many GPUs the workflow is given changes no result: nothing re-runs.
    again = snakemake(tmp_path, "results/table.csv", "--cores", "4", "--resources", "gpu=1")
    assert "Nothing to be done" in again


@pytest.mark.slow
def test_photo_dataset_trains_from_its_resized_copy_through_the_workflow(tmp_path):
    fx = cub_fixture(classes=8, per_class=4)
    place(tmp_path / "data" / "raw" / "cub200", "CUB_200_2011.tgz", fx.archive)
    config = cfg.load(ROOT / "config" / "paper.yaml")
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config.update(datasets=["cub200"], methods=["baseline"], losses=["multi_similarity"], seeds=[0], exclude=[])
    config["dataset_settings"] = {
        "cub200": {
            "backbone": "small_cnn", "pretrained": False, "embedding_dim": 16, "image_size": 32,
            "cache_short_side": 40, "md5": {"archive": fx.md5}, "expected": fx.expected,
            "resources": {"gpu": 1, "threads": 1, "mem_mb": 2000, "runtime": 10},
        }
    }  # fmt: skip
    config["training"].update(epochs=1, batch_size=8, m_per_class=2, batches_per_epoch=2, num_workers=0, device="auto")
    config["tracking"] = {"enabled": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    target = "results/runs/cub200/baseline/multi_similarity/seed0/metrics.json"

    snakemake(tmp_path, target, "--cores", "2", "--resources", "gpu=1")
    index = pd.read_csv(tmp_path / "data" / "cub200" / "resized" / "index.csv")
    assert len(index) == 32
    assert "resized copy of 32 images (short side 40" in (tmp_path / "logs" / "cache_images" / "cub200.log").read_text()
    assert (tmp_path / target).is_file()

    # Another short side: a new copy, and the run that reads it is trained again.
    # (--config replaces the whole dataset_settings entry, so it is given in full.)
    settings = dict(config["dataset_settings"]["cub200"], cache_short_side=48)
    again = snakemake(tmp_path, target, "--cores", "2", "--config", f"dataset_settings={{cub200: {yaml.safe_dump(settings, default_flow_style=True).strip()}}}")
    assert "rule cache_images" in again and "rule train" in again
    assert (pd.read_csv(tmp_path / "data" / "cub200" / "resized" / "index.csv")["cached"] != index["cached"]).all()
