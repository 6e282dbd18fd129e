"""Photo datasets through their resized copy, on whatever device is there (`device: auto`; the embedded workflow's GPU
slots: test_workflow.py)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from dmlsynth import config as cfg
from tests.conftest import ROOT
from tests.helpers.datasets import cub_fixture, place


def snakemake(workdir, *args):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"snakemake failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


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
