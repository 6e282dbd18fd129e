"""Loading a Stable Diffusion model (or any diffusers text-to-image folder) for the sampler.

``model_id`` is a Hugging Face Hub id (default Stable Diffusion 1.5) or a local
folder in the diffusers layout (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``). Components load through ``from_pretrained``
(safetensors weights only), in fp16 on a GPU. Attention slicing is switched
on when GPU memory is short (``attention_slicing: auto``, below 12 GiB) or
when asked; the VAE decodes one image at a time on a GPU (``vae_slicing:
auto``), so decoding needs the memory of one image whatever the batch.
Per-class textual-inversion embeddings and LoRA weights are loaded through
diffusers' own loaders when the user provides them; LoRA needs the ``peft``
package.

``compile: on`` runs the UNet through ``torch.compile`` (:class:`CompiledUNet`);
``auto`` does so on a GPU when the job is long enough to repay the
compilation (:func:`wants_compile`). Compiling, like slicing, changes only the
order of float operations, not which images are made.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from dmlsynth.device import pick_device
from dmlsynth.generation.sampler import Components

log = logging.getLogger("dmlsynth.generation.stable_diffusion")

SHORT_MEMORY_BYTES = 12 * 1024**3
def wants_attention_slicing(setting: Any, device: torch.device) -> bool:
    if setting in (True, "on"):
        return True
    if setting in (False, "off"):
        return False
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_properties(device).total_memory < SHORT_MEMORY_BYTES


def load_stable_diffusion(settings: Mapping[str, Any], generator_dir: str | Path | None = None) -> Components:
    """Components of ``settings['model_id']`` on ``settings['device']`` (fp16 on CUDA when ``fp16``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_id = str(settings["model_id"])
    device = pick_device(str(settings.get("device", "auto")), "generation.<dataset>.device")
    dtype = torch.float16 if (device.type == "cuda" and settings.get("fp16", True)) else torch.float32
    common = {"torch_dtype": dtype, "use_safetensors": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", **common)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(model_id, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"cannot load Stable Diffusion model {model_id!r} ({exc}); set generation.<dataset>.model_id to a "
            "Hugging Face id you can download (accept its license and `huggingface-cli login` if needed) or to "
            "a local diffusers folder with unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (safetensors)"
        ) from exc
    components = Components(
        unet.to(device).eval(),
        text_encoder.to(device).eval(),
        tokenizer,
        scheduler,
        vae=vae.to(device).eval(),
        image_channels=3,
    )
    log.info("Stable Diffusion %s loaded on %s in %s", model_id, device, dtype)
    if wants_attention_slicing(settings.get("attention_slicing", "auto"), device):
        # Half the attention heads at a time: less peak memory for a little time.
        unet.set_attention_slice("auto")
        log.info("attention slicing on")
    _load_adapters(components, settings)
    return components


def _load_adapters(components: Components, settings: Mapping[str, Any]) -> None:
    """Textual-inversion embeddings (``{token: file}``) and LoRA weights (a file or folder)."""
    inversion = dict(settings.get("textual_inversion") or {})
    lora = settings.get("lora")
    if not inversion and not lora:
        return
    from diffusers import StableDiffusionPipeline

    # The pipeline object only lends diffusers' loaders; sampling uses our own loop.
    pipeline = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for token, file in sorted(inversion.items()):
        if not Path(file).exists():
            raise FileNotFoundError(f"textual-inversion embedding {file} for token {token!r} does not exist")
        pipeline.load_textual_inversion(str(file), token=token)
        log.info("textual inversion %s loaded from %s", token, file)
    if lora:
        try:
            import peft  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("LoRA weights need the 'peft' package: pip install peft") from exc
        pipeline.load_lora_weights(str(lora))
        pipeline.fuse_lora()
        log.info("LoRA weights loaded from %s", lora)
    components.text_encoder = pipeline.text_encoder
    components.tokenizer = pipeline.tokenizer
    components.unet = pipeline.unet
