"""Validation classes: the last training classes by id, never seen by training or generation."""

import copy
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import pipeline
from dmlsynth.data.split import split_training, training_class_count, training_rows, uses_validation, validation_class_count


def frame_of(labels_by_split):
    rows = [{"path": f"{s}/{l}/{i}.png", "label": l, "class_name": str(l), "split": s} for s, labels in labels_by_split.items() for l in labels for i in range(3)]
    return pd.DataFrame(rows)


def test_the_last_training_classes_by_id_validate():
    frame = frame_of({"train": [7, 1, 3, 5, 9], "test": [11, 12]})
    train, validation = split_training(frame[frame.split == "train"], 2)
    assert sorted(validation.label.unique()) == [7, 9] and sorted(train.label.unique()) == [1, 3, 5]
    assert len(train) + len(validation) == 15
    train, validation = split_training(frame[frame.split == "train"], 0)
    assert validation.empty and len(train) == 15
    for bad in (1, 4):
        with pytest.raises(ValueError, match="between 2 and 3"):
            split_training(frame[frame.split == "train"], bad)
    with pytest.raises(ValueError, match="training split only"):
        split_training(frame, 2)


def test_config_validation_classes(config):
    config = copy.deepcopy(config)
    assert not uses_validation(config) and training_class_count(config, "digits") == 5
    config["dataset_settings"]["digits"]["validation_classes"] = 2
    config["training"].update({"batch_size": 48, "m_per_class": 16})
    checked = cfg.validate(config)
    assert uses_validation(checked) and validation_class_count(checked, "digits") == 2 and training_class_count(checked, "digits") == 3
    # Frames: training and generation get digits 0-2 only.
    frame = frame_of({"train": [0, 1, 2, 3, 4], "test": [5, 6]})
    assert sorted(training_rows(frame, checked, "digits").label.unique()) == [0, 1, 2]
    # Generation jobs and their outputs: one per remaining training class.
    assert "blender" in checked["methods"]
    parts = [p.rsplit("/", 1)[1] for p in pipeline.stage_outputs(checked)["generate"] if "/parts/" in p]
    assert parts == ["class0.csv", "class1.csv", "class2.csv"]
    # Too many validation classes, or too few classes left for a batch, are config errors.
    config["dataset_settings"]["digits"]["validation_classes"] = 4
    with pytest.raises(cfg.ConfigError, match="validation_classes: 4 is not 0 and not between 2 and 3"):
        cfg.validate(config)
    config["dataset_settings"]["digits"]["validation_classes"] = 2
    config["training"].update({"batch_size": 80})
    with pytest.raises(cfg.ConfigError, match="after its validation classes"):
        cfg.validate(config)


def test_validation_is_all_or_none_of_the_datasets(config):
    config = copy.deepcopy(config)
    config["datasets"] = ["digits", "cub200"]
    config["dataset_settings"]["cub200"] = {"validation_classes": 20}
    with pytest.raises(cfg.ConfigError, match="cub200 choose the epoch on validation classes but digits do not"):
        cfg.validate(config)


def test_prompts_are_written_for_training_classes_only(config, digits_manifest, tmp_path, repo_root):
    import shutil

    config = copy.deepcopy(config)
    shutil.copytree(digits_manifest.parent, tmp_path / "data" / "digits")  # the job writes the prompts beside it
    config["paths"]["data"] = str(tmp_path / "data")
    config["dataset_settings"]["digits"]["validation_classes"] = 2
    config["training"].update({"batch_size": 48, "m_per_class": 16})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "prompts", "--config", str(tmp_path / "params.yaml"), "--dataset", "digits"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    prompts = yaml.safe_load((tmp_path / "data" / "digits" / "prompts.yaml").read_text())
    assert sorted(c["label"] for c in prompts["classes"]) == [0, 1, 2]


def test_the_known_training_class_sizes_are_the_prepared_datasets(config, digits_manifest):
    """What validation checks m_per_class against is what digits' preparation writes."""
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.data.split import TRAINING_CLASS_SIZES, smallest_training_class

    train = read_manifest(digits_manifest).query("split == 'train'")
    counts = train.groupby("label").size().sort_index()
    assert tuple(counts) == TRAINING_CLASS_SIZES["digits"]
    assert smallest_training_class(config, "digits") == counts.min()
    config = copy.deepcopy(config)
    config["dataset_settings"]["digits"]["validation_classes"] = 3
    assert smallest_training_class(config, "digits") == counts.iloc[:2].min()
