"""The BLenDeR denoising loop on diffusers components (docs/methods.md §7).

One UNet call per step on the stacked batch ``[unconditional; c_1; …; c_K] × B``,
then per image ``eps = eps_∅ + w · op(d)`` with ``d_i = eps(x_t, c_i) − eps_∅``
and ``op`` that image's operator under the intersection rule and the strength
control (:func:`dmlsynth.generation.blend.combine`, a pure function of the
residuals). With K = 1 this is ordinary classifier-free guidance. ``on_step``
(like diffusers' step callbacks) sees each step's residuals, e.g. to record
:class:`dmlsynth.generation.blend.GuidanceRecord`. Conditions are text
embeddings, possibly convex blends of several prompts' embeddings
(:func:`blend_embeddings`). The same components, conditions, operators and
initial noise give the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from dmlsynth.generation.blend import combine

SCHEDULERS = ("ddim", "dpm-solver")


@dataclass
class Components:
    """What sampling needs; ``vae`` is None for a pixel-space model."""

    unet: Any  # diffusers UNet2DConditionModel
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    scheduler: Any  # a diffusers scheduler (its config is what matters)
    vae: Any = None  # diffusers AutoencoderKL for latent models
    image_channels: int = 3

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *size)

    def image_size(self) -> int:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.latent_shape[1] * factor


def make_scheduler(components: Components, name: str):
    """A fresh scheduler of kind ``name`` with the model's noise schedule (no state shared between runs)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(components.scheduler.config)
    if name == "dpm-solver":
        return DPMSolverMultistepScheduler.from_config(components.scheduler.config)
    raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")


@torch.no_grad()
def encode_prompts(components: Components, prompts: Sequence[str]) -> torch.Tensor:
    """Text-encoder hidden states ``(P, L, D)`` of ``prompts`` padded to the tokenizer's max length."""
    tokens = components.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=components.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = next(components.text_encoder.parameters()).device
    hidden = components.text_encoder(tokens.input_ids.to(device))[0]
    return hidden.to(components.dtype)


def blend_embeddings(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Convex blends of prompt embeddings: ``weights (..., P)`` rows summing to 1, ``embeddings (P, L, D)``."""
    if not torch.allclose(weights.sum(-1), torch.ones((), dtype=weights.dtype, device=weights.device), atol=1e-5):
        raise ValueError("blend weights must sum to 1 over the prompts")
    # Weights are built on the CPU; the prompt embeddings live where the text encoder runs.
    return torch.einsum("...p,pld->...ld", weights.to(device=embeddings.device, dtype=embeddings.dtype), embeddings)


@torch.no_grad()
def sample(
    components: Components,
    conditions: torch.Tensor,
    unconditional: torch.Tensor,
    operators: Sequence[str],
    noise: torch.Tensor,
    *,
    # No defaults: the caller passes the resolved generation.<dataset> values (a bare call would sample otherwise).
    guidance_scale: float,
    steps: int,
    scheduler: str,
    intersection_rule: str,
    guidance_norm: str,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` and return images ``(B, C, H, W)`` in [-1, 1].

    ``conditions``: ``(K, B, L, D)`` text embeddings (condition k of image b);
    ``unconditional``: ``(L, D)`` embedding of the empty prompt;
    ``operators``: one of :data:`dmlsynth.generation.blend.OPERATORS` per image;
    ``noise``: the initial latents ``(B, *latent_shape)`` drawn with unit variance;
    ``intersection_rule``, ``guidance_norm``: see :func:`dmlsynth.generation.blend.combine`;
    ``on_step(step, residuals)``: called at step 0, 1, … with that step's ``(K, B, ...)`` residuals.
    """
    k, b = conditions.shape[:2]
    if noise.shape[0] != b:
        raise ValueError(f"noise holds {noise.shape[0]} images but conditions {b}")
    device, dtype = components.device, components.dtype
    schedule = make_scheduler(components, scheduler)
    schedule.set_timesteps(steps, device=device)
    latents = noise.to(device=device, dtype=torch.float32) * schedule.init_noise_sigma
    hidden = torch.cat([unconditional.unsqueeze(0).expand(b, -1, -1), conditions.reshape(k * b, *conditions.shape[2:])])
    hidden = hidden.to(device=device, dtype=dtype)
    operators = list(operators)
    for step, t in enumerate(schedule.timesteps):
        model_input = schedule.scale_model_input(latents, t).to(dtype)
        stacked = model_input.repeat(k + 1, *([1] * (model_input.dim() - 1)))
        eps = components.unet(stacked, t, encoder_hidden_states=hidden).sample.float()
        eps = eps.view(k + 1, b, *eps.shape[1:])
        residuals = eps[1:] - eps[0:1]
        if on_step is not None:
            on_step(step, residuals)
        guided = eps[0] + guidance_scale * combine(residuals, operators, intersection_rule, guidance_norm)
        latents = schedule.step(guided, t, latents).prev_sample
    if components.vae is None:
        return latents.clamp(-1, 1)
    vae = components.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return images.float().clamp(-1, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images ``(B, C, H, W)`` to uint8 ``(B, H, W, C)``."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
