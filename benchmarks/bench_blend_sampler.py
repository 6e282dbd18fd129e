"""Time per denoising step: BLenDeR's blended sampler vs plain classifier-free guidance.

Both run the same loop (dmlsynth.generation.sampler.sample) with the same K prompts in
one UNet batch [unconditional; c_1..c_K] x B; they differ only in how the residuals
are combined: plain guidance sums them (Composable Diffusion's conjunction), BLenDeR
runs as the workflow does: the union or the intersection per image under the default
intersection rule and strength control (the schema's generation defaults: the principal
component, guidance_norm mean), recording each image's guidance statistics
(dmlsynth.generation.blend.GuidanceRecord, what results/generation.csv reports). The UNet
has Stable Diffusion 1.5's widths (320/640/1280/1280, cross-attention 768), randomly
initialised (no download). Runs alternate in ABBA order in one process and the medians
are compared; the operators (``combine``) and the statistics are also timed alone.

Besides the timings, each row records what a re-run reproduces exactly on the CPU:
the setup, the mean of the images each variant makes, their largest difference
(blended vs plain: the operators change the images) and the largest difference
between repeats of one variant (0: the timed runs all did the same work).
``--config tiny`` (a narrow UNet) is what tests/e2e/test_blend_sampler_benchmark.py
re-runs from scratch.

    PYTHONPATH=src python benchmarks/bench_blend_sampler.py --write                  # CPU, 128 px
    PYTHONPATH=src python benchmarks/bench_blend_sampler.py --config sd15-cuda --write  # a CUDA GPU, 512 px fp16

Results go to ``benchmarks/results/blend_sampler.csv`` (rows of the other configs are
kept); ``--write`` renders the BENCHMARKS.md block from it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlsynth import docblocks  # noqa: E402
from dmlsynth.machine import facts_line, machine_facts  # noqa: E402

SCRIPT = "benchmarks/bench_blend_sampler.py"
RESULTS = "benchmarks/results/blend_sampler.csv"
SD15_WIDTHS = (320, 640, 1280, 1280)
CONFIGS = {
    "default": dict(device="cpu", size=128, fp16=False, layers=1, widths=SD15_WIDTHS, k=3, batch=2, steps=3, repeats=4),
    "sd15-cuda": dict(device="cuda", size=512, fp16=True, layers=2, widths=SD15_WIDTHS, k=3, batch=4, steps=20, repeats=6),
    "tiny": dict(device="cpu", size=32, fp16=False, layers=1, widths=(32, 32, 64, 64), k=3, batch=2, steps=2, repeats=2),
}
OPERATOR_REPEATS = 20
EXACT = ["config", "device", "dtype", "size", "layers", "widths", "k", "batch", "unet_batch", "steps", "repeats",
         "intersection_rule", "guidance_norm", "plain_image_mean", "blended_image_mean", "max_abs_difference_blended_vs_plain", "max_abs_difference_between_repeats"]  # fmt: skip
PROMPTS = ["a photo of a bird, blue wings", "a photo of a bird, red head", "a photo of a bird, on a branch", "a photo of a bird"]


def build(setup: dict, tokenizer_folder: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dmlsynth.generation.sampler import Components
    from dmlsynth.generation.tokenizer import build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=setup["size"] // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=setup["layers"],
        block_out_channels=tuple(setup["widths"]),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    # A small VAE decoder: decoding is outside the per-step cost being compared.
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
    )  # fmt: skip
    tokenizer = build_tokenizer(PROMPTS, tokenizer_folder, 77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=1024, num_hidden_layers=1,
                       num_attention_heads=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    )  # fmt: skip
    dtype = torch.float16 if setup["fp16"] else torch.float32
    device = torch.device(setup["device"])
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    return Components(unet.to(device, dtype).eval(), text_encoder.to(device, dtype).eval(), tokenizer, scheduler,
                      vae=vae.to(device, dtype).eval(), image_channels=3)  # fmt: skip


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(config: str, threads: int = 1) -> pd.DataFrame:
    """One row: both variants' median step time, the operators alone, and the images' exact checks."""
    from dmlsynth.generation.blend import GuidanceRecord, combine
    from dmlsynth.generation.sampler import encode_prompts, sample
    from dmlsynth.config import config_defaults

    torch.set_num_threads(threads)
    facts = machine_facts()
    setup = CONFIGS[config]
    device, k, batch, steps = setup["device"], setup["k"], setup["batch"], setup["steps"]
    with tempfile.TemporaryDirectory(prefix="dmlsynth-bench-tokenizer-") as folder:
        components = build(setup, Path(folder))
    embedded = encode_prompts(components, (PROMPTS * k)[:k])
    conditions = embedded.unsqueeze(1).expand(k, batch, *embedded.shape[1:]).contiguous()
    unconditional = encode_prompts(components, [""])[0]
    latent = setup["size"] // 8
    noise = torch.randn(batch, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    operators = {"plain": ["conjunction"] * batch, "blended": (["union", "intersection"] * batch)[:batch]}
    defaults = config_defaults(["digits"])["generation"]["digits"]
    rule, norm = defaults["intersection_rule"], defaults["guidance_norm"]
    # Plain guidance is the sum alone (conjunction, not rescaled); BLenDeR what generate_class runs (rule, norm,
    # the recorded statistics).
    options = {"plain": dict(intersection_rule=rule, guidance_norm="none"), "blended": dict(intersection_rule=rule, guidance_norm=norm)}
    seconds: dict[str, list[float]] = {"plain": [], "blended": []}
    images: dict[str, list[torch.Tensor]] = {"plain": [], "blended": []}

    def run(variant: str, timed: bool = True) -> None:
        synchronize(device)
        start = time.perf_counter()
        record = GuidanceRecord(operators[variant], rule, norm) if variant == "blended" else None
        out = sample(components, conditions, unconditional, operators[variant], noise, guidance_scale=7.5, steps=steps,
                     scheduler="ddim", on_step=record, **options[variant])  # fmt: skip
        synchronize(device)
        if timed:
            seconds[variant].append(time.perf_counter() - start)
        images[variant].append(out.float().cpu())

    run("plain", timed=False)  # warm-up (allocations, kernels)
    run("blended", timed=False)
    for repeat in range(setup["repeats"]):
        # ABBA order: neither variant always runs first (caches, clocks, neighbours' load).
        for variant in ("plain", "blended") if repeat % 2 == 0 else ("blended", "plain"):
            run(variant)
    plain_step = statistics.median(seconds["plain"]) / steps
    blended_step = statistics.median(seconds["blended"]) / steps

    residuals = torch.randn(k, batch, 4, latent, latent, generator=torch.Generator().manual_seed(1))
    residuals = residuals.to(device, torch.float16 if setup["fp16"] else torch.float32)
    combine(residuals, operators["blended"], rule, norm)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(OPERATOR_REPEATS):
        combine(residuals, operators["blended"], rule, norm)
    synchronize(device)
    operators_ms = (time.perf_counter() - start) / OPERATOR_REPEATS * 1000
    record = GuidanceRecord(operators["blended"], rule, norm)
    record(0, residuals)
    synchronize(device)
    start = time.perf_counter()
    for step in range(OPERATOR_REPEATS):
        record(step, residuals)
    synchronize(device)
    statistics_ms = (time.perf_counter() - start) / OPERATOR_REPEATS * 1000

    def largest(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    row = dict(
        config=config, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        dtype="float16" if setup["fp16"] else "float32", size=setup["size"], layers=setup["layers"],
        widths="/".join(map(str, setup["widths"])), k=k, batch=batch, unet_batch=(k + 1) * batch, steps=steps,
        repeats=setup["repeats"], intersection_rule=rule, guidance_norm=norm, plain_image_mean=float(images["plain"][0].mean()),
        blended_image_mean=float(images["blended"][0].mean()),
        max_abs_difference_blended_vs_plain=largest(images["blended"][0], images["plain"][0]),
        max_abs_difference_between_repeats=max(largest(x, v[0]) for v in images.values() for x in v[1:]),
        plain_ms_per_step=plain_step * 1000, blended_ms_per_step=blended_step * 1000, operators_ms=operators_ms,
        statistics_ms=statistics_ms,
        plain_images_per_s=batch / (plain_step * steps), blended_images_per_s=batch / (blended_step * steps),
        ratio_blended_to_plain=blended_step / plain_step, operators_share_of_plain_step=operators_ms / (plain_step * 1000),
        **facts,
    )  # fmt: skip
    return pd.DataFrame([row])


def render(frame: pd.DataFrame) -> str:
    """BENCHMARKS.md: per measured setup, both variants' step time, the operators alone and the ratio."""
    if (frame.config == "tiny").all():
        return "Not measured yet: `PYTHONPATH=src python benchmarks/bench_blend_sampler.py --write` measures and writes it here.\n"
    lines = []
    for _, row in frame[frame.config != "tiny"].iterrows():
        latent = row["size"] // 8
        lines += [
            f"**{row['config']}** on {row['device']} ({row['dtype']}), {row['size']} px ({latent}×{latent} latents), "
            f"UNet widths {row['widths']}, layers per block {row['layers']}, K = {row['k']}, B = {row['batch']} "
            f"(UNet batch {row['unet_batch']}), {row['steps']} DDIM steps, intersection rule {row['intersection_rule']}, "
            f"guidance_norm {row['guidance_norm']}, medians of {row['repeats']} ABBA-ordered runs; "
            f"{facts_line(row)}",
            "",
            "| variant | ms / step | images / s |",
            "|---|---|---|",
            f"| plain CFG, K prompts in one batch | {row['plain_ms_per_step']:.1f} | {row['plain_images_per_s']:.3f} |",
            f"| BLenDeR (union / intersection per image, statistics recorded) | {row['blended_ms_per_step']:.1f} | {row['blended_images_per_s']:.3f} |",
            f"| the operators alone (`combine`) | {row['operators_ms']:.3f} ({100 * row['operators_share_of_plain_step']:.3f} % of a plain step) | — |",
            f"| the guidance statistics alone (`GuidanceRecord`) | {row['statistics_ms']:.3f} | — |",
            f"| **step-time ratio blended / plain** | **{row['ratio_blended_to_plain']:.3f}×** (goal ≤ 1.05×) | |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--write", action="store_true", help="render the BENCHMARKS.md block from the results")
    args = parser.parse_args()
    if CONFIGS[args.config]["device"] == "cuda" and not torch.cuda.is_available():
        parser.error(f"--config {args.config} needs a CUDA GPU")

    frame = measure(args.config, args.threads)
    print(frame.T.to_string(header=False))
    docblocks.record_rows(args.out, frame, ["config"], float_format="%.6g", order=list(CONFIGS))
    if args.write:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render})


if __name__ == "__main__":
    main()
