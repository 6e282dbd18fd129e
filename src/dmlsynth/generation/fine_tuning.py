"""Per-class fine-tuning of Stable Diffusion: textual inversion and/or LoRA (BLenDeR, docs/methods.md §7).

The paper fine-tunes Stable Diffusion per class with LoRA / textual inversion
before sampling. One job per dataset x **training** class
(:func:`fine_tune_class`, the ``fine_tune`` rule) trains, on that class's
real training images only (never validation or test classes):

- ``textual_inversion``: one new token of the CLIP text encoder, the class
  token :func:`class_token` (``<cub200-17>``), whose embedding row is the only
  trained text-encoder weight; it starts at the mean embedding of the class
  name's tokens [project definition];
- ``lora``: rank-``rank`` LoRA adapters on the UNet's attention projections
  (``to_q``, ``to_k``, ``to_v``, ``to_out.0``; alpha = rank) through the
  diffusers PEFT integration (``unet.add_adapter``);
- ``both``: the two together (one optimizer, a learning rate each).

The loss is the usual denoising loss: MSE between the UNet's prediction and
the noise (or the velocity, for v-prediction models) of the model's own
DDPM noise schedule, at uniformly drawn timesteps. Images are resized (short
side) and centre-cropped to ``resolution`` (default: the model's native
size) and encoded once by the VAE (the latent mean) [project definition].
Captions are the class's prompts from ``prompts.yaml`` (the ones generation
blends), with the class token in front when textual inversion is on
(:func:`with_class_token`) [project definition]; generation uses the same
token in every prompt of the class, so the class's images are sampled with
what was learnt.

Reproducible and restartable: the images, captions, noise and timesteps of
step ``s`` come from a generator seeded with (generation seed, class label,
``s``), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted one takes. Every ``checkpoint_every`` steps the trained
tensors and the optimizer state are saved atomically (keyed on the job's
identity, the class's captions and images, and the device); the final files are written atomically, the summary
(``fine_tuning.json``: token, files, loss, measured seconds) last.

Outputs (``{data}/{dataset}/fine_tuned/class{i}/``, :mod:`dmlsynth.layout`):
``lora.safetensors`` (diffusers' LoRA format, ``load_lora_weights``),
``embedding.safetensors`` (``{token: vector}``, ``load_textual_inversion``)
and ``fine_tuning.json``.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from dmlsynth import layout
from dmlsynth.io import atomic_output, atomic_write_text, save_torch
from dmlsynth.provenance import params_hash
from dmlsynth.errors import DmlsynthError

log = logging.getLogger("dmlsynth.generation.fine_tuning")

METHODS = ("none", "lora", "textual_inversion", "both")
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


class FineTuningError(DmlsynthError, ValueError):
    """Fine-tuning was asked for something impossible (no images, a test class, a taken token)."""


def fine_tuning_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``generation.<dataset>.fine_tuning`` (defaults filled in by ``generation_settings``)."""
    return dict(settings.get("fine_tuning") or {"method": "none"})


def fine_tunes(settings: Mapping[str, Any]) -> bool:
    """Whether the dataset's Stable Diffusion is fine-tuned per class before generation."""
    return fine_tuning_settings(settings).get("method", "none") != "none"


def trains_lora(settings: Mapping[str, Any]) -> bool:
    return fine_tuning_settings(settings)["method"] in ("lora", "both")


def trains_embedding(settings: Mapping[str, Any]) -> bool:
    return fine_tuning_settings(settings)["method"] in ("textual_inversion", "both")


def class_token(dataset: str, label: int) -> str:
    """The textual-inversion token of a class, e.g. ``<cub200-17>`` [project definition]."""
    return f"<{dataset}-{int(label)}>"


def with_class_token(prompt: str, token: str) -> str:
    """The prompt with the class token in front: the front survives CLIP's 77-token truncation."""
    return f"{token}, {prompt}"


def entry_with_token(entry: Mapping[str, Any], token: str | None) -> dict[str, Any]:
    """A prompts-file class entry whose plain prompt and prompts all carry ``token`` (unchanged without one)."""
    if not token:
        return dict(entry)
    return {
        **entry,
        "plain": with_class_token(entry["plain"], token),
        "prompts": [with_class_token(p, token) for p in entry["prompts"]],
    }


def class_images(train_frame: pd.DataFrame, label: int) -> list[str]:
    """The files of class ``label``'s real training images (the frame must hold the training split only)."""
    splits = set(train_frame["split"])
    if splits != {"train"}:
        raise FineTuningError(f"fine-tuning reads training images only; got splits {sorted(splits)}")
    files = sorted(train_frame.loc[train_frame["label"] == int(label), "file"])
    if not files:
        raise FineTuningError(f"class {label} has no training images; test classes are never fine-tuned on")
    return files


