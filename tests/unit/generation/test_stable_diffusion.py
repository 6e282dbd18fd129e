"""The `stable-diffusion` generator path, on a tiny random model saved in the diffusers layout.

Components are saved with ``save_pretrained`` into a temporary folder and loaded
through the same ``from_pretrained`` calls a real Stable Diffusion id goes through.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from dmlsynth.generation.prompts import write_prompts
from dmlsynth.generation.run import generate_class
from dmlsynth.generation.settings import generation_settings
from dmlsynth.generation.generators import load_generator
from dmlsynth.config import filled

from tests.helpers.generation import save_tiny_stable_diffusion


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def sd_settings(model_dir, **over):
    config = {"methods": ["blender"], "generation": {"digits": {"generator": "stable-diffusion", "model_id": str(model_dir),
              "device": "cpu", "images_per_class": 2, "batch_size": 2, "steps": 2, "scheduler": "ddim",
              "filter": {"scorer": "none"}, **over}}}
    return generation_settings(filled(config), "digits")


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
    from dmlsynth.generation.sampler import encode_prompts

    assert encode_prompts(components, ["a photo of <bird-1>"]).shape[-1] == width


def test_missing_model_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_id"):
        load_generator(sd_settings(tmp_path / "nope"), None)


def test_photo_datasets_default_to_stable_diffusion():
    assert generation_settings(filled({"methods": ["blender"]}), "digits")["generator"] == "embedded"


def bird_prompts(path):
    return write_prompts(
        {"dataset": "birds", "classes": [
            {"label": 1, "class_name": "001.Black_footed_Albatross", "plain": "a photo of a bird",
             "prompts": ["a photo of a bird", "a photo of a bird, blue wing color", "a photo of a bird, red"]}]},
        path,
    )  # fmt: skip


def test_generates_in_fp16_on_cuda(device, model_dir, tmp_path, caplog):
    """fp16 on CUDA (fp32 on the CPU), VAE slicing on a GPU, finite, varied images through generate_class."""
    import logging

    from dmlsynth.generation.sampler import encode_prompts, sample

    settings = sd_settings(model_dir, device=device, fp16=True, images_per_class=3, batch_size=3, scheduler="dpm-solver")
    with caplog.at_level(logging.INFO, logger="dmlsynth.generation"):
        components = load_generator(settings, None, ["blender", "plain"])
        part = generate_class(components, bird_prompts(tmp_path / "p.yaml"), 1, [1], ["blender", "plain"], settings,
                              tmp_path / "gen", tmp_path / "part.csv")  # fmt: skip
    expected = torch.float16 if device == "cuda" else torch.float32
    assert components.device.type == device and components.dtype == expected
    assert components.text_encoder.dtype == expected and components.vae.dtype == expected
    assert components.vae.use_slicing == (device == "cuda")
    assert f"on {device}" in caplog.text and str(expected) in caplog.text
    if device == "cuda":
        assert "GPU memory model" in caplog.text and "predicted peak" in caplog.text
    assert len(part) == 6
    arrays = [np.asarray(Image.open(tmp_path / "gen" / s / p)) for s, p in zip(part.image_set, part.path)]
    assert all(a.shape == (16, 16, 3) for a in arrays) and np.std(np.stack(arrays)) > 1
    # No NaN/inf from half precision: the floats before uint8 conversion are finite.
    unconditional = encode_prompts(components, [""])[0]
    conditions = encode_prompts(components, ["a photo of a bird, red"]).unsqueeze(1).expand(1, 2, -1, -1)
    images = sample(components, conditions, unconditional, ["conjunction"] * 2,
                    torch.randn(2, *components.latent_shape), guidance_scale=7.5, steps=3, scheduler="ddim",
                    intersection_rule="principal_component", guidance_norm="none")  # fmt: skip
    assert torch.isfinite(images).all()


def test_latent_images_do_not_depend_on_the_batch(model_dir):
    """With a VAE the batch changes float sums by ~1e-6 (CPU, 1 thread), far below one uint8 level (1/127.5)."""
    from dmlsynth.generation.sampler import encode_prompts, sample

    components = load_generator(sd_settings(model_dir), None)
    k, n = 3, 4
    embedded = encode_prompts(components, ["a photo of a bird", "a photo of a bird, red", "a photo of a bird, blue wing color"])
    cond = embedded.unsqueeze(1).expand(k, n, -1, -1) + 0.1 * torch.randn(k, n, *embedded.shape[1:], generator=torch.Generator().manual_seed(1))
    uncond = encode_prompts(components, [""])[0]
    noise = torch.randn(n, *components.latent_shape, generator=torch.Generator().manual_seed(0))
    ops = ["union", "intersection"] * 2
    options = dict(guidance_scale=7.5, steps=3, scheduler="dpm-solver", intersection_rule="principal_component", guidance_norm="none")
    whole = sample(components, cond, uncond, ops, noise, **options)
    halves = torch.cat([sample(components, cond[:, s : s + 2], uncond, ops[s : s + 2], noise[s : s + 2], **options)
                        for s in (0, 2)])  # fmt: skip
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=0)


def test_speed_settings_resolve_per_device(model_dir):
    from dmlsynth.generation.generators import (
        COMPILE_MIN_SAMPLE_STEPS,
        unet_sample_steps,
        wants_compile,
        wants_vae_slicing,
    )

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert wants_vae_slicing("auto", cuda) and not wants_vae_slicing("auto", cpu)
    assert wants_vae_slicing(True, cpu) and not wants_vae_slicing("off", cuda)  # YAML's unquoted on/off too
    # A class job: (K + 1) UNet samples per image of each set x images x steps.
    paper = {**sd_settings(model_dir), "images_per_class": 150, "steps": 25, "prompts_per_image": 3}
    assert unet_sample_steps(paper, ["blender", "union", "intersection", "plain"]) == (4 + 4 + 4 + 2) * 150 * 25
    assert not wants_compile("auto", cuda, (4 + 4 + 4 + 2) * 188 * 25)  # the paper config's class job (150 + 25 % extra) does not repay compiling
    assert wants_compile("auto", cuda, COMPILE_MIN_SAMPLE_STEPS) and not wants_compile("auto", cpu, 10**9)
    assert wants_compile("on", cpu, 0) and not wants_compile(False, cuda, 10**9)


def test_compile_failure_falls_back_to_the_uncompiled_unet(model_dir, caplog):
    import logging

    from dmlsynth.generation.generators import CompiledUNet

    components = load_generator(sd_settings(model_dir), None)
    unet = components.unet
    x, h = torch.randn(2, 4, 8, 8), torch.randn(2, 12, 16)
    with torch.no_grad():
        reference = unet(x, 10, encoder_hidden_states=h).sample

        def broken_compiler(module):
            def call(*args, **kwargs):
                raise RuntimeError("inductor: no C++ compiler found")

            return call

        wrapped = CompiledUNet(unet, compiler=broken_compiler)
        assert wrapped.config is unet.config and next(wrapped.parameters()) is next(unet.parameters())
        with caplog.at_level(logging.WARNING, logger="dmlsynth.generation.stable_diffusion"):
            out = wrapped(x, 10, encoder_hidden_states=h).sample
        assert torch.equal(out, reference) and "running it uncompiled" in caplog.text

        def out_of_memory(module):
            def call(*args, **kwargs):
                raise torch.OutOfMemoryError("CUDA out of memory")

            return call

        with pytest.raises(torch.OutOfMemoryError):  # left to the batch halving, not mistaken for a compiler failure
            CompiledUNet(unet, compiler=out_of_memory)(x, 10, encoder_hidden_states=h)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_compiled_unet_generates_the_uncompiled_images_on_cuda(model_dir, tmp_path):
    settings = sd_settings(model_dir, device="cuda", fp16=False, images_per_class=2, batch_size=2)
    prompts = bird_prompts(tmp_path / "p.yaml")
    eager = load_generator({**settings, "compile": "off"}, None, ["union"])
    compiled = load_generator({**settings, "compile": "on"}, None, ["union"])
    assert type(compiled.unet).__name__ == "CompiledUNet" and compiled.unet._compiled is not None
    a = generate_class(eager, prompts, 1, [1], ["union"], settings, tmp_path / "a", tmp_path / "a.csv")
    b = generate_class(compiled, prompts, 1, [1], ["union"], settings, tmp_path / "b", tmp_path / "b.csv")
    assert compiled.unet._compiled is not None  # compiled, no fallback
    assert list(b.path) == list(a.path)
    for path in a.path:
        x = np.asarray(Image.open(tmp_path / "a/union" / path), dtype=int)
        y = np.asarray(Image.open(tmp_path / "b/union" / path), dtype=int)
        assert np.abs(x - y).mean() < 2  # same images up to float order (JPEG of near-equal pixels)
