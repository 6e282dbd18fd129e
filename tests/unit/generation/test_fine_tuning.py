"""Per-class fine-tuning (LoRA + textual inversion) of a tiny random Stable Diffusion, then generation with it."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dmlsynth import layout
from dmlsynth.generation.fine_tuning import (
    FineTuningError,
    adapter_settings,
    class_images,
    class_token,
    entry_with_token,
    fine_tune_class,
)
from dmlsynth.generation.generators import load_generator
from dmlsynth.generation.prompts import write_prompts
from dmlsynth.generation.run import generate_class
from dmlsynth.generation.settings import generation_settings, images_generated
from dmlsynth.config import filled

from tests.helpers.generation import save_tiny_stable_diffusion

pytest.importorskip("peft")

ENTRY = {
    "label": 3, "class_name": "003.Sooty_Albatross", "plain": "a photo of a bird",
    "prompts": ["a photo of a bird", "a photo of a bird, blue wing color", "a photo of a bird, red"],
}  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class3")
    rng = np.random.default_rng(0)
    files = []
    for i, size in enumerate([(20, 24), (24, 20), (16, 16)]):  # not square, not the model's size: resized and cropped
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    return files


def settings_for(model_dir, device="cpu", **tuning):
    fine_tuning = {"method": "both", "steps": 4, "rank": 2, "learning_rate": 0.01, "embedding_learning_rate": 0.05,
                   "batch_size": 2, "checkpoint_every": 2, **tuning}  # fmt: skip
    config = {"methods": ["blender"], "generation": {"cub200": {
        "generator": "stable-diffusion", "model_id": str(model_dir), "device": device, "images_per_class": 2,
        "batch_size": 2, "steps": 2, "scheduler": "ddim", "fine_tuning": fine_tuning}}}  # fmt: skip
    return generation_settings(filled(config), "cub200")


def test_fine_tuned_class_generates_with_its_lora_and_token(model_dir, images, tmp_path, device):
    settings = settings_for(model_dir, device)
    out = tmp_path / "class0"
    summary = fine_tune_class(settings, images, ENTRY, "cub200", 3, out, tmp_path / "ckpt.pt")

    token = class_token("cub200", 3)
    assert summary["token"] == token == "<cub200-3>" and summary["device"].startswith(device)
    assert summary["files"] == {"textual_inversion": layout.FINE_TUNED_EMBEDDING, "lora": layout.FINE_TUNED_LORA}
    assert len(summary["losses"]) == 4 and all(np.isfinite(summary["losses"])) and summary["seconds"] > 0
    assert summary["resolution"] == 16 and summary["images"] == 3  # the tiny model's native size
    assert not (tmp_path / "ckpt.pt").exists()  # removed once the outputs are complete
    embedding = load_file(out / layout.FINE_TUNED_EMBEDDING)
    assert list(embedding) == [token] and embedding[token].shape == (16,)
    lora = load_file(out / layout.FINE_TUNED_LORA)
    assert lora and all(k.startswith("unet.") and "lora" in k for k in lora)
    assert any(torch.count_nonzero(v) for k, v in lora.items() if "lora.up" in k or "lora_B" in k)  # B starts at zero

    base = load_generator(settings, None)
    loaded_settings, loaded_token = adapter_settings(settings, out)
    tuned = load_generator(loaded_settings, None)
    assert loaded_token == token
    token_id = tuned.tokenizer.convert_tokens_to_ids(token)
    assert token_id in tuned.tokenizer(f"{token}, a photo of a bird").input_ids
    row = tuned.text_encoder.get_input_embeddings().weight[token_id].float().cpu()
    torch.testing.assert_close(row, embedding[token])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(base.device)
    h = torch.randn(1, 12, 16, generator=torch.Generator().manual_seed(1)).to(base.device)
    with torch.no_grad():
        assert not torch.allclose(tuned.unet(x, 10, h).sample, base.unet(x, 10, h).sample)  # the LoRA is fused in

    prompts = write_prompts({"dataset": "cub200", "classes": [ENTRY]}, tmp_path / "prompts.yaml")
    part = generate_class(tuned, prompts, 3, [3], ["blender", "plain"], loaded_settings, tmp_path / "gen",
                          tmp_path / "part.csv", class_token=loaded_token)  # fmt: skip
    # Two sets, each its budget plus the filter's extra images.
    assert len(part) == 2 * images_generated(loaded_settings) and all(token in prompts for prompts in part.prompts)


def test_deterministic_restartable_and_not_redone(model_dir, images, tmp_path, caplog):
    settings = settings_for(model_dir)
    whole = fine_tune_class(settings, images, ENTRY, "cub200", 3, tmp_path / "whole", tmp_path / "whole.pt", identity="job")

    class Killed(Exception):
        pass

    def kill_after_checkpoint(step):  # called after each checkpoint: step 2 of 4
        raise Killed

    checkpoint = tmp_path / "resumed.pt"
    with pytest.raises(Killed):
        fine_tune_class(settings, images, ENTRY, "cub200", 3, tmp_path / "resumed", checkpoint, [kill_after_checkpoint], identity="job")
    assert torch.load(checkpoint, weights_only=True)["step"] == 2 and not (tmp_path / "resumed").exists()
    with caplog.at_level(logging.INFO, logger="dmlsynth.generation.fine_tuning"):
        resumed = fine_tune_class(settings, images, ENTRY, "cub200", 3, tmp_path / "resumed", checkpoint, identity="job")
    assert "resuming class 3 from step 2 of 4" in caplog.text
    # The resumed run took exactly the uninterrupted run's steps: same losses, same weights.
    assert resumed["losses"] == whole["losses"]
    for name in (layout.FINE_TUNED_LORA, layout.FINE_TUNED_EMBEDDING):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A checkpoint of another device (or code) is not resumed.
    with pytest.raises(Killed):
        fine_tune_class(settings, images, ENTRY, "cub200", 3, tmp_path / "other", checkpoint, [kill_after_checkpoint], identity="job")
    saved = torch.load(checkpoint, weights_only=True)
    torch.save({**saved, "device": "cuda:0"}, checkpoint)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dmlsynth.generation.fine_tuning"):
        other = fine_tune_class(settings, images, ENTRY, "cub200", 3, tmp_path / "other", checkpoint, identity="job")
    assert "of another job, other inputs or another device; starting over" in caplog.text and other["losses"] == whole["losses"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dmlsynth.generation.fine_tuning"):
        again = fine_tune_class(settings, images, ENTRY, "cub200", 3, tmp_path / "whole", tmp_path / "whole.pt", identity="job")
    assert "not redone" in caplog.text and again == whole
    # Another job (other params): trained again (another class token, only LoRA weights).
    lora_only = fine_tune_class(settings_for(model_dir, method="lora", steps=2), images, ENTRY, "cub200", 3,
                                tmp_path / "whole", tmp_path / "whole.pt", identity="job-lora")  # fmt: skip
    assert lora_only["token"] is None and lora_only["files"] == {"lora": layout.FINE_TUNED_LORA}
    assert adapter_settings(settings, tmp_path / "whole")[1] is None  # no token: the prompts stay as they are


def test_textual_inversion_changes_only_the_token_row(model_dir, images, tmp_path):
    settings = settings_for(model_dir, method="textual_inversion", steps=3)
    summary = fine_tune_class(settings, images, ENTRY, "cub200", 3, tmp_path / "ti", tmp_path / "ti.pt")
    assert summary["files"] == {"textual_inversion": layout.FINE_TUNED_EMBEDDING}
    base = load_generator(settings, None)
    tuned = load_generator(adapter_settings(settings, tmp_path / "ti")[0], None)
    before = base.text_encoder.get_input_embeddings().weight
    after = tuned.text_encoder.get_input_embeddings().weight
    assert after.shape[0] == before.shape[0] + 1 and torch.equal(after[:-1], before)
    # It started at the mean embedding of the class name's tokens and moved away from it.
    name_ids = base.tokenizer("Sooty Albatross", add_special_tokens=False).input_ids
    assert not torch.allclose(after[-1], before[name_ids].mean(0))
    for name, parameter in base.unet.named_parameters():  # no LoRA: the UNet is the base model's
        assert torch.equal(parameter, dict(tuned.unet.named_parameters())[name])


def test_only_training_images_of_the_class():
    frame = pd.DataFrame({"file": ["a.jpg", "b.jpg", "c.jpg"], "label": [1, 1, 2], "split": ["train"] * 3})
    assert class_images(frame, 1) == ["a.jpg", "b.jpg"]
    with pytest.raises(FineTuningError, match="no training images"):
        class_images(frame, 7)
    with pytest.raises(FineTuningError, match="training images only"):
        class_images(frame.assign(split=["train", "train", "test"]), 1)


def test_token_goes_in_front_of_every_prompt():
    tokened = entry_with_token(ENTRY, "<cub200-3>")
    assert tokened["plain"] == "<cub200-3>, a photo of a bird"
    assert tokened["prompts"][1] == "<cub200-3>, a photo of a bird, blue wing color"
    assert entry_with_token(ENTRY, None) == ENTRY


def test_nothing_to_fine_tune_is_explained(model_dir, images, tmp_path):
    with pytest.raises(FineTuningError, match="nothing to fine-tune"):
        fine_tune_class(settings_for(model_dir, method="none"), images, ENTRY, "cub200", 3, tmp_path / "x", tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="fine-tune the class first"):
        adapter_settings(settings_for(model_dir), tmp_path / "missing")
