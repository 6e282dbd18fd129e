"""End to end: a folder of class folders named in params.yaml alone (``source: image_folder``, no plugin) is
prepared, trained on by ``baseline`` and ``symm`` and paired in the table; an image added to the folder
re-runs its preparation and everything after it."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.e2e.test_plugin_workflow import job_counts
from tests.helpers.workflow import snakemake, tiny_workflow

pytestmark = pytest.mark.slow


def test_a_folder_declared_in_params_yaml_runs_to_the_table_and_an_added_image_reruns_it(default_params, tmp_path):
    folder = tmp_path / "shapes"
    make = [sys.executable, str(ROOT / "examples" / "make_image_folder.py"), str(folder), "--per-class", "12"]
    subprocess.run(make, check=True, capture_output=True)
    declared = {"source": "image_folder", "root": str(folder), "image_mode": "L", "image_size": 16, "embedding_dim": 16}
    config = tiny_workflow(
        default_params, tmp_path, datasets=["my_shapes"], methods=["baseline", "symm"], losses=["contrastive"], seeds=[0],
    )  # fmt: skip
    config["dataset_settings"]["my_shapes"] = declared
    config["training"].update({"batch_size": 24, "m_per_class": 8})
    (tmp_path / "params.yaml").write_text(json.dumps(config))  # JSON is YAML

    snakemake(tmp_path, "results/table.csv")

    manifest = pd.read_csv(tmp_path / "data" / "my_shapes" / "manifest.csv")
    assert len(manifest) == 72 and manifest["label"].nunique() == 6
    # The split from the folder names: the sorted classes' first half train (circle, cross, disc).
    assert sorted(manifest.loc[manifest.split == "train", "class_name"].unique()) == ["circle", "cross", "disc"]
    table = pd.read_csv(tmp_path / "results" / "table.csv", keep_default_na=False).set_index(["method", "loss"])
    assert table.loc[("symm", "contrastive"), "control"] == "baseline"
    assert "symm" in (tmp_path / "results" / "summary.md").read_text()
    assert snakemake(tmp_path, "-n", "results/table.csv").output.count("Nothing to be done") == 1

    # One more image in a training class: the data is prepared again, and so is everything that reads it.
    Image.open(next((folder / "circle").iterdir())).transpose(Image.FLIP_LEFT_RIGHT).save(folder / "circle" / "added.png")
    counts = job_counts(snakemake(tmp_path, "-n", "results/table.csv").output)
    assert counts.get("prepare_data") == 1 and counts.get("train") == 2 and counts.get("evaluate") == 2, counts
    assert counts.get("table") == 1, counts
