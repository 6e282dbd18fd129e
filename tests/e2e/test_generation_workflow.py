"""End to end through Snakemake: prompts -> generator -> per-class generation -> training -> report.

The Stable Diffusion path on a tiny CUB-200-2011 copy with a tiny random SD model, on the CPU and in
fp16 on CUDA (the embedded generator's path: test_workflow.py), and a hand-edited prompts file.
"""

import json
import re
import shutil

import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import small_config
from tests.helpers.datasets import cub_fixture, place
from tests.helpers.generation import save_tiny_clip, save_tiny_stable_diffusion
from tests.helpers.workflow import snakemake as run_snakemake

pytestmark = pytest.mark.slow


def snakemake(workdir, *args):
    return run_snakemake(workdir, *args).output


def test_stable_diffusion_path_through_the_workflow(default_params, tmp_path, device):
    """CUB prompts -> per-class fine-tuning (LoRA + textual inversion) -> Stable Diffusion (fp16 on CUDA) per class
    with the class's weights -> blender training -> report, table."""
    fixture = cub_fixture(classes=4, per_class=4)
    place(tmp_path / "data" / "raw" / "cub200", "CUB_200_2011.tgz", fixture.archive)
    model = save_tiny_stable_diffusion(tmp_path / "tiny-sd")
    clip = save_tiny_clip(tmp_path / "tiny-clip")
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=2)
    config.update(
        paths={"data": "data", "results": "results", "logs": "logs"},
        datasets=["cub200"], methods=["blender"], losses=["multi_similarity"], seeds=[0],
        dataset_settings={"cub200": {
            "backbone": "resnet50", "pretrained": False, "embedding_dim": 16, "image_size": 32,
            "md5": {"archive": fixture.md5}, "expected": fixture.expected,
        }},
        generation={"cub200": {
            "generator": "stable-diffusion", "model_id": str(model), "device": device, "fp16": True,
            "images_per_class": 3, "batch_size": 2, "steps": 2, "scheduler": "dpm-solver",
            # A random CLIP's similarities are near 0: -1 lets every image pass, so each set keeps its first 3.
            "filter": {"scorer": "clip", "clip_model": str(clip), "clip_threshold": -1.0, "extra": 1.0},
            "fine_tuning": {"method": "both", "steps": 3, "rank": 2, "batch_size": 2, "checkpoint_every": 1},
        }},
    )  # fmt: skip
    config["training"].update(batch_size=4, m_per_class=2, device=device)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))

    out = snakemake(tmp_path, "results/table.csv")

    assert re.search(r"^generate\s+2$", out, re.M), out  # one job per training class (2 of the 4)
    assert re.search(r"^filter_generated\s+2$", out, re.M), out
    assert re.search(r"^fine_tune\s+2$", out, re.M), out  # ... each after its class's fine-tuning
    table = pd.read_csv(tmp_path / "results" / "table.csv")
    assert list(table.method) == ["baseline", "blender"] and list(table.dataset) == ["cub200", "cub200"]  # baseline: blender's control
    generated = pd.read_csv(tmp_path / "data/cub200/generated/blender/manifest.csv")
    assert sorted(generated.label.unique()) == [1, 2] and len(generated) == 2 * 3
    for path in generated.path:
        with Image.open(tmp_path / "data/cub200/generated/blender" / path) as image:
            assert image.mode == "RGB" and image.size == (16, 16) and image.format == "JPEG"
    log = (tmp_path / "logs/generate/cub200/class0.log").read_text()
    assert f"on {device}" in log and ("torch.float16" if device == "cuda" else "torch.float32") in log
    report = pd.read_csv(tmp_path / "results" / "generation.csv")
    assert set(report.generator) == {"stable-diffusion"}
    # Latent residuals too: every union and intersection row has its recorded guidance strength.
    assert report.loc[report.operator.isin(["union", "intersection"]), "guidance_ratio"].notna().all()
    assert report.fidelity.between(0, 1).all() and (report.chance == 0.5).all()
    blender = report[report.operator == "all"].iloc[0]
    assert (blender["filter"], blender.generated, blender.rejected, blender.unused) == ("clip", 2 * 6, 0, 2 * 3)
    assert generated.score.between(-1, 1).all() and list(generated.path[:3]) == [f"images/1/{i:04d}.jpg" for i in range(3)]
    assert "3 kept, 0 rejected of 6" in (tmp_path / "logs/filter_generated/cub200/class0.log").read_text()
    # Each class was fine-tuned on its own training images and generated with its token and LoRA.
    summaries = [json.loads((tmp_path / f"data/cub200/fine_tuned/class{i}/fine_tuning.json").read_text()) for i in range(2)]
    real = pd.read_csv(tmp_path / "data/cub200/manifest.csv")
    for index, summary in enumerate(summaries):
        label = index + 1
        assert summary["label"] == label and summary["token"] == f"<cub200-{label}>" and len(summary["losses"]) == 3
        assert summary["images"] == ((real.label == label) & (real.split == "train")).sum()
        assert all(f"<cub200-{label}>" in p for p in generated.loc[generated.label == label, "prompts"])
        assert not (tmp_path / f"data/cub200/fine_tuned/checkpoints/class{index}.pt").exists()
    assert "LoRA weights loaded from data/cub200/fine_tuned/class0/lora.safetensors" in log
    # The measured fine-tuning time is part of the images' cost.
    assert report.generator_train_seconds.iloc[0] == pytest.approx(sum(s["seconds"] for s in summaries), abs=1e-3)
    assert (report.generator_train_seconds > 0).all()
    # Each class's fine-tuning is an MLflow run with its loss per step.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("fine_tuning").experiment_id])
    assert sorted(r.data.tags["token"] for r in runs) == [f"<cub200-{label}>" for label in (1, 2)]
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 3 for r in runs)

    # As after a run killed while fine-tuning class 1: that class alone is fine-tuned and generated again.
    shutil.rmtree(tmp_path / "data/cub200/fine_tuned/class1")
    (tmp_path / "data/cub200/generated/parts/class1.csv").unlink()
    (tmp_path / "data/cub200/generated/filtered/class1.csv").unlink()
    (tmp_path / "data/cub200/generated/blender/manifest.csv").unlink()
    out = snakemake(tmp_path, "data/cub200/generated/blender/manifest.csv")
    assert re.search(r"^fine_tune\s+1$", out, re.M) and re.search(r"^generate\s+1$", out, re.M), out
    assert "class_index=1" in out and "class_index=0" not in out


def test_a_hand_edited_prompts_file_survives_a_rerun_of_the_prompts_job(default_params, tmp_path):
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=2)
    config.update(paths={"data": "data", "results": "results", "logs": "logs"}, methods=["blender"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    prompts = tmp_path / "data/digits/prompts.yaml"
    snakemake(tmp_path, str(prompts.relative_to(tmp_path)))
    built = prompts.read_text()
    prompts.write_text(built.replace("a digit zero, thin strokes", "a digit zero, drawn with a fountain pen"))
    edited = prompts.read_text()
    assert edited != built

    out = snakemake(tmp_path, "--force", str(prompts.relative_to(tmp_path)))

    assert re.search(r"^prompts\s+1$", out, re.M), out
    assert prompts.read_text() == edited  # not overwritten
    assert (tmp_path / "data/digits/prompts.rebuilt.yaml").read_text() == built
    assert "edited by hand" in (tmp_path / "logs/prompts/digits.log").read_text()
