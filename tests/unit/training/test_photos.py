"""Training on photos: the resized copy, both decodings, every device, and seeds that survive workers and resuming."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml

from dmlsynth import config as cfg
from dmlsynth.data.image_cache import ImageCacheError, build_cache
from dmlsynth.data.images import ImageError
from dmlsynth.training import build
from dmlsynth.training.build import build_run
from dmlsynth.training.loop import train_run
from tests.helpers.images import write_photo_dataset
from tests.helpers.training import Interrupted, stop_after

# 4 classes (2 train, 2 test) x 6 photos of CUB-like shapes.
SIZES = [(120 + 7 * i, 90 + 5 * (i % 4)) if i % 3 else (90, 120) for i in range(24)]


@pytest.fixture(scope="module")
def photo_manifest(tmp_path_factory):
    manifest = write_photo_dataset(tmp_path_factory.mktemp("photos") / "cub200", SIZES, classes=4)
    build_cache(manifest, 40, progress=False)
    return manifest


def photo_params(default_params, **training):
    config = copy.deepcopy(default_params)
    config.update(datasets=["cub200"], methods=["baseline"], losses=["multi_similarity"])
    config["dataset_settings"] = {
        "cub200": {"backbone": "small_cnn", "pretrained": False, "embedding_dim": 16, "image_size": 32, "cache_short_side": 40}
    }
    config["training"].update(
        {"epochs": 2, "batch_size": 8, "m_per_class": 4, "batches_per_epoch": 2, "num_workers": 0, "device": "cpu", **training}
    )
    return cfg.run_params(cfg.validate(config), "cub200", "baseline", "multi_similarity", 0)


@pytest.mark.parametrize("decoding", ["workers", "device"])
def test_photo_run_trains_on_the_device(default_params, photo_manifest, tmp_path, device, decoding):
    params = photo_params(default_params, device=device, image_decoding=decoding, mixed_precision="auto")
    result = train_run(params, photo_manifest, tmp_path / "run", progress=False)
    assert result["embeddings"].shape == (12, 16) and torch.isfinite(result["embeddings"]).all()
    assert np.isfinite([h["loss"] for h in result["history"]]).all()
    record = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert record["environment"]["device"].startswith(device)


def test_photo_runs_read_the_resized_copy(default_params, photo_manifest):
    run = build_run(photo_params(default_params), photo_manifest)
    resized = str(photo_manifest.parent / "resized" / "images")
    for dataset in (run.train_set, run.train_eval_set, run.test_set):
        assert dataset.files and all(f.startswith(resized) for f in dataset.files)
    # Without a copy (cache_short_side: 0) the originals are read.
    params = photo_params(default_params)
    params["dataset_settings"]["cache_short_side"] = 0
    assert all(f.startswith(str(photo_manifest.parent / "images")) for f in build_run(params, photo_manifest).train_set.files)


def test_a_damaged_copy_says_to_rebuild_it(default_params, tmp_path):
    manifest = write_photo_dataset(tmp_path / "cub200", SIZES[:8], classes=4)
    index = build_cache(manifest, 40, progress=False)
    run = build_run(photo_params(default_params), manifest)
    copy = run.train_set.files[0]
    with open(copy, "r+b") as handle:  # same name, garbage inside
        handle.truncate(100)
    with pytest.raises(ImageError, match=f"delete {index.parent} and run again"):
        run.train_set[(0, 1)]


def test_a_missing_copy_says_how_to_build_it(default_params, tmp_path):
    manifest = write_photo_dataset(tmp_path / "cub200", SIZES[:8], classes=4)
    with pytest.raises(ImageCacheError, match="snakemake .*resized/index.csv --cores 8"):
        build_run(photo_params(default_params), manifest)


def test_loader_workers_and_split_batches_do_not_change_the_numbers(default_params, photo_manifest, tmp_path, monkeypatch):
    # Each crop comes from its sample's seed, not from the stream of the worker that loads it.
    a = train_run(photo_params(default_params, num_workers=0), photo_manifest, tmp_path / "a", progress=False)
    b = train_run(photo_params(default_params, num_workers=2), photo_manifest, tmp_path / "b", progress=False)
    # Batches of 8 loaded as two halves by the two workers, joined on the device.
    monkeypatch.setattr(build, "MIN_PART_SIZE", 4)
    assert build_run(photo_params(default_params, num_workers=2), photo_manifest).loader_parts == 2
    c = train_run(photo_params(default_params, num_workers=2), photo_manifest, tmp_path / "c", progress=False)
    for other in (b, c):
        assert [h["loss"] for h in other["history"]] == [h["loss"] for h in a["history"]]
        assert torch.equal(other["embeddings"], a["embeddings"])


def test_interrupted_photo_run_with_persistent_workers_resumes_exactly(default_params, photo_manifest, tmp_path):
    params = photo_params(default_params, num_workers=2, epochs=3)
    whole = train_run(params, photo_manifest, tmp_path / "whole", progress=False)
    with pytest.raises(Interrupted):
        train_run(params, photo_manifest, tmp_path / "cut", callbacks=[stop_after(1)], progress=False)
    resumed = train_run(params, photo_manifest, tmp_path / "cut", progress=False)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert torch.equal(resumed["embeddings"], whole["embeddings"])


def test_validation_classes_read_the_resized_copy_too(default_params, tmp_path):
    # 8 classes: training 1-4, of which 3 and 4 validate; test 5-8.
    manifest = write_photo_dataset(tmp_path / "cub200", SIZES * 2, classes=8)
    build_cache(manifest, 40, progress=False)
    config = copy.deepcopy(default_params)
    config.update(datasets=["cub200"], methods=["baseline"], losses=["multi_similarity"])
    config["dataset_settings"] = {
        "cub200": {
            "backbone": "small_cnn", "pretrained": False, "embedding_dim": 16, "image_size": 32, "cache_short_side": 40,
            "validation_classes": 2, "expected": {"classes": 8},
        }
    }  # fmt: skip
    config["training"].update({"epochs": 2, "batch_size": 8, "m_per_class": 4, "batches_per_epoch": 2, "num_workers": 0, "device": "cpu"})
    run = build_run(cfg.run_params(cfg.validate(config), "cub200", "baseline", "multi_similarity", 0), manifest)
    assert run.validation_classes == [3, 4] and sorted(set(run.validation_set.targets)) == [3, 4]
    resized = str(manifest.parent / "resized" / "images")
    assert run.validation_set.files and all(f.startswith(resized) for f in run.validation_set.files)
    assert sorted(set(run.train_set.targets)) == [0, 1]  # classes 1 and 2, indexed
