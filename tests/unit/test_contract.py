"""dmlsynth.contract (``dmlsynth check-method``) finds each broken rule a plugin method can break, and says
what to fix; on the built-in methods the contract tests (test_registry_contract.py) run the same checks."""

from __future__ import annotations

import pytest
import torch

from dmlsynth import contract, registry
from dmlsynth.cli import main
from dmlsynth.methods import Method


class NotOffWhenOff(Method):
    """Switched off, still nudges the embeddings: not its control."""

    def forward(self, embeddings, labels, features=None):
        noise = torch.randn(embeddings.shape, generator=self.context.generator)
        return self.base_loss(embeddings + 1e-3 * noise * (1 + self.params["strength"]), labels)


class ForgetsOnResume(Method):
    """Keeps a step count in a plain attribute (not a buffer): a resumed run starts it again."""

    def __init__(self, *args):
        super().__init__(*args)
        self.steps = 0

    def forward(self, embeddings, labels, features=None):
        self.steps += 1
        scale = 1.0 + 0.1 * self.steps * self.params["strength"]
        return scale * self.base_loss(embeddings, labels)


class Fine(Method):
    """Correct: its state in a buffer, its draws from the method's stream, nothing when off."""

    def __init__(self, *args):
        super().__init__(*args)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, embeddings, labels, features=None):
        if self.params["strength"] == 0:
            return self.base_loss(embeddings, labels)
        self.steps += 1
        noise = torch.randn(embeddings.shape, generator=self.context.generator)
        return (1.0 + 0.1 * self.steps) * self.base_loss(embeddings + 0.01 * noise, labels)


def register(monkeypatch, name, cls):
    spec = registry.MethodSpec(
        name=name, module=f"{__name__}:{cls.__name__}", description="a test method",
        compatible_losses=frozenset({"triplet"}), params_schema={"strength": {"type": "number"}},
        defaults={"strength": 1.0}, off_params={"strength": 0.0},
    )  # fmt: skip
    monkeypatch.setitem(registry.METHODS, name, spec)  # the schema, built from the registry, follows


def failed(results):
    return {r.check.split(": ", 1)[1]: r.detail for r in results if not r.passed}


def test_a_method_that_is_not_its_control_when_off_fails_that_check_alone(monkeypatch):
    register(monkeypatch, "not_off", NotOffWhenOff)
    found = failed(contract.check_method("not_off"))
    assert list(found) == ["off params train bit-identically to the control"]
    assert "differ from the control" in found["off params train bit-identically to the control"]
    assert "call exactly base_loss" in found["off params train bit-identically to the control"]


def test_state_outside_the_buffers_fails_the_resume_check(monkeypatch):
    register(monkeypatch, "forgets", ForgetsOnResume)
    found = failed(contract.check_method("forgets"))
    assert list(found) == ["checkpoint and resume give the same numbers"]
    assert "registered buffers" in found["checkpoint and resume give the same numbers"]


def test_a_correct_method_passes_and_the_command_says_so(monkeypatch, capsys):
    register(monkeypatch, "fine", Fine)
    assert failed(contract.check_method("fine")) == {}
    assert main(["check-method", "fine"]) == 0
    out = capsys.readouterr().out
    assert "PASS  fine + triplet: off params train bit-identically to the control" in out
    assert "fine: 5 of 5 checks passed" in out


