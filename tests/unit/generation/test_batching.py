"""Choosing the generation batch: the GPU memory model, balanced batches, halving on out-of-memory."""

import logging

import pytest
import torch

from dmlsynth.generation.batching import (
    GIB,
    SAFETY,
    MemoryModel,
    balanced,
    choose_batch_size,
    in_batches,
    measure_memory,
)

# Stable Diffusion 1.5 at 512 px in fp16 as issue #9 measured it: 38 GiB at a UNet batch of 320
# (K = 3, 80 images); ~2.1 GiB of weights, so ~0.11 GiB per sample of the UNet batch.
SD15 = MemoryModel(resident=int(2.1 * GIB), fixed=int(0.3 * GIB), per_sample=int(0.11 * GIB), decode_per_image=int(1.2 * GIB))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("budget_gib", [6, 16, 22, 70])
def test_the_chosen_batch_is_the_largest_within_the_budget(k, budget_gib):
    budget = budget_gib * GIB
    fits = SD15.images_that_fit(budget, k)
    assert fits >= 1
    assert SD15.peak(fits, k) <= budget < SD15.peak(fits + 1, k)


def test_sd15_default_budget_stays_below_20_gib():
    # The default budget (16 GiB) at the measured per-sample memory: 24 blended images per
    # call (UNet batch 96) instead of 80 (320), predicted peak within the budget ...
    fits = SD15.images_that_fit(16 * GIB, 3)
    assert fits == 24
    assert SD15.peak(fits, 3) <= 16 * GIB
    # ... and below 20 GiB even if a sample took 50 % more than measured (twice the margin).
    assert SD15.resident + SD15.fixed + fits * 4 * SD15.per_sample * 1.5 < 20 * GIB
    assert SAFETY == 1.25


def test_decoding_without_slicing_limits_the_batch_too():
    sliced = SD15.images_that_fit(16 * GIB, 1, vae_sliced=True)
    whole = SD15.images_that_fit(16 * GIB, 1, vae_sliced=False)
    assert whole < sliced and whole == int((16 - 2.1) // 1.2)
    assert SD15.peak(whole, 1, vae_sliced=False) <= 16 * GIB


def test_nothing_fits_a_budget_below_the_weights():
    assert SD15.images_that_fit(2 * GIB, 3) == 0
    assert choose_batch_size(80, SD15, 2 * GIB, 3) == 1  # tried one at a time (and halving cannot go lower)


def test_configured_batch_size_is_the_maximum():
    assert choose_batch_size(8, SD15, 70 * GIB, 3) == 8
    assert choose_batch_size(80, SD15, 16 * GIB, 3) == 24
    assert choose_batch_size(80, None, None, 3) == 80  # CPU: no memory model


@pytest.mark.parametrize("count,size", [(150, 35), (150, 150), (7, 3), (1, 80), (10, 1)])
def test_balanced_batches_cover_everything_in_near_equal_sizes(count, size):
    sizes, left = [], count
    while left:
        sizes.append(balanced(left, size))
        left -= sizes[-1]
    assert sum(sizes) == count and max(sizes) <= size and max(sizes) - min(sizes) <= 1
    assert len(sizes) == -(-count // size)  # no more batches than the maximum size needs
    if (count, size) == (150, 35):
        assert sizes == [30] * 5


def fails_above(limit, calls):
    def run(start, stop):
        calls.append((start, stop))
        if stop - start > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(range(start, stop))

    return run


def test_out_of_memory_halves_the_batch_and_logs_it(caplog):
    calls = []
    with caplog.at_level(logging.WARNING, logger="dmlsynth.generation.batching"):
        done = list(in_batches(20, 16, fails_above(5, calls)))
    # 20 -> two of 10 (too many) -> halved to 5: four of 5, later batches keep the halved size.
    assert calls == [(0, 10), (0, 5), (5, 10), (10, 15), (15, 20)]
    assert [r for _, _, result in done for r in result] == list(range(20))
    assert [m for m in caplog.messages if "halving" in m] == ["out of GPU memory with 10 images at once; halving the batch to 5"]


def test_out_of_memory_for_one_image_says_what_to_change():
    with pytest.raises(torch.OutOfMemoryError, match="single image.*attention_slicing: on.*gpu_memory_gib"):
        list(in_batches(4, 4, fails_above(0, [])))


def test_other_errors_are_not_retried():
    def broken(start, stop):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(in_batches(4, 4, broken))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_measured_memory_model_bounds_a_real_sampler_call(tmp_path):
    """On a GPU: the measured model predicts at least the real peak of a sampler call at a chosen batch.

    A UNet with 32x32 latents and 64/128 channels in fp16, so that activations, which the model
    measures, outweigh the per-image kilobytes it covers with its margin (as at SD shapes).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from dmlsynth.generation.batching import memory_budget
    from dmlsynth.generation.sampler import Components, encode_prompts, sample

    from tests.helpers.generation import tiny_text

    tokenizer, text_encoder = tiny_text(tmp_path / "tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    vae.enable_slicing()
    half = dict(device="cuda", dtype=torch.float16)
    components = Components(
        unet.to(**half).eval(), text_encoder.to(**half).eval(), tokenizer,
        DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False), vae=vae.to(**half).eval(),
    )  # fmt: skip
    unconditional = encode_prompts(components, [""])[0]
    model = measure_memory(components, unconditional)
    assert model.resident > 0 and model.per_sample > 0 and model.decode_per_image > 0
    assert model.resident + model.fixed < memory_budget(None, components.device)
    k = 3
    for images in (4, 24):
        conditions = encode_prompts(components, ["a photo of a bird"] * k).unsqueeze(1).expand(k, images, -1, -1)
        noise = torch.randn(images, *components.latent_shape, generator=torch.Generator().manual_seed(0))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        sample(components, conditions, unconditional, ["union"] * images, noise, guidance_scale=7.5, steps=2,
               scheduler="dpm-solver", intersection_rule="principal_component", guidance_norm="none")
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() <= model.peak(images, k), images
