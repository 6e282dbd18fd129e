"""From a validated config to a trained ResNet-50 run on a (tiny, loopback-served) CUB-200-2011."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmlsynth import config as cfg
from dmlsynth.data.image_cache import build_cache
from dmlsynth.data.manifest import read_manifest
from dmlsynth.data.prepare import prepare_dataset
from dmlsynth.training.loop import train_run

from tests.conftest import ROOT
from tests.helpers.datasets import cars_fixture, cub_fixture, place, serve

PAPER = ROOT / "config" / "paper.yaml"


@pytest.fixture
def paper_config(tmp_path) -> dict:
    config = cfg.load(PAPER)
    config["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results"), "logs": str(tmp_path / "logs")}
    for settings in config["dataset_settings"].values():  # the tiny copies have no classes to spare for validation
        settings["validation_classes"] = 0
    return config


def test_config_settings_reach_the_dataset_and_training(tmp_path, paper_config):
    fx = cub_fixture(classes=8, per_class=4)
    config = copy.deepcopy(paper_config)
    with serve({"/mirror/CUB_200_2011.tgz": fx.archive}) as server:
        config["dataset_settings"]["cub200"].update(
            urls={"archive": server.url("/mirror/CUB_200_2011.tgz")},
            md5={"archive": fx.md5},
            expected=fx.expected,
            image_size=64,
        )
        config["training"].update(
            epochs=1, batch_size=8, m_per_class=2, batches_per_epoch=2, num_workers=2, device="cpu"
        )
        config["dataset_settings"]["cub200"]["pretrained"] = False  # no weights download in tests
        config = cfg.validate(config)  # the overrides are valid config
        manifest = prepare_dataset(config, "cub200")
    assert manifest == tmp_path / "data" / "cub200" / "manifest.csv"
    assert (tmp_path / "data" / "raw" / "cub200" / "CUB_200_2011.tgz").is_file()
    frame = read_manifest(manifest)
    assert sorted(frame.loc[frame.split == "train", "label"].unique()) == [1, 2, 3, 4]
    attributes = pd.read_csv(tmp_path / "data" / "cub200" / "class_attributes.csv")
    assert attributes.shape == (8, 2 + fx.attributes.shape[1])

    # The resized copy training reads (dataset_settings.cub200.cache_short_side, 256 by default).
    build_cache(manifest, 256, progress=False)
    params = cfg.run_params(config, "cub200", "baseline", "multi_similarity", 0)
    run_dir = tmp_path / "results" / "run"
    train_run(params, manifest, run_dir, threads=1, progress=False)
    with np.load(run_dir / "embeddings.npz") as data:
        assert data["embeddings"].shape == (16, 512)  # the 4 test classes x 4 images, 512-d
        assert sorted(set(data["labels"].tolist())) == [5, 6, 7, 8]
        assert np.isfinite(data["embeddings"]).all()


def test_cars_from_config_with_files_placed_by_hand(tmp_path, paper_config):
    fx = cars_fixture(classes=6, per_class=2)
    raw = tmp_path / "data" / "raw" / "cars196"
    place(raw, "car_ims.tgz", fx.images)
    place(raw, "cars_annos.mat", fx.annotations)
    config = copy.deepcopy(paper_config)
    config["dataset_settings"]["cars196"].update(md5=fx.md5, expected=fx.expected)
    config["training"].update(batch_size=6, m_per_class=2)  # batches the 3 training classes of the copy can fill
    frame = read_manifest(prepare_dataset(cfg.validate(config), "cars196"))
    assert frame.groupby("split")["label"].unique().map(sorted).to_dict() == {"train": [1, 2, 3], "test": [4, 5, 6]}
