"""How many images go through the sampler at once.

On the CPU a sampler call takes ``batch_size`` images. On a GPU it takes at
most that many and no more than fit into the memory budget: ``gpu_memory_gib``
or, when less, what the process may still allocate (free memory when the job
starts plus what torch already holds). The batch comes from this memory
model of one sampler call of B images with K conditions:

    peak(B) = resident + fixed + B · (K + 1) · per_sample

- ``resident``: what is allocated before sampling (the weights; Stable
  Diffusion 1.5 in fp16: UNet 1.7 GB + text encoder 0.25 GB + VAE 0.17 GB);
- ``fixed`` and ``per_sample``: the activation memory of one UNet call on its
  stacked batch ``[∅; c_1..c_K] × B`` of (K + 1)·B samples, as a straight line
  in the number of samples. Both are measured on the GPU itself, once per
  job, from the peak of two UNet calls (:func:`measure_memory`), and
  ``per_sample`` is taken 25 % larger than measured (allocator rounding,
  kernels that pick other workspaces at other batch sizes);
- decoding: the VAE decodes one image at a time (``vae_slicing``), after the
  UNet's activations are freed, so its peak for one image only has to fit
  on its own; without slicing it decodes the whole batch and
  ``B · decode_per_image`` has to fit as well.

The other per-image tensors (latents, text embeddings, the scheduler's
history, the residuals the operators combine) are kilobytes per image at SD
shapes and are covered by the 25 % margin.

When the model is wrong anyway, the call raises ``torch.OutOfMemoryError``:
:func:`in_batches` then halves the batch, logs it and makes the same images
again in smaller batches. Images do not depend on the batch (every image has
its own seed), so a halved run makes the images an unsplit run makes.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch

log = logging.getLogger("dmlsynth.generation.batching")

GIB = 1024**3
# Per-sample memory is taken this much larger than measured.
SAFETY = 1.25
# Left unallocated of the memory that is free when the job starts (fragmentation of torch's cache).
HEADROOM_BYTES = GIB // 2
# UNet batch sizes of the two probe calls (samples, not images).
PROBE_SAMPLES = (2, 8)

T = TypeVar("T")


@dataclass(frozen=True)
class MemoryModel:
    """Bytes of one sampler call, as the module docstring describes."""

    resident: int  # allocated before sampling
    fixed: int  # activation bytes of a UNet call that do not grow with its batch
    per_sample: int  # activation bytes per sample of the UNet batch (measured, before SAFETY)
    decode_per_image: int = 0  # peak activation bytes of decoding one image (0: no VAE)

    def peak(self, images: int, k: int, vae_sliced: bool = True) -> int:
        """Predicted peak allocation of a sampler call on ``images`` images with ``k`` conditions."""
        unet = self.fixed + images * (k + 1) * self.per_sample * SAFETY
        decode = self.decode_per_image * (1 if vae_sliced else images)
        return int(self.resident + max(unet, decode))

    def images_that_fit(self, budget: int, k: int, vae_sliced: bool = True) -> int:
        """The largest batch whose predicted peak is within ``budget`` bytes (0 if not even one image fits)."""
        spare = budget - self.resident
        per_image = (k + 1) * self.per_sample * SAFETY
        unet = math.floor((spare - self.fixed) / per_image) if per_image > 0 else 10**9
        if vae_sliced:
            decode = 10**9 if self.decode_per_image <= spare else 0
        else:
            decode = math.floor(spare / self.decode_per_image) if self.decode_per_image > 0 else 10**9
        return max(0, min(unet, decode))


def memory_budget(limit_gib: float | None, device: torch.device) -> int:
    """Bytes this process may have allocated on ``device``: ``limit_gib``, or less when less is free."""
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = torch.cuda.memory_allocated(device) + cached + free - HEADROOM_BYTES
    return int(available if limit_gib is None else min(available, float(limit_gib) * GIB))


def _peak_of(device: torch.device, call: Callable[[], object]) -> int:
    """Peak bytes allocated on ``device`` during ``call()`` beyond what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak


def eager_unet(unet):
    """The UNet module itself when it is wrapped for torch.compile (probes must not compile new shapes)."""
    return getattr(unet, "eager", unet)


