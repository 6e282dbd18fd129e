"""Datasets declared in params.yaml alone (dmlsynth.data.declared): resolved at config validation from the
folder's or CSV's contents into a DatasetSpec that every job's record carries; bad data refused with what to fix."""

from __future__ import annotations

import copy
import time

import pandas as pd
import pytest
from PIL import Image

from dmlsynth import config as cfg
from dmlsynth import jobs, registry
from dmlsynth.config import ConfigError
from dmlsynth.data import declared


@pytest.fixture(autouse=True)
def no_declared_datasets_left():
    """Each test's declarations end with it (they are process-wide, as in a job's process)."""
    yield
    registry.declare([])


def folder(root, sizes: dict[str, int]):
    for name, count in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.new("L", (8, 8), 7 * index).save(root / name / f"{index}.png")
    return root


def params(default_params, settings: dict, name: str = "mine", **training) -> dict:
    config = copy.deepcopy(default_params)
    config["datasets"] = [name]
    config["dataset_settings"] = {name: settings}
    config["training"].update({"batch_size": 4, "m_per_class": 2, **training})
    config.pop("generation", None)
    return config


def test_a_folder_becomes_a_spec_with_its_classes_split_and_mode_defaults(tmp_path, default_params):
    root = folder(tmp_path / "birds", {"wren": 3, "crow": 4, "auk": 5, "tit": 6})
    config = cfg.validate(params(default_params, {"source": "image_folder", "root": str(root)}))
    spec = registry.dataset("mine")
    assert (spec.num_classes, spec.train_classes) == (4, 2)
    # auk and crow (sorted first) train: the smallest training class is crow's 4 images, not wren's 3.
    assert spec.smallest_class == 4
    assert (spec.image_mode, spec.default_backbone, spec.default_generator) == ("RGB", "resnet50", "stable-diffusion")
    assert spec.prepare == "dmlsynth.data.image_folder:prepare"
    assert spec.prompts == "dmlsynth.generation.prompts:generic_prompts"  # "a photo of a <class name>"
    assert registry.dataset_settings(config, "mine")["backbone"] == "resnet50"
    grey = cfg.validate(params(default_params, {"source": "image_folder", "root": str(root), "image_mode": "L"}))
    assert registry.dataset_settings(grey, "mine")["backbone"] == "small_cnn"
    assert registry.dataset("mine").default_generator == "embedded"


def test_a_manifest_takes_its_split_column(tmp_path, default_params):
    folder(tmp_path, {"img": 8})
    labels = ["a", "a", "b", "b", "c", "c", "d", "d"]
    split = ["train"] * 6 + ["test"] * 2  # three training classes: not the halving rule
    pd.DataFrame({"path": [f"img/{i}.png" for i in range(8)], "label": labels, "split": split}).to_csv(tmp_path / "my.csv", index=False)
    cfg.validate(params(default_params, {"source": "manifest", "path": str(tmp_path / "my.csv")}, name="cars"))
    spec = registry.dataset("cars")
    assert (spec.num_classes, spec.train_classes, spec.prepare) == (4, 3, "dmlsynth.data.csv_manifest:prepare")


def test_an_added_or_changed_image_changes_the_preparation_identity(tmp_path, default_params):
    root = folder(tmp_path / "f", {"a": 3, "b": 3, "c": 3, "d": 3})
    config = cfg.validate(params(default_params, {"source": "image_folder", "root": str(root)}))
    # Jobs resolves (and so declares) its config again: each identity sees the files as they are then.
    before, trained = jobs.Jobs(config).prepare_data("mine").identity(), jobs.Jobs(config).train("mine", "baseline", "contrastive", 0).identity()
    again = jobs.Jobs(cfg.validate(params(default_params, {"source": "image_folder", "root": str(root)}))).prepare_data("mine")
    assert again.identity() == before  # same files: same job
    Image.new("L", (8, 8), 99).save(root / "a" / "new.png")
    added = cfg.validate(params(default_params, {"source": "image_folder", "root": str(root)}))
    added_identity = jobs.Jobs(added).prepare_data("mine").identity()
    assert added_identity != before
    assert jobs.Jobs(added).train("mine", "baseline", "contrastive", 0).identity() != trained
    time.sleep(0.01)
    Image.new("L", (9, 9), 1).save(root / "a" / "new.png")  # rewritten: another size
    changed = cfg.validate(params(default_params, {"source": "image_folder", "root": str(root)}))
    assert jobs.Jobs(changed).prepare_data("mine").identity() != added_identity


