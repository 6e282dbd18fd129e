"""Time per denoising step: BLenDeR's blended sampler vs plain classifier-free guidance.

Both run the same loop (dmlsynth.generation.sampler.sample) with the same K prompts in
one UNet batch [unconditional; c_1..c_K] x B; they differ only in how the residuals
are combined: plain guidance sums them (Composable Diffusion's conjunction), BLenDeR
computes the per-element intersection and the union per image. The UNet
has Stable Diffusion 1.5's widths (320/640/1280/1280, cross-attention 768), randomly
initialised (no download). Runs alternate in ABBA order and the medians are compared.

    python benchmarks/bench_blend_sampler.py                        # CPU, small latents
    python benchmarks/bench_blend_sampler.py --device cuda --size 512 --fp16 --layers 2 --batch 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(args):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dmlsynth.generation.sampler import Components
    from dmlsynth.generation.tokenizer import build_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=args.size // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=args.layers,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    # A small VAE decoder: decoding is outside the per-step cost being compared.
    vae = AutoencoderKL(
        latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
    )
    tokenizer = build_tokenizer(["a photo of a bird, blue wings, red head, on a branch"], "/tmp/dmlsynth-bench-tokenizer", 77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=1024, num_hidden_layers=1,
                       num_attention_heads=12, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    )
    dtype = torch.float16 if args.fp16 else torch.float32
    device = torch.device(args.device)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, steps_offset=1)
    return Components(unet.to(device, dtype).eval(), text_encoder.to(device, dtype).eval(), tokenizer, scheduler,
                      vae=vae.to(device, dtype).eval(), image_channels=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128, help="image size in px (latents are size/8)")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--layers", type=int, default=1, help="ResNet/attention layers per block (SD 1.5: 2)")
    parser.add_argument("--k", type=int, default=3, help="prompt conditions per image")
    parser.add_argument("--batch", type=int, default=2, help="images per sampler call")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from dmlsynth.generation.blend import combine
    from dmlsynth.generation.sampler import encode_prompts, sample

    components = build(args)
    prompts = ["a photo of a bird, blue wings", "a photo of a bird, red head", "a photo of a bird, on a branch", "a photo of a bird"]
    embedded = encode_prompts(components, (prompts * args.k)[: args.k])
    conditions = embedded.unsqueeze(1).expand(args.k, args.batch, *embedded.shape[1:]).contiguous()
    unconditional = encode_prompts(components, [""])[0]
    noise = torch.randn(args.batch, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
    blended_ops = (["union", "intersection"] * args.batch)[: args.batch]
    plain_ops = ["conjunction"] * args.batch

    def run(operators):
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(components, conditions, unconditional, operators, noise, guidance_scale=7.5, steps=args.steps, scheduler="ddim")
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(plain_ops)  # warm-up (allocations, kernels)
    run(blended_ops)
    plain, blended = [], []
    for repeat in range(args.repeats):
        # ABBA order: neither variant always runs first (caches, clocks, neighbors' load).
        if repeat % 2 == 0:
            plain.append(run(plain_ops))
            blended.append(run(blended_ops))
        else:
            blended.append(run(blended_ops))
            plain.append(run(plain_ops))
    plain_step = statistics.median(plain) / args.steps
    blended_step = statistics.median(blended) / args.steps

    residuals = torch.randn(args.k, args.batch, 4, args.size // 8, args.size // 8, device=args.device,
                            dtype=torch.float16 if args.fp16 else torch.float32)
    combine(residuals, blended_ops)
    start = time.perf_counter()
    for _ in range(20):
        combine(residuals, blended_ops)
    if args.device == "cuda":
        torch.cuda.synchronize()
    operator_ms = (time.perf_counter() - start) / 20 * 1000

    print(f"device={args.device} size={args.size}px fp16={args.fp16} layers_per_block={args.layers} K={args.k} "
          f"B={args.batch} steps={args.steps} UNet batch={(args.k + 1) * args.batch} threads={args.threads}")
    print(f"plain CFG (K prompts, one batch): {plain_step * 1000:.1f} ms/step, {args.batch / (plain_step * args.steps):.3f} images/s")
    print(f"BLenDeR union/intersection:       {blended_step * 1000:.1f} ms/step, {args.batch / (blended_step * args.steps):.3f} images/s")
    print(f"operators alone (combine):        {operator_ms:.3f} ms/step")
    print(f"operators' share of a plain step: {operator_ms / (plain_step * 1000) * 100:.3f}% (the ratio's floor is 1 + this)")
    print(f"step-time ratio blended / plain:  {blended_step / plain_step:.3f}x (goal <= 1.05x; medians of {args.repeats} ABBA-ordered runs each)")


if __name__ == "__main__":
    main()