@torch.no_grad()
def measure_memory(components, hidden: torch.Tensor) -> MemoryModel:
    """Measure the :class:`MemoryModel` of ``components`` on their GPU.

    ``hidden``: one text embedding ``(L, D)`` (the unconditional one) that the
    probe UNet calls are conditioned on.
    """
    device, dtype = components.device, components.dtype
    unet = eager_unet(components.unet)
    resident = torch.cuda.memory_allocated(device)
    timestep = torch.tensor(500, device=device)

    def unet_call(samples: int):
        latents = torch.zeros(samples, *components.latent_shape, device=device, dtype=dtype)
        states = hidden.to(device=device, dtype=dtype).unsqueeze(0).expand(samples, -1, -1)
        return lambda: unet(latents, timestep, encoder_hidden_states=states).sample

    small, large = PROBE_SAMPLES
    peak_small = _peak_of(device, unet_call(small))
    peak_large = _peak_of(device, unet_call(large))
    per_sample = max(1, (peak_large - peak_small) // (large - small))
    fixed = max(0, peak_small - small * per_sample)
    decode = 0
    if components.vae is not None:
        vae = components.vae
        latent = torch.zeros(1, *components.latent_shape, device=device, dtype=vae.dtype)
        decode = _peak_of(device, lambda: vae.decode(latent).sample)
    model = MemoryModel(resident, fixed, per_sample, decode)
    log.info(
        "GPU memory model: %.2f GiB resident, UNet call %.2f GiB + %.1f MiB per sample, decoding %.2f GiB per image",
        resident / GIB, fixed / GIB, per_sample / 2**20, decode / GIB,
    )  # fmt: skip
    return model


def choose_batch_size(
    maximum: int, model: MemoryModel | None, budget: int | None, k: int, vae_sliced: bool = True
) -> int:
    """``maximum`` (the configured batch_size), lowered to what the memory model fits into ``budget``."""
    if model is None or budget is None:
        return max(1, int(maximum))
    fits = model.images_that_fit(budget, k, vae_sliced)
    if fits < 1:
        log.warning(
            "even one image (K=%d) is predicted to need %.1f GiB, more than the %.1f GiB budget; trying one at a time",
            k, model.peak(1, k, vae_sliced) / GIB, budget / GIB,
        )  # fmt: skip
        return 1
    batch = max(1, min(int(maximum), fits))
    log.info(
        "batch of %d image(s) with K=%d: predicted peak %.1f GiB of a %.1f GiB budget",
        batch, k, model.peak(batch, k, vae_sliced) / GIB, budget / GIB,
    )  # fmt: skip
    return batch


def balanced(remaining: int, batch_size: int) -> int:
    """Size of the next batch: the remaining images in equal batches of at most ``batch_size``.

    150 images at 35 go as 5 × 30, not 4 × 35 + 10: one UNet shape (one
    compilation) and no short batch that leaves the GPU half idle.
    """
    batches = math.ceil(remaining / max(1, batch_size))
    return math.ceil(remaining / batches)


def release_memory() -> None:
    """Give the memory of a failed attempt back before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def in_batches(count: int, batch_size: int, run: Callable[[int, int], T], what: str = "images") -> Iterator[tuple[int, int, T]]:
    """``run(start, stop)`` over ``0..count`` in batches of at most ``batch_size``; yields ``(start, stop, result)``.

    A batch that runs out of memory (``torch.OutOfMemoryError``) is made
    again in halves, and later batches keep the halved size; a single image
    that does not fit raises ``torch.OutOfMemoryError`` with a message that
    says what to change. Each finished batch logs a progress line: ``what`` done of ``count``, the time
    so far and an estimate of the time left.
    """
    start = 0
    began = time.perf_counter()
    while start < count:
        size = balanced(count - start, batch_size)
        try:
            result = run(start, start + size)
        except torch.OutOfMemoryError as error:
            if size == 1:
                raise torch.OutOfMemoryError(
                    f"out of GPU memory generating a single image ({error}); free GPU memory (other jobs: "
                    "`--resources gpu=1`), set attention_slicing: on, or lower gpu_memory_gib"
                ) from error
            batch_size = max(1, size // 2)
            log.warning("out of GPU memory with %d %s at once; halving the batch to %d", size, what, batch_size)
        else:
            done, elapsed = start + size, time.perf_counter() - began
            log.info(
                "%s: %d/%d in %.1fs (%.2fs each), about %.0fs left",
                what, done, count, elapsed, elapsed / done, elapsed / done * (count - done),
            )  # fmt: skip
            yield start, done, result
            start += size
            continue
        release_memory()  # outside the except block: the traceback no longer holds the failed call's tensors
