"""Every delta isolates the synthesis: through the training the workflow runs.

- Every method of the registry, with every loss it works with and its synthesis switched off
  (``off_params``), trains bit-identically to its control (``registry.control_label``: baseline
  with the method's loss params): the same loss at every epoch, the same final weights, the same
  test embeddings and metrics.
- Generated images change what a batch holds, never how many steps a run makes: with
  ``batches_per_epoch: null`` (one pass over the training images, as the paper protocol sets it)
  a BLenDeR run makes exactly its control's optimisation steps, and ``run.yaml`` records them and
  the real and generated images its batches held.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import yaml

from dmlsynth import config as cfg
from dmlsynth import registry
from dmlsynth.evaluation import evaluate_run
from dmlsynth.layout import RunFolder
from dmlsynth.training.loop import train_run
from tests.helpers.generated import mirrored_image_set

PAIRS = [(m, l) for m, l in itertools.product(registry.METHODS, registry.LOSSES) if m != "baseline" and registry.METHODS[m].is_compatible(l)]


@pytest.fixture(scope="module")
def image_set(digits_manifest, tmp_path_factory):
    return mirrored_image_set(digits_manifest, tmp_path_factory.mktemp("generated"))


def _train(config, label, loss, folder, manifest, image_set, seed=0):
    params = cfg.run_params(cfg.validate(config), "digits", label, loss, seed)
    synthetic = image_set if registry.METHODS[params["method"]].synthetic_images else None
    result = train_run(params, manifest, folder, synthetic_manifest=synthetic, progress=False)
    return params, result, yaml.safe_load(open(RunFolder(str(folder)).record))


_controls: dict = {}


@pytest.mark.parametrize("method,loss", PAIRS, ids=[f"{m}-{l}" for m, l in PAIRS])
def test_switched_off_every_method_trains_exactly_like_its_control(method, loss, config, digits_manifest, image_set, tmp_path_factory):
    config["training"].update({"epochs": 3, "batches_per_epoch": 2})  # past IAA's warm-up and first estimate
    config["methods"] = list(registry.METHODS)
    config["method_params"] = {method: dict(registry.METHODS[method].off_params)}
    control = registry.control_label(cfg.validate(config), method, loss)
    root = tmp_path_factory.mktemp(f"{method}-{loss}")
    params, result, record = _train(config, method, loss, root / "method", digits_manifest, image_set)
    assert params["control"] == control and params["loss_params"] == registry.loss_params(loss, config, method)
    if (control, loss) not in _controls:  # a control is trained once, like the workflow's
        folder = tmp_path_factory.mktemp(f"control-{loss}")
        _controls[(control, loss)] = (folder, *_train(config, control, loss, folder, digits_manifest, image_set))
    control_folder, control_params, control_result, control_record = _controls[(control, loss)]
    assert control_params["method"] == "baseline" and control_params["loss_params"] == params["loss_params"]

    assert [h["loss"] for h in result["history"]] == [h["loss"] for h in control_result["history"]]
    weights = torch.load(RunFolder(str(root / "method")).model, weights_only=True)["model"]
    control_weights = torch.load(RunFolder(str(control_folder)).model, weights_only=True)["model"]
    assert weights.keys() == control_weights.keys() and all(torch.equal(weights[k], control_weights[k]) for k in weights)
    assert torch.equal(result["embeddings"], control_result["embeddings"])
    assert record["budget"] == control_record["budget"]
    metrics = evaluate_run(root / "method")
    if not (control_folder / "metrics.json").exists():
        evaluate_run(control_folder)
    control_metrics = json.loads((control_folder / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if k != "eval_seconds"} == {k: v for k, v in control_metrics.items() if k != "eval_seconds"}


@pytest.mark.parametrize("synthetic_per_real", [0.5, 2.0])
def test_generated_images_change_what_batches_hold_not_how_many_steps(config, digits_manifest, image_set, tmp_path, synthetic_per_real):
    # One pass over the training images per epoch, as config/paper.yaml sets it.
    config["training"].update({"epochs": 2, "batches_per_epoch": None})
    config["method_params"] = {"blender": {"synthetic_per_real": synthetic_per_real}}
    _, _, blender = _train(config, "blender", "multi_similarity", tmp_path / "blender", digits_manifest, image_set)
    _, _, baseline = _train(config, "baseline", "multi_similarity", tmp_path / "baseline", digits_manifest, image_set)
    real = baseline["train_images"]["real"]
    batches = real // config["training"]["batch_size"]  # one pass over the *real* images
    for record in (blender, baseline):
        assert record["budget"]["batches_per_epoch"] == batches
        assert record["budget"]["optimisation_steps"] == 2 * batches
        seen = record["budget"]["images_seen"]
        assert seen["real"] + seen["generated"] == 2 * batches * config["training"]["batch_size"]
    assert blender["train_images"]["real"] == real and blender["train_images"]["generated"] > 0
    assert baseline["budget"]["images_seen"]["generated"] == 0
    # The batches hold generated images about in proportion to the pool.
    share = blender["budget"]["images_seen"]["generated"] / (2 * batches * config["training"]["batch_size"])
    pool = blender["train_images"]["generated"] / (blender["train_images"]["generated"] + real)
    assert abs(share - pool) < 0.1
