from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dmlsynth import config as cfg
from dmlsynth import registry
from dmlsynth.layout import RunFolder
from dmlsynth.training.loop import train_run
from tests.helpers.training import Interrupted, stop_after


def params_for(config, method="baseline", loss="multi_similarity", seed=0):
    return cfg.run_params(cfg.validate(config), "digits", method, loss, seed)


def train_job(config, seed=0):
    """The workflow's ``train`` job of the baseline run ``seed``: its identity keys the checkpoint."""
    from dmlsynth.jobs import Jobs

    return Jobs(cfg.validate(config)).train("digits", "baseline", "multi_similarity", seed)


def test_outputs_are_complete_and_sane(config, digits_manifest, tmp_path):
    result = train_run(params_for(config), digits_manifest, tmp_path / "run", progress=False)
    folder = RunFolder(str(tmp_path / "run"))
    for name in folder.training_outputs():
        assert Path(name).is_file(), name
    with np.load(tmp_path / "run" / "embeddings.npz") as data:
        assert data["embeddings"].shape == (896, 64)
        assert sorted(set(data["labels"].tolist())) == [5, 6, 7, 8, 9]  # test classes only
    history = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert np.isfinite(history["loss"]).all()
    record = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert record["params"]["seed"] == 0 and "git_commit" in record["code"]
    assert torch.__version__.startswith(record["environment"]["package.torch"])
    # Weights load with the safe unpickler; a finished run keeps no checkpoint (a forced re-run trains again).
    torch.load(folder.model, weights_only=True)
    assert not Path(folder.checkpoint).exists()
    assert result["embeddings"].shape == (896, 64)


def test_same_seed_same_numbers_other_seed_other_numbers(config, digits_manifest, tmp_path):
    a = train_run(params_for(config, seed=3), digits_manifest, tmp_path / "a", progress=False)
    b = train_run(params_for(config, seed=3), digits_manifest, tmp_path / "b", progress=False)
    c = train_run(params_for(config, seed=4), digits_manifest, tmp_path / "c", progress=False)
    assert torch.equal(a["embeddings"], b["embeddings"])
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"]
    assert not torch.allclose(a["embeddings"], c["embeddings"])


@pytest.mark.parametrize("loss", sorted(registry.LOSSES))
def test_every_base_loss_trains(config, digits_manifest, tmp_path, loss):
    result = train_run(params_for(config, loss=loss), digits_manifest, tmp_path / loss, progress=False)
    assert np.isfinite([h["loss"] for h in result["history"]]).all()


def test_interrupted_run_resumes_to_the_same_result(config, digits_manifest, tmp_path):
    config["training"]["epochs"] = 3
    params, identity = params_for(config, seed=1), train_job(config, seed=1).identity()
    whole = train_run(params, digits_manifest, tmp_path / "whole", progress=False)
    with pytest.raises(Interrupted):
        train_run(params, digits_manifest, tmp_path / "cut", callbacks=[stop_after(2)], progress=False, identity=identity)
    torch.load(RunFolder(str(tmp_path / "cut")).checkpoint, weights_only=True)  # the safe unpickler reads it
    assert not (tmp_path / "cut" / "embeddings.npz").exists()  # nothing that looks complete
    resumed = train_run(params, digits_manifest, tmp_path / "cut", progress=False, identity=identity)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert torch.equal(resumed["embeddings"], whole["embeddings"])


def test_checkpoint_of_other_params_is_not_resumed(config, digits_manifest, tmp_path, caplog):
    one, two = train_job(config, seed=1).identity(), train_job(config, seed=2).identity()
    with pytest.raises(Interrupted):
        train_run(params_for(config, seed=1), digits_manifest, tmp_path / "run", callbacks=[stop_after(1)], progress=False, identity=one)
    fresh = train_run(params_for(config, seed=2), digits_manifest, tmp_path / "fresh", progress=False)
    with caplog.at_level("WARNING"):
        reused = train_run(params_for(config, seed=2), digits_manifest, tmp_path / "run", progress=False, identity=two)
    assert "made with other identity" in caplog.text
    assert torch.equal(reused["embeddings"], fresh["embeddings"])


def test_corrupt_checkpoint_is_ignored(config, digits_manifest, tmp_path, caplog):
    (tmp_path / "run").mkdir()
    Path(RunFolder(str(tmp_path / "run")).checkpoint).write_bytes(b"not a checkpoint")
    with caplog.at_level("WARNING"):
        train_run(params_for(config), digits_manifest, tmp_path / "run", progress=False, identity=train_job(config).identity())
    assert "unreadable checkpoint" in caplog.text


def test_gradients_reach_the_backbone(config, digits_manifest, tmp_path):
    from dmlsynth.models import build_backbone

    model = build_backbone("small_cnn", 16, pretrained=False, in_channels=1)
    from dmlsynth.losses import build_loss

    loss_fn = build_loss("multi_similarity", {}, num_classes=5, embedding_dim=16)
    images = torch.randn(20, 1, 8, 8)
    labels = torch.arange(5).repeat_interleave(4)
    loss_fn(model(images), labels).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_asking_for_cuda_without_a_gpu_names_the_setting():
    from dmlsynth.device import pick_device

    with pytest.raises(RuntimeError, match="training.device is 'cuda' but no CUDA device"):
        pick_device("cuda", "training.device")
    assert pick_device("auto", "training.device").type == "cpu"


def test_checkpoint_of_another_thread_count_is_not_resumed(config, digits_manifest, tmp_path, caplog):
    # Float reductions depend on the thread count, so a resumed run must use the same one: it is in the identity.
    params = params_for(config, seed=1)
    config["dataset_settings"]["digits"]["resources"] = {"threads": 2}
    job = train_job(config, seed=1)
    assert job.identity() != train_job({**config, "dataset_settings": {"digits": {}}}, seed=1).identity()
    with pytest.raises(Interrupted):
        train_run(params, digits_manifest, tmp_path / "run", threads=1, callbacks=[stop_after(1)], progress=False, identity="other")
    with caplog.at_level("WARNING"):
        train_run(params, digits_manifest, tmp_path / "run", threads=2, progress=False, identity=job.identity(), code_digest=job.code_digest())
    assert "made with other identity" in caplog.text
    record = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert record["environment"]["torch.threads"] == "2" and record["code"]["digest"] == job.code_digest()
    assert record["identity"] == job.identity()