def step_seed(seed: int, label: int, step: int, purpose: str = "step") -> int:
    """The seed of one fine-tuning step (or of another ``purpose``) of class ``label``."""
    sequence = np.random.SeedSequence([int(seed), int(label), zlib.crc32(f"fine_tuning/{purpose}".encode()), int(step)])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / layout.FINE_TUNING_SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def fine_tuning_seconds(settings: Mapping[str, Any], folders: Any, dataset: str, classes: int) -> float:
    """Measured fine-tuning time of the ``classes`` training classes of ``dataset`` (0 when its generation
    ``settings`` fine-tune nothing); ``folders``: the :class:`dmlsynth.layout.Layout`."""
    if not fine_tunes(settings):
        return 0.0
    total = 0.0
    for index in range(classes):
        summary = read_summary(folders.fine_tuned_dir(dataset, index))
        if summary is None:
            raise FileNotFoundError(f"{folders.fine_tuned_dir(dataset, index)} has no {layout.FINE_TUNING_SUMMARY}: fine-tune the class first")
        total += float(summary["seconds"])
    return total


def adapter_settings(settings: Mapping[str, Any], folder: str | Path) -> tuple[dict[str, Any], str | None]:
    """``settings`` with the class's fine-tuned files as ``textual_inversion`` / ``lora``, and its token.

    What :func:`dmlsynth.generation.stable_diffusion.load_stable_diffusion` loads for the class's
    ``generate`` job; the token (None without textual inversion) goes into every prompt of the class.
    """
    summary = read_summary(folder)
    if summary is None:
        raise FileNotFoundError(
            f"{Path(folder) / layout.FINE_TUNING_SUMMARY} does not exist: fine-tune the class first (the fine_tune rule)"
        )
    updated = dict(settings)
    token = None
    files = summary["files"]
    if "textual_inversion" in files:
        token = summary["token"]
        updated["textual_inversion"] = {**dict(settings.get("textual_inversion") or {}), token: str(Path(folder) / files["textual_inversion"])}
    if "lora" in files:
        if settings.get("lora"):
            raise FineTuningError("generation.<dataset>.lora and fine-tuned LoRA weights exclude each other; unset one")
        updated["lora"] = str(Path(folder) / files["lora"])
    return updated, token


def load_training_images(files: Sequence[str], resolution: int):
    """``(N, 3, r, r)`` float tensor in [-1, 1]: short side resized to ``r``, centre crop."""
    import torch
    from PIL import Image

    arrays = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert("RGB")
            scale = resolution / min(image.size)
            size = (max(resolution, round(image.size[0] * scale)), max(resolution, round(image.size[1] * scale)))
            image = image.resize(size, Image.BICUBIC)
            left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
            arrays.append(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _trainable_state(components, token_id: int | None) -> dict[str, Any]:
    """The tensors fine-tuning changes: LoRA parameters and the token's embedding row (CPU copies)."""
    state = {f"unet.{n}": p.detach().cpu().clone() for n, p in components.unet.named_parameters() if p.requires_grad}
    if token_id is not None:
        state["token_embedding"] = components.text_encoder.get_input_embeddings().weight[token_id].detach().cpu().clone()
    return state


def _restore(components, token_id: int | None, state: Mapping[str, Any]) -> None:
    import torch

    with torch.no_grad():
        parameters = dict(components.unet.named_parameters())
        for name, value in state.items():
            if name == "token_embedding":
                components.text_encoder.get_input_embeddings().weight[token_id] = value.to(components.device)
            else:
                parameters[name.removeprefix("unet.")].copy_(value)


def _trainable(components, settings: Mapping[str, Any], tuning: Mapping[str, Any], token: str | None, entry: Mapping[str, Any], label: int):
    """What fine-tuning trains, frozen everything else: the class token's embedding row (textual inversion,
    started from the class name's embedding) and/or LoRA weights on the UNet's attention. Returns the
    optimizer's parameter groups and the token's id (None without textual inversion)."""
    import torch

    tokenizer, text_encoder, unet, vae = components.tokenizer, components.text_encoder, components.unet, components.vae
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    vae.requires_grad_(False)
    groups, token_id = [], None
    if token is not None:
        if tokenizer.add_tokens([token]) != 1:
            raise FineTuningError(f"the tokenizer of {settings['model_id']} already has the token {token!r}")
        token_id = tokenizer.convert_tokens_to_ids(token)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new row is set below
        embedding = text_encoder.get_input_embeddings().weight
        name = str(entry["class_name"]).split(".", 1)[-1].replace("_", " ")
        name_ids = tokenizer(name, add_special_tokens=False, truncation=True).input_ids or [tokenizer.convert_tokens_to_ids(tokenizer.unk_token)]
        with torch.no_grad():
            embedding[token_id] = embedding[name_ids].mean(dim=0)
        embedding.requires_grad_(True)
        groups.append({"params": [embedding], "lr": float(tuning["embedding_learning_rate"])})
    if trains_lora(settings):
        from peft import LoraConfig

        torch.manual_seed(step_seed(settings["seed"], label, 0, "lora_init"))  # the LoRA down-projections' random start
        rank = int(tuning["rank"])
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGET_MODULES))
        groups.append({"params": [p for p in unet.parameters() if p.requires_grad], "lr": float(tuning["learning_rate"])})
    return groups, token_id