def test_the_command_fails_with_status_1_and_a_fail_line(monkeypatch, capsys):
    register(monkeypatch, "not_off", NotOffWhenOff)
    assert main(["check-method", "not_off"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  not_off + triplet: off params train bit-identically to the control" in out
    assert "1 failed" in out


def test_an_unknown_name_fails_with_the_known_names(capsys):
    assert main(["check-loss", "no_such_loss"]) == 1
    assert "no such loss; known:" in capsys.readouterr().out


def test_check_dataset_prepares_an_image_folder_and_compares_it_with_its_entry(monkeypatch, tmp_path):
    from PIL import Image

    for name in ("a", "b", "c", "d"):
        (tmp_path / "in" / name).mkdir(parents=True)
        for index in range(2):
            Image.new("L", (8, 8), 10 * index).save(tmp_path / "in" / name / f"{index}.png")
    spec = registry.DatasetSpec(
        name="folder", prepare="dmlsynth.data.image_folder:prepare", num_classes=4, train_classes=2, image_mode="L",
        default_backbone="small_cnn", default_embedding_dim=8, default_image_size=8, description="a test folder",
    )  # fmt: skip
    monkeypatch.setitem(registry.DATASETS, "folder", spec)
    config = {"dataset_settings": {"folder": {"root": str(tmp_path / "in")}}}
    assert failed(contract.check_dataset("folder", config)) == {}
    monkeypatch.setitem(registry.DATASETS, "folder", registry.DatasetSpec(**{**spec.__dict__, "num_classes": 6, "train_classes": 3}))
    found = failed(contract.check_dataset("folder", config))
    assert "4 classes (2 train), its DatasetSpec says 6 (3 train)" in found["prepares into a manifest that matches its entry"]
    (tmp_path / "in" / "d" / "1.png").unlink()  # a single-image class
    found = failed(contract.check_dataset("folder", config))
    assert "fewer than 2 images (no positive pair): d (1)" in found["prepares into a manifest that matches its entry"]


def build_plugin_loss(params, num_classes, embedding_dim):
    """A plugin's loss builder (LossSpec.build): pml's triplet loss with its own margin."""
    from pytorch_metric_learning import losses

    from dmlsynth.losses import BaseLoss

    return BaseLoss("plugin_triplet", losses.TripletMarginLoss(margin=params["margin"]), None)


def build_not_a_base_loss(params, num_classes, embedding_dim):
    return torch.nn.MSELoss()


def test_a_plugin_loss_trains_through_its_builder_and_a_wrong_builder_fails(monkeypatch):
    from dmlsynth.losses import build_loss

    spec = registry.LossSpec(
        "plugin_triplet", True, {"margin": 0.3}, "a plugin loss", build=f"{__name__}:build_plugin_loss",
        params_schema={"margin": {"type": "number", "minimum": 0}},
    )  # fmt: skip
    monkeypatch.setitem(registry.LOSSES, "plugin_triplet", spec)
    assert build_loss("plugin_triplet", {"margin": 0.2}, 4, 8).loss.margin == 0.2
    assert failed(contract.check_loss("plugin_triplet")) == {}
    from dmlsynth.config import _schema

    assert "margin" in _schema()["properties"]["loss_params"]["properties"]["plugin_triplet"]["properties"]
    # Every method that takes every loss takes it too (iaa: compatible_losses None).
    assert any(r.check.startswith("iaa + plugin_triplet") for r in contract.check_method("iaa"))
    monkeypatch.setitem(registry.LOSSES, "plugin_triplet", registry.LossSpec(
        "plugin_triplet", True, {"margin": 0.3}, "a plugin loss", build=f"{__name__}:build_not_a_base_loss"))  # fmt: skip
    assert "not a dmlsynth.losses.BaseLoss" in failed(contract.check_loss("plugin_triplet"))["builds a BaseLoss"]


def test_a_plugin_method_that_breaks_the_contract_does_not_train(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from dmlsynth import plugins
    from dmlsynth.commands import train

    register(monkeypatch, "not_off", NotOffWhenOff)
    monkeypatch.setitem(plugins.INSTALLED, ("methods", "not_off"), plugins.Plugin("methods", "not_off", "bad-plugin", "0.3", "x:Y"))
    monkeypatch.setattr("dmlsynth.training.loop.train_run", lambda *a, **k: pytest.fail("it trained"))
    job = SimpleNamespace(params={"method": "not_off", "loss": "triplet"}, stale=(), outputs={"record": str(tmp_path / "run.yaml")})
    with pytest.raises(plugins.PluginError) as error:
        train.run(job)
    assert "method 'not_off' of bad-plugin 0.3 breaks the contract with loss 'triplet'" in str(error.value)
    assert "FAIL  not_off + triplet: off params train bit-identically to the control" in str(error.value)
    contract.gate("fine_builtin_is_skipped", "triplet")  # not a plugin: no checks here (the project's tests run them)
