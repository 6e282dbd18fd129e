"""Per-class fine-tuning of Stable Diffusion: seconds per step and peak GPU memory.

A Stable-Diffusion-1.5-shaped model with random weights (no download; the
model of ``bench_sd_generation.py``) is fine-tuned on one class of 30 random
512 px images (a CUB class has about 30) by
:func:`dmlsynth.generation.fine_tuning.fine_tune_class` with
config/paper.yaml's settings for cub200 (LoRA rank 4 + textual inversion,
batch 4, bf16 autocast on CUDA), for a few steps instead of the paper's 400,
and it records:

- ``seconds_per_step``: the optimizer steps' time per step (the first step,
  which includes CUDA warm-up, among them); ``wall_seconds``: the whole job
  (loading the model and encoding the images too);
- ``peak_allocated_gib`` / ``peak_reserved_gib``: the peak of torch's CUDA
  allocator during the job;
- ``final_loss`` and ``lora_checksum``: what the same config reproduces exactly
  on the CPU (``tests/e2e/test_sd_fine_tuning_benchmark.py``).

    # the measurement (a CUDA GPU; a few minutes on an H100, most of it saving the model):
    python benchmarks/bench_sd_fine_tuning.py --render
    # a CPU sanity check of the same code with a tiny model (what tests/e2e re-runs):
    OMP_NUM_THREADS=1 python benchmarks/bench_sd_fine_tuning.py --config tiny-cpu

Results go to ``benchmarks/results/sd_fine_tuning.csv`` (rows of other
configs and devices are kept) and, with ``--render``, into the generated
block of docs/generation.md (the paper config's fine-tuning time at the measured rate).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import logging
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
from dmlsynth import layout  # noqa: E402
from dmlsynth.data.split import training_class_count  # noqa: E402
from dmlsynth import docblocks  # noqa: E402
from dmlsynth.docblocks import load_renderer  # noqa: E402
from dmlsynth.generation.fine_tuning import fine_tune_class  # noqa: E402
from dmlsynth.generation.settings import generation_settings  # noqa: E402

SCRIPT = "benchmarks/bench_sd_fine_tuning.py"
RESULTS = "benchmarks/results/sd_fine_tuning.csv"
GIB = 1024**3
IMAGES = 30
# Steps measured per config (the paper runs 400; the rate per step is what is measured) and image size.
MEASURE = {"sd15": {"steps": 30, "image_size": 512}, "tiny-cpu": {"steps": 6, "image_size": 24}}
DATASETS = ("cub200", "cars196")


def generation_benchmark() -> dict:
    """The generation benchmark's module namespace: one definition of the SD-1.5-shaped model (``save_model``)."""
    return load_renderer(ROOT, "benchmarks/bench_sd_generation.py", "save_model").__globals__


def class_images(folder: Path, count: int, size: int) -> list[str]:
    """``count`` random RGB images (fixed seed), a little wider than tall: resized and cropped like photos."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)).save(path, quality=95)
        files.append(str(path))
    return files


def tensor_checksum(file: Path) -> str:
    """md5 of a safetensors file's tensors (names and values, in name order), not of its metadata."""
    from safetensors.torch import load_file

    digest = hashlib.md5()
    for name, tensor in sorted(load_file(file).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def measure(config: str, device: str, workdir: Path) -> pd.DataFrame:
    shared = generation_benchmark()
    model = shared["save_model"](shared["CONFIGS"][config], workdir / "model")
    paper = cfg.load(ROOT / "config" / "paper.yaml")
    settings = generation_settings(paper, "cub200")
    steps = MEASURE[config]["steps"]
    settings.update(model_id=str(model), device=device)
    settings["fine_tuning"] = {**settings["fine_tuning"], "steps": steps, "checkpoint_every": steps}
    prompts = shared["PROMPTS"]
    entry = {"label": 1, "class_name": "001.Black_footed_Albatross", "plain": prompts[0], "prompts": prompts[1:]}
    files = class_images(workdir / "images", IMAGES, MEASURE[config]["image_size"])
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    out = workdir / "fine_tuned"
    summary = fine_tune_class(settings, files, entry, "cub200", 1, out, workdir / "checkpoint.pt")
    wall = time.perf_counter() - started
    tuning = settings["fine_tuning"]
    row = {
        "config": config, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "date": datetime.date.today().isoformat(), "torch": torch.__version__.split("+")[0],
        "method": tuning["method"], "rank": int(tuning["rank"]), "batch_size": int(tuning["batch_size"]),
        "resolution": int(summary["resolution"]), "images": IMAGES, "steps": steps,
        "seconds_per_step": summary["seconds_per_step"], "wall_seconds": wall,
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB if cuda else float("nan"),
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB if cuda else float("nan"),
        "final_loss": summary["final_loss"],
        "lora_checksum": tensor_checksum(out / layout.FINE_TUNED_LORA),
    }  # fmt: skip
    print(f"{config} on {row['device']}: {row['seconds_per_step']:.3f} s/step, peak {row['peak_reserved_gib']:.2f} GiB reserved",
          flush=True)  # fmt: skip
    return pd.DataFrame([row])


def render_paper_fine_tuning(frame: pd.DataFrame) -> str:
    """docs/generation.md: fine-tuning time of the paper config at the rate measured with an SD-1.5-shaped model."""
    rows = frame[frame.config == "sd15"]
    if rows.empty:
        return (
            "Not measured on a GPU yet: `python benchmarks/bench_sd_fine_tuning.py --render` on a CUDA machine "
            "measures per-class fine-tuning and writes the times here.\n"
        )
    paper = cfg.load(ROOT / "config" / "paper.yaml")
    steps = {d: int(generation_settings(paper, d)["fine_tuning"]["steps"]) for d in DATASETS}
    classes = {d: training_class_count(paper, d) for d in DATASETS}
    lines = [
        f"| GPU | s / step (batch {int(rows['batch_size'].iloc[0])}, {int(rows['resolution'].iloc[0])} px) | peak memory | "
        f"one class ({steps['cub200']} steps) | CUB ({classes['cub200']} classes) | Cars ({classes['cars196']} classes) |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in rows.iterrows():
        per_class = {d: steps[d] * float(row["seconds_per_step"]) for d in DATASETS}
        lines.append(
            f"| {row['device']} ({row['date']}) | {row['seconds_per_step']:.3f} | {row['peak_reserved_gib']:.1f} GiB | "
            f"{per_class['cub200'] / 60:.1f} min | {classes['cub200'] * per_class['cub200'] / 3600:.1f} h | "
            f"{classes['cars196'] * per_class['cars196'] / 3600:.1f} h |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(MEASURE), default="sd15")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--render", action="store_true", help="write the block of docs/generation.md")
    args = parser.parse_args()
    if args.config == "sd15" and not args.device.startswith("cuda"):
        parser.error("the SD-1.5-shaped model needs a CUDA GPU (the CPU sanity check is --config tiny-cpu)")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.device == "cpu":
        torch.set_num_threads(1)  # CPU numbers comparable between runs (and with the committed rows)

    with tempfile.TemporaryDirectory(prefix="dmlsynth-sd-fine-tuning-") as tmp:
        frame = measure(args.config, args.device, Path(tmp))
    frame = docblocks.record_rows(args.out, frame, ["config", "device"])  # other configs and devices kept
    if args.render:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render_paper_fine_tuning": render_paper_fine_tuning})


if __name__ == "__main__":
    main()
