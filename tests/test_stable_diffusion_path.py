"""The `stable-diffusion` generator path, on a tiny random model saved in the diffusers layout.

Components are saved with ``save_pretrained`` into a temporary folder and loaded
through the same ``from_pretrained`` calls a real Stable Diffusion id goes through.
"""

import pandas as pd
import pytest
import torch
from PIL import Image

from dmlsynth.generate.prompts import write_prompts
from dmlsynth.generate.run import generate_class
from dmlsynth.generate.settings import generation_settings
from dmlsynth.generate.stable_diffusion import load_generator

from tests.generation_helpers import save_tiny_stable_diffusion


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def sd_settings(model_dir, **over):
    config = {"methods": ["blender"], "generation": {"digits": {"generator": "stable-diffusion", "model_id": str(model_dir),
              "device": "cpu", "images_per_class": 2, "batch_size": 2, "steps": 2, "scheduler": "ddim", **over}}}
    return generation_settings(config, "digits")


def test_loads_through_from_pretrained_and_generates_rgb_images(model_dir, tmp_path):
    components = load_generator(sd_settings(model_dir), None)
    assert components.vae is not None and components.dtype == torch.float32  # fp16 only on a GPU
    assert components.image_size() == 16  # 8x8 latents, VAE upsamples x2
    prompts = write_prompts(
        {"dataset": "birds", "classes": [
            {"label": 1, "class_name": "001.Black_footed_Albatross", "plain": "a photo of a bird",
             "prompts": ["a photo of a bird", "a photo of a bird, blue wing color", "a photo of a bird, red"]}]},
        tmp_path / "prompts.yaml",
    )
    part = generate_class(components, prompts, 1, [1], ["blender", "plain"], sd_settings(model_dir), tmp_path / "gen", tmp_path / "p.csv")
    assert len(part) == 4 and set(part.image_set) == {"blender", "plain"}
    for image_set, path in zip(part.image_set, part.path):
        with Image.open(tmp_path / "gen" / image_set / path) as image:
            assert image.mode == "RGB" and image.size == (16, 16) and image.format == "JPEG"
    # Same settings, same images.
    again = generate_class(components, prompts, 1, [1], ["blender"], sd_settings(model_dir), tmp_path / "gen2", tmp_path / "p2.csv")
    for path in again.path:
        assert path.endswith(".jpg")
        assert (tmp_path / "gen/blender" / path).read_bytes() == (tmp_path / "gen2/blender" / path).read_bytes()


def test_attention_slicing_and_textual_inversion(model_dir, tmp_path):
    from safetensors.torch import save_file

    width = 16
    save_file({"<bird-1>": torch.randn(width)}, str(tmp_path / "bird1.safetensors"))
    components = load_generator(
        sd_settings(model_dir, attention_slicing="on", textual_inversion={"<bird-1>": str(tmp_path / "bird1.safetensors")}),
        None,
    )
    ids = components.tokenizer("a photo of <bird-1>").input_ids
    assert components.tokenizer.convert_tokens_to_ids("<bird-1>") in ids
    embedding = components.text_encoder.get_input_embeddings().weight
    assert embedding.shape[0] == len(components.tokenizer)
    from dmlsynth.generate.sampler import encode_prompts

    assert encode_prompts(components, ["a photo of <bird-1>"]).shape[-1] == width


def test_missing_model_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_id"):
        load_generator(sd_settings(tmp_path / "nope"), None)


def test_photo_datasets_default_to_stable_diffusion():
    assert generation_settings({"methods": ["blender"]}, "digits")["generator"] == "embedded"
