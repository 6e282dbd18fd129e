"""Paper-protocol training throughput against its model-only and loader-only bounds, measured in one run.

Synthetic CUB-sized JPEGs are made on the fly (no download) and the model
has random weights (``pretrained: false``); everything else is the real
code with config/paper.yaml's training settings: ResNet-50 at 224 px, batch
120 (30 classes x 4), mixed precision, its 8 loader workers (``--workers``). For
each loader variant -- the resized copy of the images (``cache_short_side``
256, what the paper config reads) or the originals, decoded by the loader
workers or on the device -- it measures, in images per second:

- ``model_only``: :func:`dmlsynth.training.loop.train_step` on one batch
  that stays on the device (forward, loss, backward, optimizer step): the
  bound no loader can beat; measured once per run, before and after the
  variants (the better of the two counts);
- ``loader_only``: the training loader alone, each batch turned into the
  model input on the device (:meth:`ImageInput.to_model`), no model;
- ``full``: training epochs (:func:`dmlsynth.training.loop.train_epoch`),
  images per second of epoch time as ``train_log.csv`` records it.

Epoch rates are the median over the epochs after the first; the first
(which starts the workers) is reported on its own. The goal (issue #9) is
``full`` >= 0.8 x ``model_only``.

    # the measurement (a CUDA GPU; about 10 min on an H100):
    python benchmarks/bench_training_throughput.py --render
    # a CPU sanity check of the same code in a minute (what tests/e2e re-runs):
    OMP_NUM_THREADS=1 python benchmarks/bench_training_throughput.py --config tiny-cpu --render

Results go to ``benchmarks/results/training_throughput.csv`` (rows of other
configs/devices are kept) and, with ``--render``, into the generated blocks
of BENCHMARKS.md and README.md (the paper benchmark).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlsynth import config as cfg, registry  # noqa: E402
from dmlsynth.data.image_cache import build_cache  # noqa: E402
from dmlsynth.data.manifest import write_manifest  # noqa: E402
from dmlsynth import docblocks  # noqa: E402
from dmlsynth.training.build import build_run  # noqa: E402
from dmlsynth.training.loop import set_up_torch, train_epoch, train_step  # noqa: E402

SCRIPT = "benchmarks/bench_training_throughput.py"
RESULTS = "benchmarks/results/training_throughput.csv"
# Paper protocol (config/paper.yaml) and a CPU sanity configuration of the same code.
CONFIGS = {
    "paper": dict(
        images=5_864, classes=100, backbone="resnet50", embedding_dim=512, image_size=224, batch_size=120,
        m_per_class=4, workers=None, epochs=4, model_steps=40, cache_short_side=256,
    ),
    "tiny-cpu": dict(
        images=96, classes=8, backbone="small_cnn", embedding_dim=32, image_size=64, batch_size=16,
        m_per_class=4, workers=2, epochs=3, model_steps=6, cache_short_side=73,
    ),
}  # fmt: skip
VARIANTS = ["copy:workers", "copy:device", "original:workers", "original:device"]
# CUB-200-2011: 5,864 training images (100 classes), 60 epochs; Cars-196: 8,054 (98 classes).
PAPER_RUNS = {"cub200": 5_864, "cars196": 8_054}
PAPER_EPOCHS = 60


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour blocks plus fine noise: about the JPEG size and decoding cost of a CUB photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    return Image.fromarray(np.clip(image + rng.integers(-12, 13, (height, width, 3)), 0, 255).astype(np.uint8))


def make_dataset(folder: Path, images: int, classes: int, long_side: int, threads: int) -> Path:
    """``images`` JPEGs shaped like CUB's (long side ``long_side``, 3/4 landscape), all in training classes."""
    rng = np.random.default_rng(0)
    shapes = []
    for _ in range(images):
        short = int(rng.integers(int(long_side * 0.56), long_side))
        shapes.append((long_side, short) if rng.random() < 0.75 else (short, long_side))
    (folder / "images").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        path = folder / "images" / f"{i:05d}.jpg"
        if not path.exists():
            _photo(*shapes[i], seed=i).save(path, quality=90)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(images)))
    labels = [i % classes + 1 for i in range(images)]
    frame = pd.DataFrame(
        {"path": [f"images/{i:05d}.jpg" for i in range(images)], "label": labels, "class_name": [f"c{l}" for l in labels]}
    )
    frame["split"] = "train"
    # Two images of one more class: the test split build_run expects (never read here).
    for i in range(2):
        frame.loc[len(frame)] = [f"images/{i:05d}.jpg", classes + 1, "test class", "test"]
    return write_manifest(frame, folder / "manifest.csv")


