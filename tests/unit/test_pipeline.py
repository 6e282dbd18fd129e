"""The DVC data stage versions the resized copies of photo datasets and runs the rule that makes them."""

import yaml

from dmlsynth import config as cfg
from dmlsynth.cli import main
from dmlsynth.pipeline import dvc_yaml
from tests.conftest import ROOT


def test_photo_datasets_have_their_resized_copy_in_the_data_stage():
    data = yaml.safe_load(dvc_yaml(cfg.load(ROOT / "config" / "paper.yaml")))["stages"]["data"]
    assert data["cmd"] == "snakemake --cores all --until cache_images"  # and the preparation it reads
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
    # The training stage depends on what its jobs read: the image sets (manifest and images), not the weights
    # that made them (a new weight file re-runs the generation stage, whose new images re-run training).
    train = stages["train"]["deps"]
    assert {"data/cub200/generated/blender/manifest.csv", "data/cub200/generated/blender/images"} <= set(train)
    assert "data/cub200/fine_tuned/class0" not in train and "data/cub200/generated/parts/class0.csv" not in train


def test_the_dvc_stages_are_the_records_grouped(default_params):
    """Outs: what each record makes (Job.made, not the places it writes into) and the image folders; deps: the
    records' inputs that another stage makes — nothing restated beside the records."""
    from dmlsynth.pipeline import _image_folders, stage_jobs

    config = cfg.load(ROOT / "config" / "paper.yaml")
    stages = yaml.safe_load(dvc_yaml(config))["stages"]
    jobs = stage_jobs(config)
    outs = {stage: {next(iter(o)) for o in entry["outs"]} for stage, entry in stages.items()}
    fine_tune = next(job for job in jobs["generate"] if job.rule == "fine_tune")
    assert fine_tune.outputs["weights"] in outs["generate"] and fine_tune.outputs["checkpoint"] not in outs["generate"]
    assert "data/cub200/generated" not in outs["generate"] and "results" not in outs["report"]
    train_inputs = {f for job in jobs["train"] for f in job.input_files()}
    code = {"Snakefile", "rules"}
    upstream = {d for d in stages["train"]["deps"] if d not in code and not d.startswith("src/")}
    # Every input (a file inside a versioned folder, like the resized copy's index, comes with its folder) ...
    assert all(f in upstream or any(f.startswith(d + "/") for d in upstream) for f in train_inputs)
    # ... and besides the inputs only what the jobs making them list (the images of a manifest).
    listed = {f for stage in ("data", "generate") for job in jobs[stage] for f in _image_folders(config, job)}
    assert {d for d in upstream if d not in train_inputs} <= listed
    assert {"data/cub200/extracted", "data/cub200/resized", "data/cub200/generated/blender/images"} <= upstream
    assert stages["evaluate"]["deps"][-1] in {f for job in jobs["evaluate"] for f in job.input_files()}
