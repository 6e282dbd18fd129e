"""What a run costs and which batches it sees, through the training the workflow runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth.layout import RunFolder
from dmlsynth.training import validation
from dmlsynth.training.build import build_run
from dmlsynth.training.loop import train_run
from tests.helpers.training import Interrupted, stop_after


def params_for(config, seed=0):
    return cfg.run_params(cfg.validate(config), "digits", "baseline", "multi_similarity", seed)


def test_the_batches_come_from_the_runs_seed(config, digits_manifest):
    def first_epoch(seed):
        run = build_run(params_for(config, seed), digits_manifest)
        return [int(i) for i in run.train_sampler]

    assert first_epoch(0) == first_epoch(0)
    assert first_epoch(0) != first_epoch(1)


def test_training_seconds_count_every_attempt(config, digits_manifest, tmp_path):
    config["training"]["epochs"] = 3
    params = params_for(config, seed=1)
    folder = RunFolder(str(tmp_path / "run"))
    with pytest.raises(Interrupted):
        train_run(params, digits_manifest, folder.path, callbacks=[stop_after(1)], progress=False, identity="run")
    first = json.loads(open(folder.attempts).read())["attempts"]
    assert len(first) == 1 and first[0]["seconds"] > 0
    train_run(params, digits_manifest, folder.path, progress=False, identity="run")
    record = yaml.safe_load(open(folder.record))
    history = pd.read_csv(folder.history)
    assert record["attempts"] == 2
    assert record["wall_seconds"]["train"] == pytest.approx(first[0]["seconds"] + record["wall_seconds"]["last_attempt"], abs=2e-3)
    assert record["wall_seconds"]["train"] >= history["seconds"].sum()  # every epoch, of both attempts
    assert record["started"] <= first[0]["started"] + 1e-3 and record["finished"] > record["started"]
    assert not (tmp_path / "run" / "attempts.json").exists()  # a finished run keeps no attempts file
    # A forced re-run (a finished run, no checkpoint) is a new run: one attempt.
    train_run(params, digits_manifest, folder.path, progress=False, identity="run")
    assert yaml.safe_load(open(folder.record))["attempts"] == 1


def test_a_validation_tie_keeps_the_earlier_epoch(config, digits_manifest, tmp_path, monkeypatch):
    config["dataset_settings"] = {"digits": {**config.get("dataset_settings", {}).get("digits", {}), "validation_classes": 2}}
    config["training"].update({"epochs": 3, "batch_size": 48, "m_per_class": 16, "batches_per_epoch": 2})
    monkeypatch.setattr(validation, "retrieval_metrics", lambda *args, **kwargs: {"recall@1": 0.5, "map@r": 0.5})
    train_run(params_for(config), digits_manifest, tmp_path / "run", progress=False)
    record = yaml.safe_load(open(RunFolder(str(tmp_path / "run")).record))
    assert record["validation"]["chosen_epoch"] == 1
