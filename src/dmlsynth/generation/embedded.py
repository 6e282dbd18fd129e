"""The embedded generator: a small prompt-conditioned pixel diffusion model.

A diffusers ``UNet2DConditionModel`` conditioned on a small ``CLIPTextModel``
(the same component set as Stable Diffusion, minus the VAE), both trained
from scratch, jointly, on the **training classes only** of a grayscale
dataset (the embedded digits). Captions are built from the class name and
the attributes measured on each image (:mod:`dmlsynth.generation.prompts`);
each attribute phrase is kept with probability ``attribute_keep`` and the
whole caption is dropped with probability ``caption_dropout`` so the model
also learns the unconditional prediction classifier-free guidance needs.

It trains on the configured device (``generation.<dataset>.device``: CUDA
when present with ``auto``) and, on the CPU, with the job's threads. Weights
are initialised and every random draw (batches, captions, noise, timesteps)
is made on the CPU from the seed, whatever the device, so the same seed
gives the same generator on the CPU for a given thread count (a GPU run
draws the same numbers and differs only by float arithmetic).

The trained model is saved in the diffusers folder layout (``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/`` with safetensors weights)
plus ``generator.json``; :func:`load_embedded` loads it through the same
``from_pretrained`` calls as Stable Diffusion.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dmlsynth import layout
from dmlsynth.device import pick_device
from dmlsynth.errors import DmlsynthError
from dmlsynth.generation.prompts import (
    DIGIT_ATTRIBUTES,
    digit_caption,
    digit_measurements,
    digit_words,
    load_gray_images,
    tertile_thresholds,
)
from dmlsynth.generation.sampler import Components
from dmlsynth.generation.tokenizer import build_tokenizer

log = logging.getLogger("dmlsynth.generation.embedded")

METADATA = layout.GENERATOR_METADATA

def all_caption_texts(class_names: list[str]) -> list[str]:
    """Every word a caption or a prompt of these classes can contain (the tokenizer's vocabulary)."""
    phrases = [p for words in DIGIT_ATTRIBUTES.values() for p in words]
    return [digit_caption(name, phrases) for name in class_names]


def build_models(params: Mapping[str, Any], vocab_size: int, image_size: int, channels: int):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    width = int(params["text_width"])
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=int(params["text_layers"]),
            num_attention_heads=max(1, width // 32),
            max_position_embeddings=int(params["max_tokens"]),
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    blocks = [int(c) for c in params["unet_channels"]]
    unet = UNet2DConditionModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=tuple(blocks),
        # Cross-attention on the text only at the lowest resolution (and the mid block): at 8x8 px
        # that is where class and attributes are decided, and it costs a third less than everywhere.
        down_block_types=("DownBlock2D",) * (len(blocks) - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (len(blocks) - 1),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=int(params["train_timesteps"]), beta_schedule="squaredcos_cap_v2", clip_sample=False
    )
    return unet, text_encoder, scheduler


class GeneratorDiverged(DmlsynthError, FloatingPointError):
    """The embedded generator's loss became NaN or infinite."""


def training_captions(
    train_frame: pd.DataFrame, words: pd.DataFrame, keep: float, dropout: float, rng: np.random.Generator
) -> list[str]:
    """One caption per image: class name + each of its attribute phrases kept with probability ``keep``."""
    captions = []
    names = train_frame["class_name"].tolist()
    for i, name in enumerate(names):
        if rng.random() < dropout:
            captions.append("")
            continue
        phrases = [words.iloc[i][attr] for attr in DIGIT_ATTRIBUTES if rng.random() < keep]
        captions.append(digit_caption(name, phrases))
    return captions


def _fit(
    unet, text_encoder, noise_scheduler, tokenizer, pixels: torch.Tensor, train_frame: pd.DataFrame, words: pd.DataFrame,
    params: Mapping[str, Any], seed: int, rng: np.random.Generator, device: torch.device,
) -> list[float]:  # fmt: skip
    """The denoising training of the UNet and text encoder; returns the loss of every step."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=float(params["lr"]), weight_decay=1e-4)
    steps = int(params["train_steps"])
    schedule = get_cosine_schedule_with_warmup(optimizer, int(params["warmup_steps"]), steps)
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(int(params["batch_size"]), len(train_frame))
    unet.train()
    text_encoder.train()
    losses = []
    # Captions are re-drawn every pass over the data so each image is seen with varying attribute subsets.
    tokens = torch.empty(0, dtype=torch.long)
    order = np.empty(0, dtype=int)
    cursor = 0
    for step in range(steps):
        if cursor + batch_size > len(order):
            order = rng.permutation(len(train_frame))
            captions = training_captions(
                train_frame, words, float(params["attribute_keep"]), float(params["caption_dropout"]), rng
            )
            # One tokenizer call per pass (padded to the same length, so the ids are those of a per-batch call).
            tokens = tokenizer(
                captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)  # fmt: skip
            cursor = 0
        index = order[cursor : cursor + batch_size]
        cursor += batch_size
        clean = pixels[index]
        # Drawn on the CPU from the seed: the same noise and timesteps on every device.
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        timesteps = timesteps.to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        hidden = text_encoder(tokens[torch.as_tensor(index, device=device)])[0]
        prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))  # one host sync per step (the loss is tiny)
        if not np.isfinite(losses[-1]):
            raise GeneratorDiverged(f"generator loss became {losses[-1]} at step {step}; lower generation lr")
        if (step + 1) % max(1, steps // 10) == 0:
            log.info("generator step %d/%d loss %.4f", step + 1, steps, float(np.mean(losses[-100:])))
    return losses


def train_embedded(
    train_frame: pd.DataFrame,
    out_dir: str | Path,
    settings: Mapping[str, Any] | None = None,
    seed: int = 0,
    threads: int = 1,
    image_size: int = 8,
    device: str | torch.device = "cpu",
    identity: str | None = None,
) -> dict[str, Any]:
    """Train the embedded generator on ``train_frame`` (training split only) on ``device`` and save it to ``out_dir``.

    ``identity``: that of its ``train_generator`` job, recorded in the folder's metadata.

    ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or a torch device. The folder appears
    complete or not at all (it is written as ``<out_dir>.partial``, then renamed).
    """
    if train_frame.empty or set(train_frame["split"]) != {"train"}:
        raise ValueError("the embedded generator trains on the training split only (got splits "
                         f"{sorted(set(train_frame['split']))})")
    # 1. Threads, seeds, the staging folder.
    started = time.perf_counter()
    params = dict(settings)  # generation.<dataset>.embedded, resolved with the registry's defaults
    device = pick_device(str(device), "generation.<dataset>.device")
    torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    # 2. The images, their measured attribute words and the tokenizer of the captions.
    train_frame = train_frame.reset_index(drop=True)
    images = load_gray_images(train_frame["file"].tolist(), size=image_size)
    measurements = digit_measurements(images)
    thresholds = tertile_thresholds(measurements)
    words = digit_words(measurements, thresholds)
    class_names = sorted(set(train_frame["class_name"]))
    tokenizer = build_tokenizer(all_caption_texts(class_names), staging / "tokenizer", int(params["max_tokens"]))

    # 3. The models: built (and initialised from the seed) on the CPU, then moved: the same start on every device.
    unet, text_encoder, noise_scheduler = build_models(params, len(tokenizer), image_size, channels=1)
    unet, text_encoder = unet.to(device), text_encoder.to(device)
    pixels = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1).to(device)  # (N, 1, H, W) in [-1, 1]

    # 4. Training.
    losses = _fit(unet, text_encoder, noise_scheduler, tokenizer, pixels, train_frame, words, params, seed, rng, device)

    # 5. The weights and what made them, then the folder in place.
    unet.to("cpu").save_pretrained(staging / "unet")
    text_encoder.to("cpu").save_pretrained(staging / "text_encoder")
    tokenizer.save_pretrained(staging / "tokenizer")
    noise_scheduler.save_pretrained(staging / "scheduler")
    metadata = {
        "kind": "embedded",
        "image_size": image_size,
        "image_channels": 1,
        "classes": {str(int(l)): n for l, n in sorted(set(zip(train_frame["label"], train_frame["class_name"])))},
        "attribute_thresholds": thresholds,
        "params": params,
        "identity": identity,  # of its train_generator job (dmlsynth.jobs.Job.identity); None outside a job
        "seed": seed,
        "device": str(device),
        "threads": int(threads) if device.type == "cpu" else None,
        "train_images": len(train_frame),
        "final_loss": float(np.mean(losses[-100:])),
        "seconds": round(time.perf_counter() - started, 3),
    }
    (staging / METADATA).write_text(json.dumps(metadata, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    log.info(
        "embedded generator trained on %s in %.1fs (final loss %.4f) -> %s",
        device, metadata["seconds"], metadata["final_loss"], out_dir,
    )  # fmt: skip
    return metadata


def load_embedded(folder: str | Path, device: str | torch.device = "cpu") -> Components:
    """Load a trained embedded generator (safetensors weights through ``from_pretrained``)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    if not (folder / METADATA).is_file():
        raise FileNotFoundError(
            f"{folder} is not a trained embedded generator (no {METADATA}); run the train_generator rule "
            "(`dmlsynth train-generator`) first"
        )
    metadata = json.loads((folder / METADATA).read_text())
    # A model of a few MB: accelerate's low-memory loading (diffusers warns when it is missing, as on a plain
    # `pip install -e .`; it comes with the stable-diffusion extra) saves nothing here.
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True, low_cpu_mem_usage=False).to(device).eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True).to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    return Components(unet, text_encoder, tokenizer, scheduler, vae=None, image_channels=int(metadata["image_channels"]))


def load_embedded_generator(settings: Mapping[str, Any], generator_dir: str | Path | None) -> Components:
    """The trained embedded generator of ``generator_dir`` on ``generation.<dataset>.device``."""
    if generator_dir is None:
        raise ValueError("the embedded generator needs --generator-dir (the train_generator output)")
    return load_embedded(generator_dir, pick_device(str(settings["device"]), "generation.<dataset>.device"))
