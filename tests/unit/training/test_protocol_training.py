"""The papers' training settings through the real training path: inception backbones, schedules, warm-up,
embedding multipliers, a length in iterations, and the photo preprocessing of config/protocols/."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from dmlsynth import config as cfg
from dmlsynth.data.images import ImageDataset, Preprocessing, build_transform
from dmlsynth.data.manifest import read_manifest, write_manifest
from dmlsynth.training.build import build_run
from dmlsynth.training.loop import train_epoch, train_run, train_step
from tests.helpers.images import photo, write_photo_dataset

SIZES = [(70 + 5 * i, 60 + 3 * (i % 4)) for i in range(24)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """4 classes (2 train, 2 test) x 6 photos, with a bounding box on every image (as Cars-196's manifest has)."""
    manifest = write_photo_dataset(tmp_path_factory.mktemp("photos") / "cars196", SIZES, classes=4)
    frame = pd.read_csv(manifest)
    frame = frame.assign(box_left=0.1, box_top=0.2, box_right=0.6, box_bottom=0.9)
    write_manifest(frame, manifest)
    return manifest


def params_for(default_params, dataset_settings=None, loss="multi_similarity", **training):
    config = copy.deepcopy(default_params)
    config.update(datasets=["cars196"], methods=["baseline"], losses=[loss])
    settings = {"backbone": "small_cnn", "pretrained": False, "embedding_dim": 16, "image_size": 32, "cache_short_side": 0}
    config["dataset_settings"] = {"cars196": {**settings, **(dataset_settings or {})}}
    config["training"].update(
        {"epochs": 2, "batch_size": 8, "m_per_class": 4, "batches_per_epoch": 1, "num_workers": 0, "device": "cpu", **training}
    )
    return cfg.run_params(cfg.validate(config), "cars196", "baseline", loss, 0)


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.trunk.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("loss", ["multi_similarity", "semihard_triplet", "lifted_structure"])
@pytest.mark.parametrize("backbone", ["googlenet", "bn_inception"])
def test_inception_backbones_train_a_step_with_the_new_losses(default_params, photos, backbone, loss):
    params = params_for(default_params, {"backbone": backbone, "embedding_dim": 32, "image_size": 64}, loss=loss)
    run = build_run(params, photos)
    run.model.train()
    conv, norm = first_conv(run.model), next(m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    weight, statistics, embedding = conv.weight.detach().clone(), norm.running_mean.clone(), run.model.embedding.weight.detach().clone()
    images, labels = next(run.training_batches())
    loss_value = train_step(run, images, labels, 0)
    assert np.isfinite(loss_value)
    assert not torch.equal(conv.weight, weight) and not torch.equal(run.model.embedding.weight, embedding)  # both learn
    assert torch.equal(norm.running_mean, statistics)  # frozen BatchNorm


def test_step_and_multistep_schedules_decay_per_epoch(default_params, photos, tmp_path):
    lr = 0.01
    step = params_for(default_params, epochs=4, lr=lr, lr_scheduler="step", lr_decay_every=2, lr_decay=0.5)
    history = train_run(step, photos, tmp_path / "step", progress=False)["history"]
    assert [row["lr"] for row in history] == pytest.approx([lr, lr, lr / 2, lr / 2])
    multi = params_for(default_params, epochs=4, lr=lr, lr_scheduler="multistep", lr_milestones=[1, 3], lr_decay=0.2)
    history = train_run(multi, photos, tmp_path / "multi", progress=False)["history"]
    assert [row["lr"] for row in history] == pytest.approx([lr, 0.2 * lr, 0.2 * lr, 0.04 * lr])


def test_warm_up_trains_only_the_embedding_layer_then_everything(default_params, photos):
    run = build_run(params_for(default_params, warmup_epochs=1, lr=0.01), photos)
    run.model.train()
    conv = first_conv(run.model)
    before, embedding = conv.weight.detach().clone(), run.model.embedding.weight.detach().clone()
    train_epoch(run, 0, progress=False)
    assert torch.equal(conv.weight, before) and conv.weight.grad is None
    assert not torch.equal(run.model.embedding.weight, embedding)
    train_epoch(run, 1, progress=False)
    assert not torch.equal(conv.weight, before)
    # Frozen BatchNorm stays frozen after the warm-up (only what trained before is unfrozen).
    norms = [m for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(p.requires_grad for p in conv.parameters()) and norms


def one_step_deltas(default_params, photos, **training) -> tuple[torch.Tensor, torch.Tensor]:
    run = build_run(params_for(default_params, optimizer="sgd", lr=0.01, **training), photos)
    run.model.train()
    conv = first_conv(run.model)
    trunk, embedding = conv.weight.detach().clone(), run.model.embedding.weight.detach().clone()
    images, labels = next(run.training_batches())
    train_step(run, images, labels, 0)
    return conv.weight.detach() - trunk, run.model.embedding.weight.detach() - embedding


@pytest.mark.parametrize("key", ["embedding_lr_multiplier", "embedding_gradient_multiplier"])
def test_embedding_multipliers_scale_only_the_embedding_update(default_params, photos, key):
    """SGD: ten times the embedding layer's learning rate or gradient (weight decay included) moves it ten times as far."""
    trunk, embedding = one_step_deltas(default_params, photos, weight_decay=0.01)
    trunk_x, embedding_x = one_step_deltas(default_params, photos, weight_decay=0.01, **{key: 10.0})
    assert torch.allclose(trunk_x, trunk, atol=1e-7)
    assert torch.allclose(embedding_x, 10 * embedding, rtol=1e-4, atol=1e-7)
    assert embedding.abs().sum() > 0


def test_adam_weight_decay_is_the_gradient_of_a_loss_term(default_params, photos):
    """adam's weight_decay adds lambda * w to the gradient: the (lambda / 2) ||w||^2 weight-decay loss of Symmetrical Synthesis."""
    run = build_run(params_for(default_params, optimizer="adam", weight_decay=0.005), photos)
    group = run.optimizer.param_groups[0]
    assert isinstance(run.optimizer, torch.optim.Adam) and not isinstance(run.optimizer, torch.optim.AdamW)
    assert group["weight_decay"] == 0.005


def test_a_length_in_iterations_sets_the_batches_per_epoch(default_params):
    config = copy.deepcopy(default_params)
    config["training"].update({"epochs": 20, "iterations": 10_000, "batches_per_epoch": None})
    params = cfg.run_params(cfg.validate(config), "digits", "baseline", "multi_similarity", 0)
    assert params["training"]["batches_per_epoch"] == 500 and params["training"]["iterations"] == 10_000
    config["training"]["epochs"] = 30
    with pytest.raises(cfg.ConfigError, match="not a multiple of training.epochs"):
        cfg.validate(config)
    config["training"].update({"epochs": 20, "batches_per_epoch": 12})
    with pytest.raises(cfg.ConfigError, match="contradicts training.iterations"):
        cfg.validate(config)


def test_schedule_settings_that_contradict_each_other_are_refused(default_params):
    config = copy.deepcopy(default_params)
    config["training"].update({"lr_scheduler": "multistep", "lr_milestones": []})
    with pytest.raises(cfg.ConfigError, match="needs the epochs"):
        cfg.validate(config)
    config["training"].update({"lr_milestones": [3, 40]})
    with pytest.raises(cfg.ConfigError, match=r"\[40\] are not before the last epoch"):
        cfg.validate(config)
    config["training"].update({"lr_scheduler": "cosine", "warmup_epochs": 10})
    with pytest.raises(cfg.ConfigError, match="warm-up epochs leave none"):
        cfg.validate(config)
    bad = copy.deepcopy(default_params)
    bad["dataset_settings"] = {"digits": {"bounding_boxes": True}}
    with pytest.raises(cfg.ConfigError, match="has no bounding boxes"):
        cfg.validate(bad)


def test_resize_evaluation_keeps_the_whole_image():
    image = photo(90, 60, seed=1)
    resize = build_transform("RGB", 32, train=False, preprocessing=Preprocessing(eval_transform="resize"))
    expected = v2.Resize((32, 32), antialias=True)(v2.PILToTensor()(image))
    assert torch.equal(resize(image), expected)
    centre = build_transform("RGB", 32, train=False)(image)
    assert centre.shape == expected.shape and not torch.equal(centre, expected)


def test_resized_random_crop_and_square_resize_give_the_crop_size():
    image = photo(90, 60, seed=2)
    symm = build_transform("RGB", 40, train=True, preprocessing=Preprocessing(train_transform="resized_random_crop"))
    iaa = build_transform("RGB", 40, train=True, preprocessing=Preprocessing(square_resize=True, crop_scale=(0.16, 1.0)))
    for transform in (symm, iaa):
        torch.manual_seed(0)
        a = transform(image)
        torch.manual_seed(0)
        assert a.shape == (3, 40, 40) and torch.equal(a, transform(image))  # seeded: the same crop


def test_bounding_boxes_cut_the_images_before_the_transform(default_params, photos):
    run = build_run(params_for(default_params, {"bounding_boxes": True, "eval_transform": "resize"}), photos)
    frame = read_manifest(photos)
    test_files = frame[frame.split == "test"]["file"].tolist()
    assert run.test_set.boxes == [(0.1, 0.2, 0.6, 0.9)] * len(test_files)
    with Image.open(test_files[0]) as image:
        image = image.convert("RGB")
        width, height = image.size
        cut = image.crop((round(0.1 * width), round(0.2 * height), round(0.6 * width), round(0.9 * height)))
    expected = v2.Resize((32, 32), antialias=True)(v2.PILToTensor()(cut))
    assert torch.equal(run.test_set[0][0], expected)
    # Without the setting the whole image is used.
    plain = build_run(params_for(default_params, {"eval_transform": "resize"}), photos)
    assert plain.test_set.boxes is None and not torch.equal(plain.test_set[0][0], expected)


def test_an_image_without_a_box_is_used_whole(tmp_path):
    path = tmp_path / "a.jpg"
    photo(40, 30, seed=3).save(path)
    dataset = ImageDataset([str(path)] * 2, [0, 0], "RGB", v2.PILToTensor(), boxes=[None, (0.0, 0.0, 0.5, 0.5)])
    assert dataset[0][0].shape == (3, 30, 40) and dataset[1][0].shape == (3, 15, 20)


def test_device_decoding_refuses_other_transforms(default_params):
    config = copy.deepcopy(default_params)
    config.update(datasets=["cars196"])
    config["dataset_settings"] = {"cars196": {"eval_transform": "resize", "cache_short_side": 0}}
    config["training"].update({"image_decoding": "device", "batch_size": 80, "m_per_class": 16})
    with pytest.raises(cfg.ConfigError, match="default transforms only"):
        cfg.validate(config)