def test_a_job_record_carries_the_spec_to_a_process_that_never_saw_the_config(tmp_path, default_params):
    root = folder(tmp_path / "f", {"a": 3, "b": 3, "c": 3, "d": 3})
    config = cfg.validate(params(default_params, {"source": "image_folder", "root": str(root)}))
    job = jobs.Jobs(config).train("mine", "baseline", "contrastive", 0)
    spec, record = registry.dataset("mine"), job.to_json()
    registry.declare([])  # a job's process: only the record
    with pytest.raises(KeyError):
        registry.dataset("mine")
    received = jobs.Job.from_json(record, "train")
    assert registry.dataset("mine") == spec
    assert received.params == job.params


@pytest.mark.parametrize(
    "settings_of, says",
    [
        (lambda tmp: {"source": "image_folder", "root": str(tmp / "nowhere")}, "does not exist"),
        (lambda tmp: {"source": "image_folder"}, "set dataset_settings.<dataset>.root"),
        (lambda tmp: {"source": "manifest", "path": str(tmp / "none.csv")}, "manifest"),
        (lambda tmp: {"source": "image_folder", "root": str(folder(tmp / "one", {"a": 3, "b": 1}))}, "fewer than 2 images"),
        (lambda tmp: {"source": "image_folder", "root": str(folder(tmp / "solo", {"a": 3}))}, "train or test without classes"),
    ],
)
def test_data_that_cannot_be_a_dataset_is_refused_once_with_what_to_fix(tmp_path, default_params, settings_of, says):
    with pytest.raises(ConfigError) as raised:
        cfg.validate(params(default_params, settings_of(tmp_path)))
    message = str(raised.value)
    assert "at dataset_settings.mine" in message and says in message
    assert "'mine' is not allowed" not in message  # said once, not again as an unknown name


def test_duplicated_paths_and_a_class_on_both_sides_are_refused(tmp_path, default_params):
    folder(tmp_path, {"img": 6})
    rows = {"path": ["img/0.png", "img/0.png", "img/2.png", "img/3.png", "img/4.png", "img/5.png"],
            "label": ["a", "a", "b", "b", "c", "c"], "split": ["train", "train", "train", "test", "test", "test"]}  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "my.csv", index=False)
    with pytest.raises(ConfigError) as raised:
        cfg.validate(params(default_params, {"source": "manifest", "path": str(tmp_path / "my.csv")}))
    assert "duplicated paths" in str(raised.value) and "img/0.png" in str(raised.value)
    assert "classes on both sides of the split: b" in str(raised.value)


def test_a_class_smaller_than_m_per_class_is_refused_at_validation(tmp_path, default_params):
    root = folder(tmp_path / "f", {"a": 5, "b": 3, "c": 9, "d": 9})
    settings = {"source": "image_folder", "root": str(root)}
    cfg.validate(params(default_params, settings, batch_size=6, m_per_class=3))
    with pytest.raises(ConfigError, match=r"training.m_per_class: 4 .* smallest training class of 'mine' has 3"):
        cfg.validate(params(default_params, settings, batch_size=8, m_per_class=4))


def test_a_declared_name_may_not_shadow_a_built_in_dataset(tmp_path, default_params):
    root = folder(tmp_path / "f", {"a": 3, "b": 3, "c": 3, "d": 3})
    with pytest.raises(ConfigError, match=r"dataset_settings.digits.source: 'digits' is a built-in"):
        cfg.validate(params(default_params, {"source": "image_folder", "root": str(root)}, name="digits"))


def test_without_source_an_unknown_dataset_stays_unknown(default_params):
    with pytest.raises(ConfigError, match="'mine' is not allowed"):
        cfg.validate(params(default_params, {"root": "somewhere"}))
    assert "mine" not in registry.datasets()
    assert declared.declare({"dataset_settings": {"mine": {"root": "x"}}}) == []


def test_check_dataset_resolves_a_declared_dataset_from_the_params_file(tmp_path):
    from dmlsynth import contract

    root = folder(tmp_path / "f", {"a": 3, "b": 3, "c": 3, "d": 3})
    given = {"dataset_settings": {"mine": {"source": "image_folder", "root": str(root), "image_mode": "L"}}}
    assert all(result.passed for result in contract.check_dataset("mine", given))
    given["dataset_settings"]["mine"]["root"] = str(tmp_path / "gone")
    [result] = contract.check_dataset("mine", given)
    assert not result.passed and "does not exist" in result.detail


def test_a_declared_dataset_the_config_does_not_run_is_not_read(tmp_path, default_params):
    root = folder(tmp_path / "f", {"a": 3, "b": 3, "c": 3, "d": 3})
    config = params(default_params, {"source": "image_folder", "root": str(root)})
    config["dataset_settings"]["later"] = {"source": "manifest", "path": str(tmp_path / "not-yet.csv")}
    cfg.validate(config)
    assert "mine" in registry.datasets() and "later" not in registry.datasets()
    config["datasets"] = ["mine", "later"]
    with pytest.raises(ConfigError, match="at dataset_settings.later: manifest .*not-yet.csv does not exist"):
        cfg.validate(config)
