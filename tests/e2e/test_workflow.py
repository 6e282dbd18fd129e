"""End to end: the real Snakemake workflow on a tiny config."""

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import small_config
from tests.helpers.workflow import snakemake as run_snakemake


def snakemake(repo_root, workdir, *args, check=True):
    return run_snakemake(workdir, *args, check=check, cores=4)


@pytest.mark.slow
def test_workflow_runs_to_the_comparison_and_then_has_nothing_to_do(repo_root, default_params, tmp_path):
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=2)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    # No synthesis and generated images (the longest chain of jobs); a feature-space method goes through the same
    # jobs to the table in test_like_for_like_workflow.py, test_declared_dataset_workflow.py and the shared
    # baseline+symm run (tests/e2e/conftest.py).
    config["methods"] = ["baseline", "blender"]
    config["losses"] = ["multi_similarity", "contrastive"]
    config["seeds"] = [0, 1]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))

    snakemake(repo_root, tmp_path)  # the default target: the table and the comparison report

    table = pd.read_csv(tmp_path / "results" / "table.csv")
    expected_rows = {("digits", m, l) for m in config["methods"] for l in config["losses"]}
    assert set(zip(table.dataset, table.method, table.loss)) == expected_rows
    assert (table.seeds == 2).all()
    for column in [c for c in table.columns if c.endswith("_mean")]:
        assert table[column].between(0, 100).all(), column  # in % (docs/outputs.md)
    assert table["recall@1_mean"].min() > 30  # far above chance (20 %) even after one short epoch
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
    # A CPU-only run costs no GPU-hours, whatever the method: the cell is blank (generation.csv says where images were sampled).
    assert comparison["gpu_hours"].isna().all() and (pd.read_csv(tmp_path / "results" / "generation.csv")["device"] == "cpu").all()
    for run in ("digits/baseline/contrastive/seed1",):
        for name in ("embeddings.npz", "model.pt", "run.yaml", "train_log.csv", "metrics.json", "embeddings.png"):
            assert (tmp_path / "results" / "runs" / run / name).is_file()
    assert (tmp_path / "results" / "figures" / "recall_at_1.png").is_file()
    assert (tmp_path / "logs" / "train" / "digits" / "baseline" / "contrastive" / "seed1.log").is_file()

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

    again = snakemake(repo_root, tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr

    snakemake(repo_root, tmp_path, "--report", "results/report.html")
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
def test_invalid_config_stops_before_any_job(repo_root, default_params, tmp_path):
    config = dict(default_params, methods=["baseline", "magic"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(repo_root, tmp_path, "results/table.csv", check=False)
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
