"""The DVC data stage versions the resized copies of photo datasets and runs the rule that makes them."""

import yaml

from dmlsynth import config as cfg
from dmlsynth.cli import main
from dmlsynth.pipeline import dvc_yaml
from tests.conftest import ROOT


def test_photo_datasets_have_their_resized_copy_in_the_data_stage():
    data = yaml.safe_load(dvc_yaml(cfg.load(ROOT / "config" / "paper.yaml")))["stages"]["data"]
    assert data["cmd"] == "snakemake --cores all --until prepare_data cache_images"
    outs = [next(iter(o)) for o in data["outs"]]
    assert {"data/cub200/resized", "data/cars196/resized"} <= set(outs)
    assert "src/dmlsynth/data/image_cache.py" in data["deps"]


def test_without_a_copy_the_data_stage_is_the_preparation_alone(default_params):
    config = cfg.validate(default_params)  # digits: grayscale, held in memory
    data = yaml.safe_load(dvc_yaml(config))["stages"]["data"]
    assert data["cmd"] == "snakemake --cores all --until prepare_data"
    assert not any("resized" in next(iter(o)) for o in data["outs"])
    assert "src/dmlsynth/data/image_cache.py" not in data["deps"]


def test_cache_images_of_a_dataset_without_a_copy_says_so(tmp_path, capsys):
    code = main(["cache-images", "--config", str(ROOT / "params.yaml"), "--dataset", "digits"])
    assert code == 2
    assert "cache_short_side is 0" in capsys.readouterr().err


def test_the_paper_generation_stage_fine_tunes_every_training_class():
    stages = yaml.safe_load(dvc_yaml(cfg.load(ROOT / "config" / "paper.yaml")))["stages"]
    outs = {next(iter(o)) for o in stages["generate"]["outs"]}
    assert {f"data/cub200/fine_tuned/class{i}" for i in range(80)} <= outs and "data/cub200/fine_tuned/class80" not in outs
    assert {f"data/cars196/fine_tuned/class{i}" for i in range(78)} <= outs
    assert "src/dmlsynth/generation/fine_tuning.py" in stages["generate"]["deps"]
    # The training stage depends on the weights (through the generated images).
    assert "data/cub200/fine_tuned/class0" in stages["train"]["deps"]
