"""Validation classes choose the reported epoch; the test classes never take part in the choice."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dmlsynth import config as cfg
from dmlsynth.evaluation import evaluate_run
from dmlsynth.layout import RunFolder
from dmlsynth.training.loop import train_run
from dmlsynth.config import filled
from tests.helpers.training import Interrupted, stop_after

VALIDATION_CLASSES = 2  # digits 3 and 4 of the training digits 0-4


def validated(config, epochs=4):
    config["dataset_settings"] = {"digits": {**config.get("dataset_settings", {}).get("digits", {}), "validation_classes": VALIDATION_CLASSES}}
    # 3 training classes are left: a batch holds all three.
    config["training"].update({"epochs": epochs, "batch_size": 48, "m_per_class": 16, "batches_per_epoch": 3})
    return cfg.run_params(cfg.validate(config), "digits", "baseline", "multi_similarity", 0)


def test_the_epoch_is_chosen_on_validation_classes(config, digits_manifest, tmp_path, device):
    config["training"]["device"] = device  # the chosen weights come back from the CPU copy onto the device
    params = validated(config)
    train_run(params, digits_manifest, tmp_path / "run", progress=False)
    folder = RunFolder(str(tmp_path / "run"))
    record = yaml.safe_load(open(folder.record))
    history = pd.read_csv(folder.history)
    # Per epoch: validation R@1 and MAP@R; the chosen epoch is the first with the best validation MAP@R.
    assert {"val_recall@1", "val_map@r"} <= set(history.columns) and history["val_map@r"].between(0, 1).all()
    chosen = int(history.loc[history["val_map@r"].idxmax(), "epoch"])
    assert record["validation"]["classes"] == [3, 4]
    assert record["validation"]["chosen_epoch"] == chosen and record["validation"]["select_on"] == "map@r"
    assert record["validation"]["val_map@r"] == pytest.approx(history["val_map@r"].max())
    # Training saw only digits 0-2.
    manifest = pd.read_csv(digits_manifest)
    assert record["train_images"] == {"real": int(manifest.label.isin([0, 1, 2]).sum()), "generated": 0}
    # Test embeddings: of the chosen epoch, and of the last epoch; both of the test classes only.
    with np.load(folder.embeddings) as chosen_epoch, np.load(folder.last_epoch_embeddings) as last_epoch:
        assert np.array_equal(chosen_epoch["labels"], last_epoch["labels"])
        assert sorted(set(chosen_epoch["labels"].tolist())) == [5, 6, 7, 8, 9]
        assert np.array_equal(chosen_epoch["embeddings"], last_epoch["embeddings"]) == (chosen == 4)
    # The evaluation reports both.
    metrics = evaluate_run(folder.path)
    assert set(json.loads(open(folder.metrics).read())) >= {"recall@1", "map@r", "last_epoch.recall@1", "last_epoch.map@r", "last_epoch.nmi"}
    if chosen == 4:
        assert metrics["map@r"] == metrics["last_epoch.map@r"]
    with np.load(folder.queries) as queries:
        assert queries["last_epoch.map@r"][queries["kept"]].mean() == pytest.approx(metrics["last_epoch.map@r"])


def test_test_classes_play_no_part_in_the_choice(config, digits_manifest, tmp_path):
    params = validated(config)
    # The same dataset with other test images: every test image replaced by one image of class 9,
    # and the test labels shuffled. If the test split took part in the choice, it would change.
    manifest = pd.read_csv(digits_manifest)
    test = manifest.split == "test"
    manifest.loc[test, "path"] = manifest.loc[test & (manifest.label == 9), "path"].iloc[0]
    manifest.loc[test, "label"] = np.random.default_rng(0).permutation(manifest.loc[test, "label"].to_numpy())
    other = digits_manifest.parent / "other_test_manifest.csv"
    manifest.to_csv(other, index=False)
    try:
        a = train_run(params, digits_manifest, tmp_path / "a", progress=False)
        b = train_run(params, other, tmp_path / "b", progress=False)
    finally:
        other.unlink()
    record_a = yaml.safe_load(open(RunFolder(str(tmp_path / "a")).record))["validation"]
    record_b = yaml.safe_load(open(RunFolder(str(tmp_path / "b")).record))["validation"]
    assert record_a == record_b
    assert [(h["val_recall@1"], h["val_map@r"]) for h in a["history"]] == [(h["val_recall@1"], h["val_map@r"]) for h in b["history"]]
    state_a = torch.load(RunFolder(str(tmp_path / "a")).model, weights_only=True)["model"]
    state_b = torch.load(RunFolder(str(tmp_path / "b")).model, weights_only=True)["model"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # the same chosen weights
    assert not torch.equal(a["embeddings"], b["embeddings"])  # while the test embeddings differ


def test_interrupted_run_resumes_to_the_same_choice(config, digits_manifest, tmp_path):
    params = validated(config, epochs=3)
    whole = train_run(params, digits_manifest, tmp_path / "whole", progress=False)
    with pytest.raises(Interrupted):
        train_run(params, digits_manifest, tmp_path / "cut", callbacks=[stop_after(2)], progress=False)
    resumed = train_run(params, digits_manifest, tmp_path / "cut", progress=False)
    assert resumed["history"] == [{**h, "seconds": r["seconds"], "time": r["time"]} for h, r in zip(whole["history"], resumed["history"])]
    assert torch.equal(resumed["embeddings"], whole["embeddings"])
    for name in ("whole", "cut"):
        assert yaml.safe_load(open(RunFolder(str(tmp_path / name)).record))["validation"] == yaml.safe_load(
            open(RunFolder(str(tmp_path / "whole")).record)
        )["validation"]
    with np.load(RunFolder(str(tmp_path / "cut")).last_epoch_embeddings) as a, np.load(RunFolder(str(tmp_path / "whole")).last_epoch_embeddings) as b:
        assert np.array_equal(a["embeddings"], b["embeddings"])


def test_validation_is_tracked_per_epoch(config, digits_manifest, tmp_path):
    from mlflow.tracking import MlflowClient

    from dmlsynth import tracking

    train_run(validated(config, epochs=2), digits_manifest, tmp_path / "run", progress=False)
    settings = tracking.settings(filled({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    run_id = tracking.track_run(tmp_path / "run", settings)
    client = MlflowClient(tracking_uri=settings.uri)
    history = pd.read_csv(RunFolder(str(tmp_path / "run")).history)
    assert [m.value for m in client.get_metric_history(run_id, "val_map_at_r_pct")] == pytest.approx((100 * history["val_map@r"]).tolist())
    assert len(client.get_metric_history(run_id, "val_recall_at_1_pct")) == 2
    assert client.get_run(run_id).data.metrics["chosen_epoch"] in (1.0, 2.0)