def run_params(setup: dict, cache_short_side: int, decoding: str, device: str, data: Path) -> dict:
    config = cfg.load(ROOT / "config" / "paper.yaml")
    config["paths"] = {"data": str(data), "results": str(data / "results"), "logs": str(data / "logs")}
    config["datasets"], config["methods"], config["losses"], config["exclude"] = ["cub200"], ["baseline"], ["multi_similarity"], []
    config["dataset_settings"]["cub200"].update(
        backbone=setup["backbone"], pretrained=False, embedding_dim=setup["embedding_dim"],
        image_size=setup["image_size"], cache_short_side=cache_short_side,
        validation_classes=0,  # throughput of training itself; the tiny set has too few classes to hold any out
    )  # fmt: skip
    config["training"].update(
        batch_size=setup["batch_size"], m_per_class=setup["m_per_class"], num_workers=setup["workers"],
        epochs=PAPER_EPOCHS, batches_per_epoch=None, image_decoding=decoding, device=device,
    )  # fmt: skip
    return cfg.run_params(cfg.validate(config), "cub200", "baseline", "multi_similarity", 0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(run, steps: int) -> tuple[float, float]:
    """(images/s, loss of the first step) of train_step on one resident batch."""
    images, labels = next(run.training_batches())
    first = train_step(run, images, labels, 0)
    for _ in range(max(2, steps // 5)):  # warm-up: cuDNN autotuning, allocator, AMP scale
        train_step(run, images, labels, 0)
    synchronize(run.device)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(run, images, labels, 0)
    synchronize(run.device)
    return steps * images.shape[0] / (time.perf_counter() - started), first


def loader_only(run, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        started, count = time.perf_counter(), 0
        for _, labels in run.training_batches():
            count += labels.shape[0]
        synchronize(run.device)
        rates.append(count / (time.perf_counter() - started))
    return rates


def full(run, epochs: int) -> tuple[list[float], float]:
    """Images/s of each training epoch, and the mean loss of the first."""
    rates, first_loss = [], None
    for epoch in range(epochs):
        row = train_epoch(run, epoch, progress=False)
        rates.append(run.batches_per_epoch * run.batch_size / row["seconds"])
        first_loss = row["loss"] if first_loss is None else first_loss
    return rates, first_loss


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def measure(
    setup_name: str, device_name: str, variants: list[str], workdir: Path, threads: int, workers: int | None = None
) -> pd.DataFrame:
    setup = dict(CONFIGS[setup_name])
    if workers is not None:
        setup["workers"] = workers
    elif setup["workers"] is None:  # the paper config's own setting
        setup["workers"] = int(cfg.load(ROOT / "config" / "paper.yaml")["training"]["num_workers"])
    long_side = 500 if setup_name == "paper" else 160
    started = time.perf_counter()
    manifest = make_dataset(workdir / "cub200", setup["images"], setup["classes"], long_side, threads=max(2, setup["workers"]))
    print(f"{setup['images']} synthetic JPEGs in {time.perf_counter() - started:.0f}s", flush=True)
    files = sorted((manifest.parent / "images").glob("*.jpg"))
    source_kb = np.mean([f.stat().st_size for f in files]) / 1e3
    cache_seconds, copy_kb = float("nan"), float("nan")
    if any(v.startswith("copy") for v in variants):
        started = time.perf_counter()
        index = build_cache(manifest, setup["cache_short_side"], threads=max(1, setup["workers"]), progress=False)
        cache_seconds = time.perf_counter() - started
        copies = pd.read_csv(index)["cached"].unique()
        copy_kb = np.mean([(index.parent / c).stat().st_size for c in copies]) / 1e3
    set_up_torch(threads)  # as train_run does
    device = torch.device(device_name)
    if device.type == "cuda":
        # The device name before anything else (e.g. the slot's GPU under CUDA_VISIBLE_DEVICES).
        device_label = torch.cuda.get_device_name(device)
    else:
        device_label = f"cpu, {threads} torch thread{'s' if threads > 1 else ''}"

    rows = []
    base = dict(
        config=setup_name, device=device_label, workers=setup["workers"], batch_size=setup["batch_size"],
        image_size=setup["image_size"], backbone=setup["backbone"], images=setup["images"],
        source_kb=round(source_kb, 1), date=datetime.date.today().isoformat(), torch=torch.__version__,
    )  # fmt: skip

    def build(variant: str):
        source, decoding = variant.split(":")
        short_side = setup["cache_short_side"] if source == "copy" else 0
        params = run_params(setup, short_side, decoding, device_name, workdir)
        torch.manual_seed(0)
        return build_run(params, manifest), source, decoding

    first_run, _, _ = build(variants[0])
    bound_before, model_loss = model_only(first_run, setup["model_steps"])
    print(f"model only: {bound_before:.0f} images/s", flush=True)
    del first_run
    for variant in variants:
        run, source, decoding = build(variant)
        loader_rates = loader_only(run, setup["epochs"])
        full_rates, first_loss = full(run, setup["epochs"])
        del run
        common = dict(base, variant=variant, source=source, decoding=decoding)
        common.update(copy_kb=round(copy_kb, 1) if source == "copy" else float("nan"))
        common.update(cache_seconds=round(cache_seconds, 1) if source == "copy" else float("nan"))
        rows.append(dict(common, measure="loader_only", images_per_s=steady(loader_rates), first_epoch_images_per_s=loader_rates[0], first_loss=float("nan")))
        rows.append(dict(common, measure="full", images_per_s=steady(full_rates), first_epoch_images_per_s=full_rates[0], first_loss=first_loss))
        print(f"{variant}: loader only {rows[-2]['images_per_s']:.0f}, full {rows[-1]['images_per_s']:.0f} images/s", flush=True)
    last_run, _, _ = build(variants[0])
    bound_after, _ = model_only(last_run, setup["model_steps"])
    bound = max(bound_before, bound_after)
    print(f"model only again: {bound_after:.0f} images/s", flush=True)
    for row in rows:
        row["model_only_images_per_s"] = bound
        row["ratio_to_model_only"] = row["images_per_s"] / bound
    rows.append(
        dict(base, variant="-", source="-", decoding="-", measure="model_only", images_per_s=bound,
             first_epoch_images_per_s=float("nan"), first_loss=model_loss, model_only_images_per_s=bound,
             ratio_to_model_only=1.0, copy_kb=float("nan"), cache_seconds=float("nan"))
    )  # fmt: skip
    return pd.DataFrame(rows)


def _fmt(value: float) -> str:
    return f"{value:,.0f}"


def render(frame: pd.DataFrame) -> str:
    """BENCHMARKS.md: every measured config and device, full / loader-only / model-only per variant."""
    lines = []
    for (config, device, _), part in frame.groupby(["config", "device", "workers"], sort=False):
        first = part.iloc[0]
        lines.append(
            f"**{config}** on {device}, {first['date']}, torch {first['torch']}: {first['backbone']} at "
            f"{first['image_size']} px, batch {first['batch_size']}, {first['workers']} loader workers, "
            f"{first['images']:,} synthetic JPEGs of {first['source_kb']:.0f} kB"
        )
        lines.append("")
        lines.append("| images read | decoded by | loader only | full training | full / model-only | first epoch (full) |")
        lines.append("|---|---|---|---|---|---|")
        bound = part.loc[part.measure == "model_only", "images_per_s"].iloc[0]
        for variant, rows in part[part.measure != "model_only"].groupby("variant", sort=False):
            loader = rows[rows.measure == "loader_only"].iloc[0]
            training = rows[rows.measure == "full"].iloc[0]
            source = (
                f"resized copy ({training['copy_kb']:.0f} kB; built in {training['cache_seconds']:.0f} s)"
                if training["source"] == "copy"
                else "originals"
            )
            where = "loader workers" if training["decoding"] == "workers" else "device"
            if training["decoding"] == "device":
                where += " (nvJPEG)" if not str(device).startswith("cpu") else " (main process)"
            lines.append(
                f"| {source} | {where} | {_fmt(loader['images_per_s'])} | "
                f"**{_fmt(training['images_per_s'])}** | **{training['ratio_to_model_only']:.2f}** | "
                f"{_fmt(training['first_epoch_images_per_s'])} |"
            )
        lines.append(f"| model only (resident batch) | — | — | {_fmt(bound)} | 1.00 | — |")
        lines.append("")
    return "\n".join(lines)


def paper_variant() -> str:
    """The loader variant config/paper.yaml trains with."""
    config = cfg.load(ROOT / "config" / "paper.yaml")
    source = "copy" if registry.dataset_settings(config, "cub200")["cache_short_side"] else "original"
    decoding = config["training"]["image_decoding"]
    return f"{source}:{decoding}"


def render_paper_times(frame: pd.DataFrame) -> str:
    """README: the time of one paper run's training epochs at the measured rate of the paper config's loader."""
    paper = frame[(frame.config == "paper") & (frame.measure == "full") & (frame.variant == paper_variant())]
    if paper.empty:
        return (
            "Not measured on a GPU yet: `python benchmarks/bench_training_throughput.py --render` on a CUDA "
            "machine measures the training throughput and writes the times here.\n"
        )
    lines = ["| GPU | images/s (full training) | CUB run (60 epochs) | Cars run (60 epochs) | 24 runs per method (CUB + Cars) |", "|---|---|---|---|---|"]
    for _, row in paper.iterrows():
        rate = row["images_per_s"]
        minutes = {name: PAPER_EPOCHS * (n // 120 * 120) / rate / 60 for name, n in PAPER_RUNS.items()}
        hours = 12 * (minutes["cub200"] + minutes["cars196"]) / 60
        lines.append(
            f"| {row['device']} ({row['date']}) | {_fmt(rate)} | {minutes['cub200']:.1f} min | {minutes['cars196']:.1f} min | {hours:.1f} GPU h |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="paper")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process (as train --threads)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the config's)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the synthetic images here between runs")
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--render", action="store_true", help="write the blocks of BENCHMARKS.md and README.md")
    args = parser.parse_args()
    if args.config == "paper" and args.device == "cpu":
        parser.error("the paper config needs a CUDA GPU (the CPU sanity check is --config tiny-cpu)")

    with tempfile.TemporaryDirectory(prefix="dmlsynth-throughput-") as tmp:
        frame = measure(args.config, args.device, args.variants, args.workdir or Path(tmp), args.threads, args.workers)
    print(frame[["variant", "measure", "images_per_s", "ratio_to_model_only", "first_epoch_images_per_s"]].to_string(index=False))
    frame = docblocks.record_rows(args.out, frame, ["config", "device", "workers"])  # other setups kept
    if args.render:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render, "render_paper_times": render_paper_times})


if __name__ == "__main__":
    main()
