"""Stable Diffusion generation: seconds per image and peak GPU memory per image set.

A Stable-Diffusion-1.5-shaped model with random weights (no download) is
saved in the diffusers layout and loaded by the real loader
(:func:`dmlsynth.generation.stable_diffusion.load_generator`: fp16 on CUDA,
VAE slicing, torch.compile as configured); one training class is generated
by :func:`dmlsynth.generation.run.generate_class` with config/paper.yaml's
recipe for cub200 (25 DPM-Solver steps, guidance 7.5, K = 3 blended
conditions; 512 px), image set by image set, and per set it records:

- ``batch``: the images per sampler call the memory model chose;
- ``seconds_per_image``: median over the set's batches after the first (the
  steady rate); ``first_batch_seconds``: the first batch, which includes
  compilation when the UNet is compiled;
- ``peak_allocated_gib`` / ``peak_reserved_gib``: the peak of torch's CUDA
  allocator during the set (reserved is what the process holds from the
  driver; add ~0.5 GiB of CUDA context for what nvidia-smi shows).

Variants: ``default`` (the paper config's settings: at most 80 images per
call within ``gpu_memory_gib: 16``, the VAE decoding one image at a time,
compile ``auto``), ``compiled`` (``compile: on``) and ``unbounded`` (as
before issue #9: 80 images per call with the whole GPU as budget, the VAE
decoding all of them at once; on a card where that does not fit the memory
model lowers the batch, and the row says so). Issue #9's goal: ``default``
peaks below 20 GiB.

    # the measurement (a CUDA GPU; ~10 min on an H100, most of it compiling and saving the model):
    python benchmarks/bench_sd_generation.py --render
    # a CPU sanity check of the same code with a tiny model (what tests/e2e re-runs):
    OMP_NUM_THREADS=1 python benchmarks/bench_sd_generation.py --config tiny-cpu --render

Results go to ``benchmarks/results/sd_generation.csv`` (rows of other
configs and devices are kept) and, with ``--render``, into the generated
blocks of BENCHMARKS.md and docs/generation.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlsynth import config as cfg  # noqa: E402
from dmlsynth import docblocks  # noqa: E402
from dmlsynth.generation.prompts import write_prompts  # noqa: E402
from dmlsynth.generation.run import generate_class  # noqa: E402
from dmlsynth.generation.settings import generation_settings, images_generated  # noqa: E402
from dmlsynth.generation.generators import load_generator  # noqa: E402
from dmlsynth.generation.tokenizer import build_tokenizer  # noqa: E402

SCRIPT = "benchmarks/bench_sd_generation.py"
RESULTS = "benchmarks/results/sd_generation.csv"
GIB = 1024**3
IMAGE_SETS = ("blender", "plain")  # union and intersection cost what blender costs (same K)

# Model shapes. sd15: Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L/14 text encoder, the KL VAE), 512 px.
CONFIGS = {
    "sd15": {
        "unet": {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "attention_head_dim": 8,
                 "norm_num_groups": 32, "sample_size": 64},
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
        "images": 160, "steps": None, "settings": {}, "variants": ("default", "compiled", "unbounded"),
    },
    "tiny-cpu": {
        "unet": {"block_out_channels": (32, 64), "layers_per_block": 1, "attention_head_dim": 8, "norm_num_groups": 8,
                 "sample_size": 8},
        "vae": {"block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 16},
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        # Three images per call: two calls per set, so the steady rate is measured after the first.
        "images": 6, "steps": 3, "settings": {"batch_size": 3}, "variants": ("default",),
    },
}  # fmt: skip
VARIANTS = {
    "default": {},
    "compiled": {"compile": "on"},
    "unbounded": {"batch_size": 80, "gpu_memory_gib": None, "vae_slicing": "off", "compile": "off"},
}
PROMPTS = [
    "a photo of a bird, black footed albatross",
    "a photo of a bird, black footed albatross, hooked bill",
    "a photo of a bird, black footed albatross, brown wings",
    "a photo of a bird, black footed albatross, white under tail",
    "a photo of a bird, black footed albatross, long wings",
    "a photo of a bird, black footed albatross, on the water",
]
# Paper config: training classes and images per class and set, per dataset (for the estimate in docs/generation.md).
PAPER_CLASSES = {"cub200": 100, "cars196": 98}


def save_model(shapes: dict, folder: Path) -> Path:
    """A random model of the given shapes in the diffusers layout (fp16 weights: half the disk)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer(PROMPTS, folder / "tokenizer_words", max_length=77)
    tokenizer.save_pretrained(folder / "tokenizer")  # with its max length, as a real model folder has it
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1, **shapes["text"]))  # fmt: skip
    blocks = len(shapes["unet"]["block_out_channels"])
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, cross_attention_dim=shapes["text"]["hidden_size"],
        down_block_types=("CrossAttnDownBlock2D",) * (blocks - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (blocks - 1), **shapes["unet"],
    )  # fmt: skip
    vae_blocks = len(shapes["vae"]["block_out_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * vae_blocks,
                        up_block_types=("UpDecoderBlock2D",) * vae_blocks, **shapes["vae"])  # fmt: skip
    half = torch.float16 if shapes is CONFIGS["sd15"] else torch.float32
    unet.to(half).save_pretrained(folder / "unet")
    vae.to(half).save_pretrained(folder / "vae")
    text.to(half).save_pretrained(folder / "text_encoder")
    # SD 1.5's noise schedule.
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                  clip_sample=False, set_alpha_to_one=False).save_pretrained(folder / "scheduler")  # fmt: skip
    return folder