def _steps(
    components, noise_scheduler, latents, captions: Sequence[str], optimizer, token_id: int | None, settings: Mapping[str, Any],
    label: int, start: int, steps: int, batch_size: int, every: int, checkpoint: Path, identity: Mapping[str, Any],
    losses: list[float], seconds: float, callbacks: Sequence[Callable[[int], None]],
) -> float:  # fmt: skip
    """Steps ``start`` to ``steps`` (each drawing from its own seeded stream), checkpointing every ``every``;
    appends to ``losses`` and returns the seconds of every step so far."""
    import torch
    import torch.nn.functional as F

    tokenizer, text_encoder, unet, device = components.tokenizer, components.text_encoder, components.unet, components.device
    prediction = noise_scheduler.config.prediction_type
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    unet.train()
    started = time.perf_counter()
    for step in range(start, steps):
        generator = torch.Generator().manual_seed(step_seed(settings["seed"], label, step))
        images = torch.randint(len(latents), (batch_size,), generator=generator)
        chosen = torch.randint(len(captions), (batch_size,), generator=generator)
        clean = latents[images]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        target = noise if prediction == "epsilon" else noise_scheduler.get_velocity(clean, noise, timesteps)
        ids = tokenizer(
            [captions[i] for i in chosen.tolist()], padding="max_length", max_length=tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids  # fmt: skip
        with autocast:
            hidden = text_encoder(ids.to(device))[0]
            predicted = unet(noisy.to(device), timesteps.to(device), hidden).sample
        loss = F.mse_loss(predicted.float(), target.to(device).float())
        loss.backward()
        if token_id is not None:  # only the class token's row of the embedding table learns
            grad = text_encoder.get_input_embeddings().weight.grad
            keep = grad[token_id].clone()
            grad.zero_()
            grad[token_id] = keep
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        done_steps = step + 1
        if done_steps % every == 0 and done_steps < steps:
            save_torch(
                {**identity, "step": done_steps, "trainable": _trainable_state(components, token_id),
                 "optimizer": optimizer.state_dict(), "losses": losses, "seconds": seconds + time.perf_counter() - started},
                checkpoint,
            )  # fmt: skip
            for callback in callbacks:  # after a checkpoint, so that stopping here loses no step
                callback(done_steps)
    return seconds + time.perf_counter() - started


def _write(components, settings: Mapping[str, Any], token: str | None, token_id: int | None, out_dir: Path, summary: dict) -> dict:
    """The class token's embedding and/or the LoRA weights, then ``fine_tuning.json`` (written last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files_written = {}
    if token_id is not None:
        from safetensors.torch import save_file

        vector = components.text_encoder.get_input_embeddings().weight[token_id].detach().float().cpu().contiguous()
        with atomic_output(out_dir / layout.FINE_TUNED_EMBEDDING) as tmp:
            save_file({token: vector}, str(tmp))
        files_written["textual_inversion"] = layout.FINE_TUNED_EMBEDDING
    if trains_lora(settings):
        _save_lora(components.unet, out_dir / layout.FINE_TUNED_LORA, int(fine_tuning_settings(settings)["rank"]))
        files_written["lora"] = layout.FINE_TUNED_LORA
    losses = summary.pop("losses")
    tail = losses[-max(1, len(losses) // 10) :]
    summary = {
        **summary, "files": files_written, "final_loss": float(np.mean(tail)) if tail else None,
        "losses": [round(l, 6) for l in losses],
    }  # fmt: skip
    atomic_write_text(out_dir / layout.FINE_TUNING_SUMMARY, json.dumps(summary, indent=1))
    return summary


def fine_tune_class(
    settings: Mapping[str, Any],
    files: Sequence[str],
    entry: Mapping[str, Any],
    dataset: str,
    label: int,
    out_dir: str | Path,
    checkpoint: str | Path,
    callbacks: Sequence[Callable[[int], None]] = (),
    identity: str | None = None,
) -> dict[str, Any]:
    """Fine-tune the configured Stable Diffusion on one class's training ``files``; return the summary.

    ``entry`` is the class's prompts-file entry (its captions). ``callbacks(step)`` run after each
    checkpoint (the workflow's stop check). ``identity``: that of its ``fine_tune`` job
    (:meth:`dmlsynth.jobs.Job.identity`); a finished folder, or a checkpoint, of the same identity and the
    same captions and images is kept, or resumed. Without one (a call outside a job) it trains from scratch.
    """
    import torch
    from diffusers import DDPMScheduler

    from dmlsynth.generation.stable_diffusion import load_stable_diffusion

    # 1. What is tuned, and whether this very class is done already.
    tuning = fine_tuning_settings(settings)
    method = tuning["method"]
    if method not in METHODS or method == "none":
        raise FineTuningError(f"generation.{dataset}.fine_tuning.method is {method!r}: nothing to fine-tune (use one of lora, textual_inversion, both)")
    if not files:
        raise FineTuningError(f"class {label} of {dataset} has no training images to fine-tune on")
    out_dir, checkpoint = Path(out_dir), Path(checkpoint)
    token = class_token(dataset, label) if trains_embedding(settings) else None
    captions = entry_with_token(entry, token)["prompts"]
    # The job's identity, and what it reads from its inputs (the class's prompts and images), which it does not hash.
    key = params_hash({"identity": identity, "captions": captions, "images": [Path(f).name for f in files]})
    done = read_summary(out_dir)
    if identity is not None and done is not None and done.get("params_hash") == key and all((out_dir / f).is_file() for f in done["files"].values()):
        log.info("class %s already fine-tuned in %s; not redone", label, out_dir)
        return done

    # 2. The model in fp32 (the trained tensors need full precision; on CUDA the forward pass runs in bf16
    # autocast) and the latents of the class's images.
    components = load_stable_diffusion({**settings, "fp16": False, "textual_inversion": {}, "lora": None})
    device = components.device
    noise_scheduler = DDPMScheduler.from_pretrained(str(settings["model_id"]), subfolder="scheduler")
    resolution = int(tuning.get("resolution") or components.image_size())
    steps, batch_size = int(tuning["steps"]), int(tuning["batch_size"])
    vae = components.vae
    with torch.no_grad():
        pixels = load_training_images(files, resolution)
        latents = torch.cat([
            vae.encode(pixels[i : i + batch_size].to(device)).latent_dist.mean * vae.config.scaling_factor
            for i in range(0, len(pixels), batch_size)
        ]).cpu()  # fmt: skip

    # 3. What trains. No weight decay: the embedding rows of the other tokens get zero gradients and must stay.
    groups, token_id = _trainable(components, settings, tuning, token, entry, label)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)

    # 4. Resume: a checkpoint only of the same job (params, code) and inputs on the same device.
    resume_key = {"params_hash": key, "device": str(device)}
    start, losses, seconds = 0, [], 0.0
    if identity is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if all(saved.get(k) == v for k, v in resume_key.items()):
            _restore(components, token_id, saved["trainable"])
            optimizer.load_state_dict(saved["optimizer"])
            start, losses, seconds = int(saved["step"]), list(saved["losses"]), float(saved["seconds"])
            log.info("resuming class %s from step %d of %d (%s)", label, start, steps, checkpoint)
        else:
            log.info("checkpoint %s is of another job, other inputs or another device; starting over", checkpoint)

    # 5. The steps.
    seconds = _steps(
        components, noise_scheduler, latents, captions, optimizer, token_id, settings, label, start, steps, batch_size,
        int(tuning["checkpoint_every"]), checkpoint, resume_key, losses, seconds, callbacks,
    )  # fmt: skip

    # 6. The weights and the summary (written last); the checkpoint goes.
    summary = _write(components, settings, token, token_id, out_dir, {
        "dataset": dataset, "label": int(label), "class_name": str(entry["class_name"]), "method": method,
        "token": token, "steps": steps, "images": len(files), "resolution": resolution,
        "seconds": round(seconds, 3), "seconds_per_step": round(seconds / steps, 4),  # seconds covers every step, resumed ones too
        "losses": losses, "device": str(device), "params_hash": key,
    })  # fmt: skip
    checkpoint.unlink(missing_ok=True)
    log.info("class %s fine-tuned (%s, %d steps) in %.1fs, final loss %.4f", label, method, steps, seconds, summary["final_loss"])
    return summary


def _save_lora(unet, path: Path, rank: int) -> None:
    """The UNet's LoRA layers in diffusers' format (``load_lora_weights`` reads it), written atomically."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    layers = {k: v.detach().float().cpu().contiguous() for k, v in layers.items()}
    metadata = {"r": rank, "lora_alpha": rank, "target_modules": LORA_TARGET_MODULES}
    with atomic_output(path) as tmp:
        StableDiffusionPipeline.save_lora_weights(
            str(tmp.parent), unet_lora_layers=layers, weight_name=tmp.name, safe_serialization=True,
            unet_lora_adapter_metadata=metadata,
        )  # fmt: skip
