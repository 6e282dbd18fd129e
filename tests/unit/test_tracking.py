"""MLflow tracking: idempotent, safe under concurrent writers, never fatal to results."""

import json
from pathlib import Path
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dmlsynth import config as cfg
from dmlsynth.tracking import track_run


def fake_run(root, method="baseline", seed=0, with_metrics=True, params_hash="abc"):
    run_dir = root / "runs" / "digits" / method / "multi_similarity" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    params = {"dataset": "digits", "method": method, "loss": "multi_similarity", "seed": seed, "training": {"lr": 0.001}}
    record = {
        "params": params,
        "params_hash": params_hash,
        "code": {"git_commit": "deadbeef", "git_dirty": False},
        "environment": {"python": "3.11", "device": "cpu"},
        "wall_seconds": {"train": 1.5},
    }
    (run_dir / "run.yaml").write_text(yaml.safe_dump(record))
    pd.DataFrame({"epoch": [1, 2], "loss": [0.9, 0.5], "lr": [1e-3, 5e-4], "seconds": [0.1, 0.1]}).to_csv(
        run_dir / "train_log.csv", index=False
    )
    if with_metrics:
        (run_dir / "metrics.json").write_text(json.dumps({"recall@1": 0.75, "map@r": 0.5}))
    return run_dir


def test_run_is_created_completed_and_never_duplicated(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = fake_run(tmp_path, with_metrics=False)
    first = track_run(run_dir, uri)  # as the training job does
    (run_dir / "metrics.json").write_text(json.dumps({"recall@1": 0.75, "map@r": 0.5}))
    assert track_run(run_dir, uri) == first  # the evaluation job completes the same run
    assert track_run(run_dir, uri) == first  # a re-run adds nothing
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("digits")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "baseline/multi_similarity/seed0"
    assert run.data.tags["method"] == "baseline" and run.data.tags["seed"] == "0"
    assert run.data.tags["mlflow.source.git.commit"] == "deadbeef"
    assert run.data.params["training.lr"] == "0.001"
    assert run.data.metrics["recall_at_1_pct"] == 75.0 and run.data.metrics["wall_seconds_train"] == 1.5  # in %, as every results file
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0.9, 0.5]
    assert len(client.get_metric_history(run.info.run_id, "recall_at_1_pct")) == 1 and "recall_at_1" not in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"run.yaml", "train_log.csv", "metrics.json"} <= artifacts


def test_changed_params_make_a_new_run_and_mark_the_old_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = track_run(fake_run(tmp_path / "a", params_hash="one"), uri)
    new = track_run(fake_run(tmp_path / "b", params_hash="two"), uri)
    client = MlflowClient(tracking_uri=uri)
    assert old != new
    assert client.get_run(old).data.tags["dmlsynth.superseded"] == "true"
    assert "dmlsynth.superseded" not in client.get_run(new).data.tags


def _track(args):
    run_dir, uri = args
    return track_run(run_dir, uri)


def test_concurrent_writers_to_one_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dirs = [fake_run(tmp_path, method=m, seed=s) for m in ("baseline", "iaa") for s in range(4)]
    # Every run tracked twice at once, as training and evaluation jobs finishing together would.
    with ProcessPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(_track, [(d, uri) for d in run_dirs + run_dirs]))
    assert len(set(ids)) == len(run_dirs)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"{m}/multi_similarity/seed{s}" for m in ("baseline", "iaa") for s in range(4)
    )


def test_tracking_failure_keeps_the_results_and_says_how_to_resync(config, digits_manifest, tmp_path):
    # Each evaluation job tracks its run (the table job's tracking of every run: tests/e2e/test_reliability.py).
    config["tracking"].update(uri="sqlite:////dev/null/cannot/mlflow.db", runs="as_evaluated")
    config_file = tmp_path / "params.yaml"
    config_file.write_text(yaml.safe_dump(cfg.validate(config)))
    run_dir = Path(config["paths"]["results"]) / "runs" / "digits" / "baseline" / "multi_similarity" / "seed0"
    names = ["--config", str(config_file), "--dataset", "digits", "--method", "baseline", "--loss", "multi_similarity", "--seed", "0"]
    train = subprocess.run([sys.executable, "-m", "dmlsynth", "train", *names, "--no-progress"], capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    assert "MLflow" not in train.stderr  # a training job never starts MLflow
    result = subprocess.run([sys.executable, "-m", "dmlsynth", "evaluate", *names], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "MLflow tracking failed" in result.stderr
    assert f"dmlsynth track {run_dir}" in result.stderr
    for name in ("embeddings.npz", "model.pt", "run.yaml", "train_log.csv", "metrics.json", "queries.npz"):
        assert (run_dir / name).is_file()
    # Once the store is reachable, `dmlsynth track` logs the finished run.
    uri = f"sqlite:///{tmp_path / 'ok.db'}"
    resync = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "track", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert resync.returncode == 0, resync.stderr
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("digits").experiment_id]
    )
    assert len(runs) == 1 and runs[0].data.metrics["wall_seconds_train"] > 0