def sampler_calls(part: pd.DataFrame) -> list[tuple[int, float]]:
    """(images, seconds) of each sampler call, in order: a call's images are consecutive rows of the part."""
    calls, row = [], 0
    while row < len(part):
        size = int(part["batch"].iloc[row])
        calls.append((size, float(part["seconds"].iloc[row:row + size].sum())))
        row += size
    return calls


def image_checksum(folder: Path, paths) -> str:
    """md5 of the decoded pixels of the set's images, in order (the same images give the same digest)."""
    digest = hashlib.md5()
    for path in paths:
        with Image.open(folder / path) as image:
            digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()[:12]


def measure(config: str, device: str, variants, workdir: Path, images: int | None = None) -> pd.DataFrame:
    shapes = CONFIGS[config]
    model = save_model(shapes, workdir / "model")
    paper = cfg.load(ROOT / "config" / "paper.yaml")
    recipe = generation_settings(paper, "cub200")
    recipe.update(model_id=str(model), device=device, images_per_class=images or shapes["images"])
    # The sampler's cost per image: exactly the images asked for. The filter's extra images are added
    # in the per-class cost (render_paper_generation), not generated here.
    recipe["filter"] = {**recipe["filter"], "scorer": "none"}
    if shapes["steps"]:
        recipe["steps"] = shapes["steps"]
    recipe.update(shapes["settings"])
    prompts = write_prompts(
        {"dataset": "cub200", "classes": [{"label": 1, "class_name": "001.Black_footed_Albatross",
                                           "plain": PROMPTS[0], "prompts": PROMPTS[1:]}]},
        workdir / "prompts.yaml",
    )  # fmt: skip
    cuda = device.startswith("cuda")
    base = {
        "config": config, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "date": datetime.date.today().isoformat(), "torch": torch.__version__.split("+")[0],
        "steps": int(recipe["steps"]), "guidance_scale": float(recipe["guidance_scale"]),
    }  # fmt: skip
    rows = []
    for variant in variants:
        settings = {**copy.deepcopy(recipe), **VARIANTS[variant]}
        if cuda:
            torch.cuda.empty_cache()
        loaded = time.perf_counter()
        components = load_generator(settings, None, list(IMAGE_SETS))
        load_seconds = time.perf_counter() - loaded
        weights = torch.cuda.memory_allocated(device) if cuda else 0
        image_size = components.image_size()
        for image_set in IMAGE_SETS:
            out = workdir / variant / image_set
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            try:
                part = generate_class(components, prompts, 1, [1], [image_set], settings, out, out / "part.csv")
            except Exception as error:  # noqa: BLE001 - e.g. 'unbounded' on a card that is too small: recorded
                rows.append(dict(base, variant=variant, image_set=image_set, error=f"{type(error).__name__}: {error}"[:200]))
                continue
            wall = time.perf_counter() - started
            batches = sampler_calls(part)
            steady = [seconds / size for size, seconds in batches[1:]] or [batches[0][1] / batches[0][0]]
            rows.append(
                dict(
                    base, variant=variant, image_set=image_set, k=3 if image_set != "plain" else 1,
                    images=len(part), image_size=image_size, batch=int(part.batch.max()), batches=len(batches),
                    compile=str(settings["compile"]), vae_slicing=str(settings["vae_slicing"]),
                    gpu_memory_gib=settings["gpu_memory_gib"], seconds_per_image=statistics.median(steady),
                    first_batch_seconds=batches[0][1], wall_seconds=wall, load_seconds=load_seconds,
                    weights_gib=weights / GIB,
                    peak_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB if cuda else float("nan"),
                    peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB if cuda else float("nan"),
                    checksum=image_checksum(out / image_set, part.path), error="",
                )
            )  # fmt: skip
            print(f"{variant:>9} {image_set:>8}: batch {rows[-1]['batch']}, {rows[-1]['seconds_per_image']:.3f} s/image, "
                  f"peak {rows[-1]['peak_allocated_gib']:.2f} GiB allocated / {rows[-1]['peak_reserved_gib']:.2f} reserved", flush=True)  # fmt: skip
        del components
    return pd.DataFrame(rows)


