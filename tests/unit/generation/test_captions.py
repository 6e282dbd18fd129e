"""Prompts from captions: a captioning model describes real training images of each class."""

import numpy as np
import pytest
import yaml

from dmlsynth.data.manifest import read_manifest
from dmlsynth.generation.prompts import (
    PromptsError,
    build_prompts,
    caption_images,
    caption_prompts,
    load_captioner,
    pick_caption_images,
    read_prompts,
    write_prompts,
)

from tests.helpers.generation import CAPTION_WORDS, save_tiny_captioner


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    return save_tiny_captioner(tmp_path_factory.mktemp("cap") / "tiny-blip")


@pytest.fixture(scope="module")
def train(digits_manifest):
    frame = read_manifest(digits_manifest)
    return frame[frame.split == "train"].groupby("label").head(10).reset_index(drop=True)


def test_caption_images_are_training_images_drawn_by_the_seed(train):
    picked = pick_caption_images(train, 3, seed=0)
    assert sorted(picked) == sorted(train.label.unique())
    for label, files in picked.items():
        assert len(files) == 3 and set(files) <= set(train.loc[train.label == label, "file"])
    assert pick_caption_images(train, 3, seed=0) == picked and pick_caption_images(train, 3, seed=1) != picked
    assert all(len(f) == 10 for f in pick_caption_images(train, 50, seed=0).values())  # all when fewer
    with pytest.raises(ValueError, match="training split only"):
        pick_caption_images(train.assign(split="test"), 3, seed=0)


def test_each_class_draws_its_own_caption_images(train):
    # Classes of equal size: one shared draw would pick the same positions (in file order) in every class.
    positions = {}
    for label, files in pick_caption_images(train, 3, seed=0).items():
        in_order = sorted(train.loc[train.label == label, "file"])
        positions[label] = tuple(in_order.index(f) for f in files)
    assert len(set(train.groupby("label").size())) == 1 and len(set(positions.values())) > 1


def test_captions_become_the_class_prompts(train, captioner_dir, tmp_path, device):
    document = build_prompts("digits", train)
    options = {"captioner": str(captioner_dir), "images_per_class": 2, "max_new_tokens": 6}
    captioned = caption_prompts(document, train, options, seed=0, device=device)
    files = pick_caption_images(train, 2, seed=0)
    expected = caption_images(load_captioner(str(captioner_dir), device), files[0], 6)
    zero = next(c for c in captioned["classes"] if c["label"] == 0)
    assert zero["captions"] == expected and all(set(c.split()) <= set(CAPTION_WORDS) for c in expected)
    assert zero["prompts"][0] == zero["plain"] == "a digit zero" and len(zero["prompts"]) > 1
    assert zero["prompts"][1:] == list(dict.fromkeys(f"a digit zero, {c}" for c in expected if c))
    # Written into the editable prompts file, read back like attribute prompts; the same seed gives the same file.
    path = write_prompts(captioned, tmp_path / "prompts.yaml")
    assert read_prompts(path, sorted(train.label.unique()))[0]["prompts"] == zero["prompts"]
    assert yaml.safe_load(path.read_text())["source"] == "captions"
    again = caption_prompts(document, train, options, seed=0, device=device)
    assert again == captioned


def test_captions_without_a_captioner_are_a_clear_error(train, tmp_path):
    document = build_prompts("digits", train)
    with pytest.raises(PromptsError, match="prompts.captioner is not set"):
        caption_prompts(document, train, {"captioner": None, "images_per_class": 2, "max_new_tokens": 4}, seed=0)
    with pytest.raises(PromptsError, match="prompts.captioner"):
        load_captioner(str(tmp_path / "missing"), "cpu")


def test_a_config_asking_for_captions_names_a_captioner(default_params):
    from dmlsynth import config as cfg

    bad = {**default_params, "generation": {"digits": {"prompts": {"source": "captions"}}}}
    with pytest.raises(cfg.ConfigError, match="no captioner is given"):
        cfg.validate(bad)
    good = {**default_params, "generation": {"digits": {"prompts": {"source": "captions", "captioner": "my/blip"}}}}
    assert cfg.validate(good)["generation"]["digits"]["prompts"]["captioner"] == "my/blip"


def test_the_paper_protocols_caption_prompts_through_the_prompts_job(captioner_dir, tmp_path):
    """config/paper.yaml's prompts settings (captions, 8 images per class) on a tiny CUB copy, with the tiny
    captioner in place of the named model: the prompts job captions training images only and writes them."""
    from dmlsynth import config as cfg
    from dmlsynth.cli import main
    from dmlsynth.data.prepare import prepare_dataset

    from tests.conftest import ROOT
    from tests.helpers.datasets import cub_fixture, place

    paper = cfg.load(ROOT / "config" / "paper.yaml")
    wanted = paper["generation"]["cub200"]["prompts"]
    assert wanted["source"] == "captions" and wanted["captioner"] == "Salesforce/blip-image-captioning-large"
    fixture = cub_fixture(classes=4, per_class=3)
    place(tmp_path / "data" / "raw" / "cub200", "CUB_200_2011.tgz", fixture.archive)
    generation = {**paper["generation"]["cub200"], "device": "cpu", "prompts": {**wanted, "captioner": str(captioner_dir)}}
    config = cfg.validate({
        **paper, "datasets": ["cub200"],
        "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results"), "logs": str(tmp_path / "logs")},
        "dataset_settings": {"cub200": {**paper["dataset_settings"]["cub200"], "validation_classes": 0,
                                        "md5": {"archive": fixture.md5}, "expected": fixture.expected}},
        "generation": {"cub200": generation},
        "training": {**paper["training"], "batch_size": 8},  # two training classes in the tiny copy
    })  # fmt: skip
    manifest = prepare_dataset(config, "cub200")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "data" / "cub200" / "prompts.yaml"
    assert main(["prompts", "--config", str(tmp_path / "config.yaml"), "--dataset", "cub200"]) == 0
    document = yaml.safe_load(out.read_text().split("\n", 1)[1])
    assert document["source"] == "captions" and document["captioner"] == str(captioner_dir)
    frame = read_manifest(manifest)
    train = frame[frame.split == "train"]
    assert sorted(c["label"] for c in document["classes"]) == sorted(train.label.unique())
    for entry in document["classes"]:
        # All 3 training images of the class (fewer than the 8 asked for), never a test image.
        assert len(entry["captions"]) == 3 and all(set(c.split()) <= set(CAPTION_WORDS) for c in entry["captions"])
        assert entry["prompts"][0] == entry["plain"]
        assert entry["prompts"][1:] == list(dict.fromkeys(f"{entry['plain']}, {c}" for c in entry["captions"] if c))
