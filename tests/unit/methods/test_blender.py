"""Mixing generated images into the training set (BLenDeR's data-level methods)."""

import pandas as pd
import pytest

from dmlsynth import config as cfg
from dmlsynth import registry
from dmlsynth.data.manifest import ManifestError
from dmlsynth.methods.blender import mix_synthetic


def frame(labels, split="train", prefix="real"):
    return pd.DataFrame(
        {
            "path": [f"{prefix}/{l}/{i:04d}.png" for i, l in enumerate(labels)],
            "label": labels,
            "class_name": [f"c{l}" for l in labels],
            "split": split,
            "file": [f"/abs/{prefix}/{l}/{i:04d}.png" for i, l in enumerate(labels)],
        }
    )


REAL = frame([0] * 10 + [1] * 20)
SYNTHETIC = frame([0] * 30 + [1] * 30, prefix="gen")


def test_ratio_per_class_and_labels_kept():
    mixed = mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": 0.5}, seed=0)
    added = mixed[mixed.synthetic]
    assert added.groupby("label").size().to_dict() == {0: 5, 1: 10}
    assert set(added["file"]).issubset(set(SYNTHETIC["file"]))
    # every synthetic image keeps the label of the class it was generated for
    by_file = dict(zip(SYNTHETIC["file"], SYNTHETIC["label"]))
    assert all(by_file[f] == l for f, l in zip(added["file"], added["label"]))
    assert (mixed[~mixed.synthetic].drop(columns="synthetic").reset_index(drop=True) == REAL).all().all()
    assert list(mixed.columns) == [*REAL.columns, "synthetic"]


def test_capped_by_what_was_generated_and_zero_ratio():
    mixed = mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": 5.0}, seed=0)
    assert mixed[mixed.synthetic].groupby("label").size().to_dict() == {0: 30, 1: 30}
    assert not mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": 0.0}, seed=0).synthetic.any()


def test_seeded():
    a = mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": 0.5}, seed=3)
    b = mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": 0.5}, seed=3)
    c = mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": 0.5}, seed=4)
    assert a.equals(b)
    assert not a["file"].equals(c["file"])


def test_test_classes_never_get_synthetic_images():
    leaking = pd.concat([SYNTHETIC, frame([7] * 3, prefix="gen7")], ignore_index=True)
    with pytest.raises(ManifestError, match="not training classes"):
        mix_synthetic(REAL, leaking, {"synthetic_per_real": 0.5}, seed=0)
    with pytest.raises(ManifestError, match="train split"):
        mix_synthetic(REAL, frame([0, 1], split="test", prefix="gen"), {"synthetic_per_real": 0.5}, seed=0)
    with pytest.raises(ValueError, match="training split only"):
        mix_synthetic(frame([0, 5], split="test"), SYNTHETIC, {}, seed=0)


def test_all_adds_every_generated_image_of_each_class():
    """The paper's volume: every generated image, however many real images a class has."""
    mixed = mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": "all"}, seed=0)
    added = mixed[mixed.synthetic]
    assert added.groupby("label").size().to_dict() == {0: 30, 1: 30}
    assert sorted(added["file"]) == sorted(SYNTHETIC["file"])
    assert (mixed[~mixed.synthetic].drop(columns="synthetic").reset_index(drop=True) == REAL).all().all()
    # Through the method the training builder calls.
    spec = registry.METHODS["blender"]
    frame_ = registry.load_object(spec.module).training_frame(REAL, SYNTHETIC, spec.resolve(None), 0)
    assert frame_.equals(mixed)
    with pytest.raises(ValueError, match="a number >= 0 or 'all'"):
        mix_synthetic(REAL, SYNTHETIC, {"synthetic_per_real": "most"}, seed=0)


BLENDER_METHODS = {name: spec for name, spec in registry.METHODS.items() if spec.synthetic_images}


def test_blender_methods_are_registered_and_configurable():
    expected = {"blender": "blender", "blender_union": "union", "blender_intersection": "intersection", "sd_plain": "plain"}
    assert {name: spec.synthetic_images for name, spec in BLENDER_METHODS.items()} == expected
    for spec in BLENDER_METHODS.values():
        assert spec.defaults["synthetic_per_real"] == "all"  # the paper's volume (docs/methods.md §7)
        assert spec.off_params == {"synthetic_per_real": 0.0}
    config = cfg.load("params.yaml")
    config["methods"] = ["baseline", *expected]
    config["method_params"] = {"blender": {"synthetic_per_real": 1.0}, "sd_plain": {"synthetic_per_real": "all"}}
    config = cfg.validate(config)
    assert cfg.run_params(config, "digits", "blender", "multi_similarity", 0)["method_params"] == {"synthetic_per_real": 1.0}
    assert cfg.run_params(config, "digits", "sd_plain", "multi_similarity", 0)["method_params"] == {"synthetic_per_real": "all"}
    # Numbers from the command line arrive as strings (snakemake --config): read as numbers; "all" stays a word.
    assert cfg.validate({**config, "method_params": {"blender": {"synthetic_per_real": "0.25"}}})["method_params"]["blender"] == {"synthetic_per_real": 0.25}
    for bad in (-1, "most", True):
        config["method_params"] = {"blender": {"synthetic_per_real": bad}}
        with pytest.raises(cfg.ConfigError, match=r"synthetic_per_real: .* is not allowed; expected a number x >= 0 .* or all"):
            cfg.validate(config)