def _measured(frame: pd.DataFrame) -> pd.Series:
    """Rows that did not fail (``error`` empty; an all-empty column reads back as NaN)."""
    if "error" not in frame:
        return pd.Series(True, index=frame.index)
    return frame["error"].isna() | (frame["error"].astype(str) == "")


def _gib(value: float) -> str:
    return "—" if pd.isna(value) else f"{value:.2f}"


def render(frame: pd.DataFrame) -> str:
    """BENCHMARKS.md: per config and device, each variant's batch, speed and peak memory per image set."""
    lines = []
    for (config, device), part in frame.groupby(["config", "device"], sort=False):
        measured = part[_measured(part)]
        first = (measured if len(measured) else part).iloc[0]
        lines.append(
            f"**{config}** on {device}, {first['date']}, torch {first['torch']}: {int(first['image_size'])} px, "
            f"{int(first['steps'])} DPM-Solver steps, guidance {first['guidance_scale']:g}, "
            f"{int(first['images'])} images per set"
            + (f", weights {first['weights_gib']:.2f} GiB" if first["weights_gib"] > 0 else " (CPU: no GPU memory)")
        )
        lines.append("")
        lines.append("| variant | image set | K | images per call | s / image | first call (s) | peak allocated (GiB) | peak reserved (GiB) |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for index, row in part.iterrows():
            if not _measured(part.loc[[index]]).iloc[0]:
                lines.append(f"| {row['variant']} | {row['image_set']} | — | — | failed: {row['error'][:60]} | — | — | — |")
                continue
            lines.append(
                f"| {row['variant']} | {row['image_set']} | {int(row['k'])} | {int(row['batch'])} | "
                f"{row['seconds_per_image']:.3f} | {row['first_batch_seconds']:.1f} | "
                f"{_gib(row['peak_allocated_gib'])} | {_gib(row['peak_reserved_gib'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def render_paper_generation(frame: pd.DataFrame) -> str:
    """docs/generation.md: generation time of the paper config at the measured default rate of an SD-1.5-shaped model."""
    rows = frame[(frame.config == "sd15") & (frame.variant == "default")]
    rows = rows[_measured(rows)]
    if rows.empty:
        return (
            "Not measured on a GPU yet: `python benchmarks/bench_sd_generation.py --render` on a CUDA machine "
            "measures Stable Diffusion generation and writes the times here.\n"
        )
    paper = generation_settings(cfg.load(ROOT / "config" / "paper.yaml"), "cub200")
    lines = [
        f"| GPU | s / image (K = 3 / plain) | peak memory | one class (4 sets x {images_generated(paper)}, the filter's extra "
        "included) | CUB (100 classes) | Cars (98 classes) |",
        "|---|---|---|---|---|---|",
    ]
    for device, part in rows.groupby("device", sort=False):
        blended = float(part.loc[part.image_set == "blender", "seconds_per_image"].iloc[0])
        plain = float(part.loc[part.image_set == "plain", "seconds_per_image"].iloc[0])
        # Three blended sets (blender, union, intersection) and the plain set, measured at the paper's steps.
        per_class = images_generated(paper) * (3 * blended + plain)
        peak = float(part["peak_reserved_gib"].max())
        lines.append(
            f"| {device} ({part['date'].iloc[0]}) | {blended:.3f} / {plain:.3f} | {peak:.1f} GiB | {per_class / 60:.1f} min | "
            f"{PAPER_CLASSES['cub200'] * per_class / 3600:.1f} h | {PAPER_CLASSES['cars196'] * per_class / 3600:.1f} h |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="sd15")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None, help="images per set (default: the config's)")
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--render", action="store_true", help="write the blocks of BENCHMARKS.md and docs/generation.md")
    args = parser.parse_args()
    if args.config == "sd15" and not args.device.startswith("cuda"):
        parser.error("the SD-1.5-shaped model needs a CUDA GPU (the CPU sanity check is --config tiny-cpu)")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.device == "cpu":
        torch.set_num_threads(1)  # CPU numbers comparable between runs (and with the committed rows)

    with tempfile.TemporaryDirectory(prefix="dmlsynth-sd-bench-") as tmp:
        frame = measure(args.config, args.device, args.variants or CONFIGS[args.config]["variants"], Path(tmp), args.images)
    frame = docblocks.record_rows(args.out, frame, ["config", "device"])  # other configs and devices kept
    if args.render:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render, "render_paper_generation": render_paper_generation})


if __name__ == "__main__":
    main()
