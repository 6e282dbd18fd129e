"""The generators BLenDeR samples from, and the settings that only change how fast.

:func:`load_generator` loads the generator ``generation.<dataset>.generator``
names through its registry entry (:data:`dmlsynth.registry.GENERATORS`: the
embedded model trained here, or Stable Diffusion), then applies the speed
settings: VAE slicing and ``torch.compile`` of the UNet. Neither chooses which
images are made, but either may sum floats in another order: both are part of
the generate job's identity (:data:`dmlsynth.jobs.NEUTRAL` leaves them in).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from dmlsynth import registry
from dmlsynth.generation.sampler import Components
from dmlsynth.generation.settings import images_generated, set_recipe

log = logging.getLogger("dmlsynth.generation.generators")

# compile: auto compiles when a job runs at least this many UNet sample-steps ((K+1) x images x steps).
# torch.compile took an SD-1.5 UNet call at batch 16 from 52 to 36 ms on an H100 (issue #9): ~1 ms saved
# per sample-step, so 100,000 of them repay ~1.5 min of compiling the job's two batch shapes (K = 3 and
# the plain set's K = 1). A paper-config class job (150 + 25 % extra = 188 images x 4 sets x 25 steps) runs
# ~65,800: not compiled.
COMPILE_MIN_SAMPLE_STEPS = 100_000


def wants_vae_slicing(setting: Any, device: torch.device) -> bool:
    if setting in (True, "on"):
        return True
    if setting in (False, "off"):
        return False
    return device.type == "cuda"


def unet_sample_steps(settings: Mapping[str, Any], image_sets: Sequence[str]) -> int:
    """UNet samples x denoising steps of one class job: what compiling could speed up."""
    samples = sum((set_recipe(name, settings)["prompts_per_image"] + 1) for name in image_sets)
    return samples * images_generated(settings) * int(settings["steps"])


def wants_compile(setting: Any, device: torch.device, sample_steps: int) -> bool:
    if setting in (True, "on"):
        return True
    if setting in (False, "off"):
        return False
    return device.type == "cuda" and sample_steps >= COMPILE_MIN_SAMPLE_STEPS


class CompiledUNet(torch.nn.Module):
    """A UNet called through ``torch.compile``; if compiling fails, the UNet itself, with a warning.

    ``eager`` is the module (its parameters, config and memory probes);
    a new batch shape compiles again once, after which the batch dimension
    is dynamic.
    """

    def __init__(self, unet: torch.nn.Module, compiler=None):
        super().__init__()
        self.eager = unet
        # Not a registered submodule: it shares the eager module's parameters.
        object.__setattr__(self, "_compiled", (compiler or torch.compile)(unet))
        self._working = False

    @property
    def config(self):
        return self.eager.config

    def forward(self, *args, **kwargs):
        if self._compiled is None:
            return self.eager(*args, **kwargs)
        try:
            output = self._compiled(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - any compiler failure falls back to the same module uncompiled
            if self._working:
                raise
            log.warning("torch.compile of the UNet failed (%s: %s); running it uncompiled", type(error).__name__, error)
            object.__setattr__(self, "_compiled", None)
            return self.eager(*args, **kwargs)
        self._working = True
        return output


def apply_speed_settings(components: Components, settings: Mapping[str, Any], image_sets: Sequence[str] = ()) -> Components:
    """VAE slicing and torch.compile as ``settings`` ask (after any adapters are loaded)."""
    device = components.device
    if components.vae is not None and wants_vae_slicing(settings.get("vae_slicing", "auto"), device):
        components.vae.enable_slicing()
    steps = unet_sample_steps(settings, image_sets) if image_sets else 0
    if wants_compile(settings.get("compile", "auto"), device, steps):
        components.unet = CompiledUNet(components.unet)
        log.info("UNet compiled with torch.compile (%d sample-steps in this job)", steps)
    return components


def load_generator(
    settings: Mapping[str, Any], generator_dir: str | Path | None, image_sets: Sequence[str] = ()
) -> Components:
    """The configured generator with the speed settings applied for a job that makes ``image_sets``."""
    name = settings["generator"]
    if name not in registry.GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(registry.GENERATORS)}")
    components = registry.load_object(registry.GENERATORS[name].load)(settings, generator_dir)
    return apply_speed_settings(components, settings, image_sets)