def test_track_without_runs_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "track", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and "no finished run folders" in result.stderr


def test_fine_tuned_class_is_one_run_with_its_loss_curve(tmp_path):
    from dmlsynth.tracking import track_fine_tuning

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = {
        "dataset": "cub200", "label": 17, "class_name": "017.Cardinal", "method": "both", "token": "<cub200-17>",
        "files": {"lora": "lora.safetensors"}, "steps": 3, "images": 30, "resolution": 512, "seconds": 12.5,
        "seconds_per_step": 4.1667, "final_loss": 0.2, "losses": [0.5, 0.3, 0.2], "device": "cuda:0",
        "params_hash": "abc",
    }  # fmt: skip
    file = tmp_path / "fine_tuning.json"
    file.write_text(json.dumps(summary))
    first = track_fine_tuning(file, uri)
    assert track_fine_tuning(file, uri) == first  # a re-run adds nothing
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fine_tuning").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "cub200/017.Cardinal" and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["token"] == "<cub200-17>" and runs[0].data.tags["method"] == "both"
    assert runs[0].data.metrics["seconds"] == 12.5 and runs[0].data.metrics["final_loss"] == 0.2
    history = client.get_metric_history(first, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.5), (2, 0.3), (3, 0.2)]
    assert {a.path for a in client.list_artifacts(first)} == {"fine_tuning.json"}
    # Fine-tuned with other params: a run of its own.
    file.write_text(json.dumps({**summary, "params_hash": "def"}))
    assert track_fine_tuning(file, uri) != first


def test_a_run_spans_its_training_with_real_metric_times(tmp_path):
    # Training started at t0 and finished 90 s later (over two attempts); its epochs ended at t0+40, t0+85.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = fake_run(tmp_path, with_metrics=False)
    t0 = 1_790_000_000.25
    record = yaml.safe_load((run_dir / "run.yaml").read_text())
    record.update({"started": t0, "finished": t0 + 90.0, "wall_seconds": {"train": 70.0}, "attempts": 2})
    (run_dir / "run.yaml").write_text(yaml.safe_dump(record))
    history = pd.read_csv(run_dir / "train_log.csv").assign(time=[t0 + 40.0, t0 + 85.0])
    history.to_csv(run_dir / "train_log.csv", index=False)
    track_run(run_dir, uri)
    (run_dir / "metrics.json").write_text(json.dumps({"recall@1": 0.75}))
    run_id = track_run(run_dir, uri)  # the evaluation job, minutes later, must not stretch the run
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert (run.info.start_time, run.info.end_time) == (int(t0 * 1000), int((t0 + 90.0) * 1000))
    assert [m.timestamp for m in client.get_metric_history(run_id, "train_loss")] == [int((t0 + 40) * 1000), int((t0 + 85) * 1000)]
    assert client.get_metric_history(run_id, "recall_at_1_pct")[0].timestamp == int((t0 + 90.0) * 1000)
    assert run.data.metrics["wall_seconds_train"] == 70.0


def test_every_retrieval_metric_goes_to_mlflow_in_percent_and_nothing_else_does():
    from dmlsynth.metrics import METRIC_KEYS
    from dmlsynth.tracking import percent_name

    assert [percent_name(k) for k in METRIC_KEYS] == [k.replace("@", "_at_") + "_pct" for k in METRIC_KEYS]
    assert percent_name("val_map@r") == "val_map_at_r_pct" and percent_name("last_epoch.nmi") == "last_epoch_nmi_pct"
    assert percent_name("eval_seconds") is None and percent_name("queries") is None


def test_a_run_of_a_plugin_is_tagged_with_its_distribution_and_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = fake_run(tmp_path, method="example_mixup")
    record = yaml.safe_load((run_dir / "run.yaml").read_text())
    record["code"]["plugins"] = {"method.example_mixup": "dmlsynth-example-mixup 0.1.0"}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(record))
    track_run(run_dir, uri)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.data.tags["dmlsynth.plugin.method.example_mixup"] == "dmlsynth-example-mixup 0.1.0"
