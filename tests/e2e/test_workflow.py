"""End to end: the real Snakemake workflow on a tiny config, from the dataset through generated images and
training to the table, the comparison and the report, with `device: auto` (CUDA where present)."""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import small_config
from tests.e2e.conftest import EMBEDDED_GPU_SLOTS
from tests.helpers.workflow import copy_of
from tests.helpers.workflow import snakemake as run_snakemake


def snakemake(workdir, *args, check=True):
    return run_snakemake(workdir, *args, check=check, cores=4)


@pytest.mark.slow
def test_workflow_runs_to_the_comparison_and_then_has_nothing_to_do(finished_embedded, tmp_path):
    # (The report and the second run write into the folder: they run in a copy.)
    config, finished = finished_embedded
    copy_of(finished, tmp_path)

    table = pd.read_csv(tmp_path / "results" / "table.csv")
    expected_rows = {("digits", m, l) for m in config["methods"] for l in config["losses"]}
    assert set(zip(table.dataset, table.method, table.loss)) == expected_rows
    assert (table.seeds == 2).all()
    for column in [c for c in table.columns if c.endswith("_mean")]:
        assert table[column].between(0, 100).all(), column  # in % (docs/outputs.md)
    assert table["recall@1_mean"].min() > 30  # far above chance (20 %) even after one short epoch
    # Like for like: one optimisation budget per loss, whatever the method. An epoch is one pass over the real
    # training images, so the generated images change what BLenDeR's and sd_plain's batches hold, not how many.
    records = {
        (r["params"]["label"], r["params"]["loss"], r["params"]["seed"]): r
        for r in (yaml.safe_load(p.read_text()) for p in (tmp_path / "results" / "runs").rglob("run.yaml"))
    }
    for loss in config["losses"]:
        budgets = {key: r["budget"]["optimisation_steps"] for key, r in records.items() if key[1] == loss}
        assert len(budgets) == 3 * 2 and len(set(budgets.values())) == 1, budgets  # 3 methods, 2 seeds
        assert (table[table.loss == loss]["optimisation_steps"].astype(int) == next(iter(budgets.values()))).all()
    for method in ("blender", "sd_plain"):
        assert records[(method, "multi_similarity", 0)]["budget"]["images_seen"]["generated"] > 0, method
        assert (table[table.method == method]["control"] == "baseline").all()
    baseline = table[table.method == "baseline"]
    assert baseline["recall@1_delta"].isna().all()  # 'n/a': baseline is the reference
    compared = table[table.method != "baseline"]
    assert (compared["pairs"] == 2).all() and (compared["test"] == "paired-t").all()
    assert compared["recall@1_significant"].isin(["yes", "no"]).all()
    assert (compared["recall@1_delta_boot_low"] <= compared["recall@1_delta"]).all()
    for loss in config["losses"]:
        assert (tmp_path / "results" / "figures" / f"forest_digits_{loss}.png").is_file()
    comparison = pd.read_csv(tmp_path / "results" / "comparison.csv")
    assert len(comparison) == len(table) and (comparison.loc[comparison.method == "blender", "generation_seconds"] > 0).all()
    # generation.csv says where the images were sampled; a CPU-only run costs no GPU-hours, whatever the method
    # (the cell is blank), and on CUDA the generated images' sampling is counted in the rows that train on them.
    devices = pd.read_csv(tmp_path / "results" / "generation.csv")["device"]
    if torch.cuda.is_available():
        assert devices.str.startswith("cuda").all() and (comparison.loc[comparison.method != "baseline", "gpu_hours"] > 0).all()
    else:
        assert comparison["gpu_hours"].isna().all() and (devices == "cpu").all()
    for run in ("digits/baseline/multi_similarity/seed1",):
        for name in ("embeddings.npz", "model.pt", "run.yaml", "train_log.csv", "metrics.json", "embeddings.png"):
            assert (tmp_path / "results" / "runs" / run / name).is_file()
    assert (tmp_path / "results" / "figures" / "recall_at_1.png").is_file()
    assert (tmp_path / "logs" / "train" / "digits" / "baseline" / "multi_similarity" / "seed1.log").is_file()

    # MLflow: exactly one run per training job, with its params and final metrics, plus the summary.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=config["tracking"]["uri"])
    experiment = client.get_experiment_by_name("digits").experiment_id
    runs = client.search_runs([experiment], filter_string="tags.`dmlsynth.kind` = 'run'")
    expected_names = sorted(f"{m}/{l}/seed{s}" for m in config["methods"] for l in config["losses"] for s in config["seeds"])
    assert sorted(r.info.run_name for r in runs) == expected_names
    # One row run per table row, the parent of its seeds' runs.
    rows = {r.info.run_name: r.info.run_id for r in client.search_runs([experiment], filter_string="tags.`dmlsynth.kind` = 'row'")}
    assert sorted(rows) == sorted(f"{m}/{l}" for m in config["methods"] for l in config["losses"])
    assert all(r.data.tags["mlflow.parentRunId"] == rows[r.info.run_name.rsplit("/", 1)[0]] for r in runs)
    for run in runs:
        assert run.data.params["training.epochs"] == "1"
        assert 0 <= run.data.metrics["recall_at_1_pct"] <= 100 and "map_at_r_pct" in run.data.metrics
        assert run.info.status == "FINISHED"
    summary = client.search_runs([client.get_experiment_by_name("summary").experiment_id])
    assert len(summary) == 1 and "table.csv" in {a.path for a in client.list_artifacts(summary[0].info.run_id)}

    again = snakemake(tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr

    snakemake(tmp_path, "--report", "results/report.html")
    html = (tmp_path / "results" / "report.html").read_text()
    expected_captions = [
        "Results table: one row", "recall_at_1.png", "Training curves", "Test embeddings",
        "Forest plot of one dataset", "Comparison with baseline",
    ]  # fmt: skip
    if any(m.startswith("blender") or m == "sd_plain" for m in config["methods"]):
        expected_captions += ["generated_digits.png", "Quality of the generated training images"]
    for expected in expected_captions:
        assert expected in html, expected


@pytest.mark.slow
def test_every_gpu_job_gets_its_own_slot_and_the_slots_given_change_no_result(finished_embedded, tmp_path):
    """On a GPU machine every run trains on CUDA; without one, on the CPU. Either way jobs take GPU slots."""
    config, finished = finished_embedded
    workdir = copy_of(finished, tmp_path)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    records = sorted((workdir / "results" / "runs").rglob("run.yaml"))
    assert len(records) == len(config["methods"]) * len(config["losses"]) * len(config["seeds"])
    for record in records:
        assert yaml.safe_load(record.read_text())["environment"]["device"] == expected
    taken = []
    for log in sorted((workdir / "logs" / "train").rglob("*.log")):
        found = re.search(r"GPU slot\(s\) \[(\d+)\] of (\d+): CUDA_VISIBLE_DEVICES=(\d+)", log.read_text())
        assert found, f"{log} names no GPU slot"
        assert int(found[2]) == EMBEDDED_GPU_SLOTS and found[1] == found[3]
        taken.append(int(found[1]))
    assert len(taken) == len(records) and set(taken) <= set(range(EMBEDDED_GPU_SLOTS))
    # How many GPUs the workflow is given changes no result: nothing re-runs.
    again = snakemake(workdir, "results/table.csv", "--resources", "gpu=1")
    assert "Nothing to be done" in again.output


@pytest.mark.slow
def test_invalid_config_stops_before_any_job(repo_root, default_params, tmp_path):
    config = dict(default_params, methods=["baseline", "magic"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "results/table.csv", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "at methods[1]: 'magic' is not allowed; allowed values: baseline" in output
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_cli_reports_a_missing_manifest(repo_root, tmp_path):
    config = yaml.safe_load((repo_root / "params.yaml").read_text())
    config["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results"), "logs": str(tmp_path / "logs")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "train", "--config", str(tmp_path / "params.yaml"),
         "--dataset", "digits", "--method", "baseline", "--loss", "multi_similarity", "--seed", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist: prepare the dataset first" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_unknown_names(repo_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "evaluate", "--config", str(tmp_path / "nope.yaml"),
         "--dataset", "digits", "--method", "baseline", "--loss", "multi_similarity", "--seed", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "nope.yaml does not exist" in result.stderr


def _train_cli(repo_root, config_file, *extra):
    """The train job of baseline/multi_similarity/seed0 of ``config_file``, by hand (its paths are the config's)."""
    return subprocess.run(
        [sys.executable, "-m", "dmlsynth", "train", "--config", str(config_file), "--dataset", "digits",
         "--method", "baseline", "--loss", "multi_similarity", "--seed", "0", "--no-progress", *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_corrupt_image_is_reported_without_a_traceback(repo_root, default_params, tmp_path, digits_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_dir / "digits", data / "digits")
    victim = sorted((data / "digits" / "images" / "0").iterdir())[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    config = small_config(default_params, data, tmp_path / "results")
    config["tracking"] = {"enabled": False}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    result = _train_cli(repo_root, tmp_path / "params.yaml")
    assert result.returncode == 2, result.stderr
    assert f"cannot read image {victim}" in result.stderr and "prepare the dataset again" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_generated_image_says_which_part_file_to_delete(repo_root, default_params, tmp_path, digits_dir):
    import pandas as pd

    from dmlsynth.generation.run import merge_parts

    import shutil

    # A generated image set whose class-1 image was deleted after generation.
    data = tmp_path / "data"
    shutil.copytree(digits_dir / "digits", data / "digits")
    train = pd.read_csv(data / "digits" / "manifest.csv").query("split == 'train'")
    generated = data / "digits" / "generated"
    parts = []
    for index, label in enumerate(sorted(train.label.unique())):
        rows = train[train.label == label].head(2)
        for i, source in enumerate(rows.path):
            target = generated / "plain" / "images" / str(label) / f"{i:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((data / "digits" / source).read_bytes())
        part = pd.DataFrame({
            "image_set": "plain", "path": [f"images/{label}/{i:04d}.png" for i in range(2)], "label": label,
            "class_name": rows.class_name.iloc[0], "split": "train", "operator": "conjunction", "prompts": "{}",
            "seed": [0, 1], "seconds": 0.1, "params_hash": "x",
        })  # fmt: skip
        parts.append(generated / "parts" / f"class{index}.csv")
        parts[-1].parent.mkdir(parents=True, exist_ok=True)
        part.to_csv(parts[-1], index=False)
    manifest = generated / "plain" / "manifest.csv"
    merge_parts(parts, "plain", manifest)
    (generated / "plain" / "images" / "1" / "0001.png").unlink()
    config = small_config(default_params, data, tmp_path / "results")
    config["tracking"] = {"enabled": False}
    config["methods"] = ["sd_plain"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "train", "--config", str(tmp_path / "params.yaml"), "--dataset", "digits",
         "--method", "sd_plain", "--loss", "multi_similarity", "--seed", "0", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"made again when you delete {parts[1]}" in result.stderr
    assert "prepare the dataset again" not in result.stderr


@pytest.mark.slow
def test_generation_workflow_is_complete_and_restartable(finished_embedded, tmp_path):
    config, finished = finished_embedded
    table = pd.read_csv(finished / "results" / "table.csv")
    assert set(table.method) == {"baseline", "blender", "sd_plain"}
    # device: auto trained the generator on CUDA where there is one.
    generator = json.loads((finished / "data/digits/generator/generator.json").read_text())
    assert generator["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    report = pd.read_csv(finished / "results" / "generation.csv")
    assert {"blender", "plain"} == set(report.image_set)
    assert report.fidelity.between(0, 1).all() and (report.chance == 0.2).all()
    # The cost of the images: sampling time per image and the generator's training time.
    assert (report.seconds_per_image > 0).all() and (report.generator_train_seconds > 0).all()
    assert (finished / "results" / "figures" / "generated_digits.png").is_file()
    # Filtering: 4 + 2 extra images per class and set, none rejected, the 2 extra unused.
    pooled = report[report.operator.isin(["all", "cfg"])]
    assert set(pooled["filter"]) == {"fidelity"} and (pooled.generated == 6 * 5).all()
    assert (pooled.rejected == 0).all() and (pooled.unused == 2 * 5).all() and (pooled.images == 4 * 5).all()
    assert pooled.kept_score.between(0, 1).all()
    # How the images were guided, recorded per image by each sampling run and averaged over the kept images
    # (the defaults: the principal-component intersection and the strength control).
    assert set(report.intersection_rule) == {"principal_component"} and set(report.guidance_norm) == {"mean"}
    rows = report.set_index(["image_set", "operator"])
    plain = rows.loc[("plain", "cfg")]
    assert plain.guidance_ratio == 1 and pd.isna(plain.difference_along_mean)  # ordinary guidance
    kept = pd.read_csv(finished / "data" / "digits" / "generated" / "blender" / "manifest.csv")
    for operator in ("union", "intersection"):
        row = rows.loc[("blender", operator)]
        images = kept[kept.operator == operator]
        for name in ("guidance_ratio", "difference_along_mean", "applied_difference_along_mean"):
            assert row[name] == pytest.approx(images[name].mean(), abs=1e-4), (operator, name)
        assert 0 <= row.applied_difference_along_mean <= 1 and 0 <= row.difference_along_mean <= 1
    # The principal-component intersection is never longer than the mean residual; the union is not it.
    assert rows.loc[("blender", "intersection"), "guidance_ratio"] <= 1 + 1e-4
    assert rows.loc[("blender", "union"), "guidance_ratio"] != rows.loc[("blender", "intersection"), "guidance_ratio"]
    real = pd.read_csv(finished / "data" / "digits" / "manifest.csv")
    train_classes = set(real.loc[real.split == "train", "label"])
    for image_set in ("blender", "plain"):
        generated = pd.read_csv(finished / "data" / "digits" / "generated" / image_set / "manifest.csv")
        assert set(generated.label) == train_classes and len(generated) == 4 * len(train_classes)
        assert generated.score.between(0, 1).all()
    record = yaml.safe_load((finished / "results/runs/digits/blender/multi_similarity/seed0/run.yaml").read_text())
    assert record["train_images"] == {"real": (real.split == "train").sum(), "generated": 4 * len(train_classes)}

    # As after a run killed while generating class 3 (neither its part nor its filtered part written):
    # that class is redone alone, complete classes are not.
    copy_of(finished, tmp_path)
    (tmp_path / "data/digits/generated/parts/class3.csv").unlink()
    (tmp_path / "data/digits/generated/filtered/class3.csv").unlink()
    (tmp_path / "data/digits/generated/blender/manifest.csv").unlink()
    out = snakemake(tmp_path, "data/digits/generated/blender/manifest.csv").output
    assert re.search(r"^generate\s+1$", out, re.M), out  # job stats: one generate job ...
    assert re.search(r"^filter_generated\s+1$", out, re.M), out  # ... and its filter job ...
    assert "class_index=3" in out and "class_index=2" not in out  # ... for class 3
    assert "rule train_generator" not in out
