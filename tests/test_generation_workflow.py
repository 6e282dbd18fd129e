"""End to end through Snakemake: prompts -> embedded generator -> per-class generation -> training -> report."""

import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, small_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("rules/generate.smk" not in (ROOT / "Snakefile").read_text(), reason="Snakefile does not include rules/generate.smk"),
]


def snakemake(workdir, *args):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def test_generation_workflow_is_complete_and_restartable(default_params, tmp_path):
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=2)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config["methods"] = ["baseline", "blender", "sd_plain"]
    config["losses"] = ["multi_similarity"]
    config["seeds"] = [0]
    config["generation"] = {"digits": {
        "images_per_class": 4, "batch_size": 4, "steps": 2,
        "embedded": {"train_steps": 10, "batch_size": 16, "unet_channels": [8, 16], "text_width": 16, "text_layers": 1},
    }}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))

    snakemake(tmp_path, "results/table.csv")

    table = pd.read_csv(tmp_path / "results" / "table.csv")
    assert set(table.method) == {"baseline", "blender", "sd_plain"}
    report = pd.read_csv(tmp_path / "results" / "generation.csv")
    assert {"blender", "plain"} == set(report.image_set)
    assert report.fidelity.between(0, 1).all() and (report.chance == 0.2).all()
    # The cost of the images: sampling time per image and the generator's training time.
    assert (report.seconds_per_image > 0).all() and (report.generator_train_seconds > 0).all()
    assert (tmp_path / "results" / "figures" / "generated_digits.png").is_file()
    real = pd.read_csv(tmp_path / "data" / "digits" / "manifest.csv")
    train_classes = set(real.loc[real.split == "train", "label"])
    for image_set in ("blender", "plain"):
        generated = pd.read_csv(tmp_path / "data" / "digits" / "generated" / image_set / "manifest.csv")
        assert set(generated.label) == train_classes and len(generated) == 4 * len(train_classes)
    record = yaml.safe_load((tmp_path / "results/runs/digits/blender/multi_similarity/seed0/run.yaml").read_text())
    assert record["train_images"] == (real.split == "train").sum() + 4 * len(train_classes)

    # As after a run killed while generating class 3: that class is redone alone, complete classes are not.
    (tmp_path / "data/digits/generated/parts/class3.csv").unlink()
    (tmp_path / "data/digits/generated/blender/manifest.csv").unlink()
    out = snakemake(tmp_path, "data/digits/generated/blender/manifest.csv")
    assert re.search(r"^generate\s+1$", out, re.M), out  # job stats: one generate job ...
    assert "class_index=3" in out and "class_index=2" not in out  # ... for class 3
    assert "rule train_generator" not in out
