"""Training on every device: where each part lives, mixed precision, resuming, and what the run records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from dmlsynth import config as cfg
from dmlsynth.training.build import autocast_dtype, build_run
from dmlsynth.training.loop import train_run
from tests.helpers.training import Interrupted, stop_after


def digits_params(config, device, method="baseline", **training):
    config["training"].update(device=device, **training)
    return cfg.run_params(cfg.validate(config), "digits", method, "multi_similarity", 0)


def test_every_part_of_a_run_is_on_its_device(config, digits_manifest, device):
    run = build_run(digits_params(config, device, method="iaa"), digits_manifest)
    assert run.device.type == device
    assert {p.device.type for p in run.model.parameters()} == {device}
    assert {b.device.type for b in run.method.buffers()} <= {device}
    images, labels = next(run.training_batches())
    assert images.device.type == device and labels.device.type == device
    embeddings, targets = run.embed(run.test_set)
    assert embeddings.device.type == "cpu" and embeddings.dtype == torch.float32  # written to embeddings.npz
    assert len(targets) == len(run.test_set)


# IAA embeds the training set on the device (iaa_official: augmented images); SGAR sends graded features
# through the embedding layer on the device.
@pytest.mark.parametrize("method", ["baseline", "iaa", "iaa_official", "sgar"])
def test_digits_run_trains_on_the_device(config, digits_manifest, tmp_path, device, method):
    if method == "iaa_official":
        method, config["method_params"] = "iaa", {"iaa": {"variant": "official", "start_fraction": 0.0}}
    result = train_run(digits_params(config, device, method=method), digits_manifest, tmp_path / "run", progress=False)
    assert np.isfinite([h["loss"] for h in result["history"]]).all()
    assert torch.isfinite(result["embeddings"]).all()
    environment = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())["environment"]
    assert environment["device"] == device
    if device == "cuda":
        assert environment["gpu"] == torch.cuda.get_device_name(0)


def test_interrupted_run_resumes_on_the_device(config, digits_manifest, tmp_path, device):
    params = digits_params(config, device, epochs=3)
    whole = train_run(params, digits_manifest, tmp_path / "whole", progress=False)
    with pytest.raises(Interrupted):
        train_run(params, digits_manifest, tmp_path / "cut", callbacks=[stop_after(1)], progress=False, identity="run")
    resumed = train_run(params, digits_manifest, tmp_path / "cut", progress=False, identity="run")
    if device == "cpu":
        assert torch.equal(resumed["embeddings"], whole["embeddings"])
    else:  # deterministic algorithms are on; allow for the reductions cuDNN may still order differently
        torch.testing.assert_close(resumed["embeddings"], whole["embeddings"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("setting,expected", [("auto", torch.float16), ("fp16", torch.float16), ("bf16", torch.bfloat16), ("off", None)])
def test_mixed_precision_only_on_cuda(device, setting, expected):
    assert autocast_dtype(setting, torch.device(device)) == (expected if device == "cuda" else None)
