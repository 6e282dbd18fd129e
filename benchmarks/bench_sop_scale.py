"""Stanford Online Products at its real size: the sampler, the exact search, the table's bootstrap, per-class generation.

Synthetic data of SOP's shape (``sop``: 59,551 training images of 11,318 classes; 60,502 test images of
11,316 classes, class sizes 2 to 12 as in SOP; 512-d clustered embeddings), through the project's own code:

- **sampler**: one epoch of the training loader's batches (``dmlsynth.training.build._FreshSampler``,
  pytorch-metric-learning's MPerClassSampler, batch 180 of 2 images per class) over the 11,318 classes;
- **retrieval**: :func:`dmlsynth.metrics.per_query_metrics` with R@1/10/100/1000 (exact faiss
  ``IndexFlatIP`` search of every test image among the others, in blocks of ``QUERY_BLOCK`` queries), and
  the same on the GPU where one is present (``device`` cuda: torch);
- **bootstrap**: the table's :class:`dmlsynth.stats.QueryBootstrap` (2,000 resamples of the 60,502
  queries): making the resamples, one run's replicates, and the memory the resample counts take;
- **generation**: what BLenDeR's per-class jobs mean at SOP's 11,318 training classes (one fine-tune,
  generate and filter job per class, ``images_per_class`` images per class and set), with GPU seconds
  from ``benchmarks/results/sd_generation.csv`` / ``sd_fine_tuning.csv`` where they hold a GPU row.

``--config tiny`` is what tests/e2e/test_sop_scale_benchmark.py re-runs from scratch (its exact columns:
shapes, checksums of the sampled batches, metric values).

    PYTHONPATH=src python benchmarks/bench_sop_scale.py --config sop --write

Results go to ``benchmarks/results/sop_scale.csv`` (rows of other configs and devices are kept); ``--write``
renders the BENCHMARKS.md block.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlsynth import docblocks  # noqa: E402
from dmlsynth.machine import facts_line, machine_facts  # noqa: E402

SCRIPT = "benchmarks/bench_sop_scale.py"
RESULTS = "benchmarks/results/sop_scale.csv"
CONFIGS = {
    # Stanford Online Products' counts (dmlsynth.data.sop.EXPECTED).
    "sop": dict(train_images=59_551, train_classes=11_318, test_images=60_502, test_classes=11_316, dim=512,
                batch=180, m=2, ks=(1, 10, 100, 1000), resamples=2000, images_per_class=150, sets=4, noise=2.2),
    "tiny": dict(train_images=1_200, train_classes=230, test_images=1_000, test_classes=200, dim=32,
                 batch=40, m=2, ks=(1, 10, 100), resamples=200, images_per_class=150, sets=4, noise=1.2),
}  # fmt: skip
EXACT = ["config", "part", "device", "n", "classes", "dim", "detail", "value", "checksum"]


def class_sizes(images: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """``classes`` sizes between 2 and 12 that sum to ``images`` (SOP: 2 to 12 images per product)."""
    sizes = np.full(classes, 2)
    extra = images - sizes.sum()
    while extra > 0:
        grow = rng.choice(np.flatnonzero(sizes < 12), size=min(extra, classes), replace=False)
        sizes[grow] += 1
        extra -= len(grow)
    return sizes


def embeddings(images: int, classes: int, dim: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Class centres plus Gaussian noise; ``noise`` sets how hard retrieval is (not trivially perfect)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), class_sizes(images, classes, rng))
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    x = centres[labels] + rng.normal(scale=noise, size=(len(labels), dim)).astype(np.float32)
    return x, labels


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]


def _timed(function):
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def measure_sampler(config: str, setup: dict, facts: dict) -> list[dict]:
    from dmlsynth.training.build import _FreshSampler
    from dmlsynth.training.checkpoint import seed_everything

    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(setup["train_classes"]), class_sizes(setup["train_images"], setup["train_classes"], rng)).tolist()
    batches = setup["train_images"] // setup["batch"]
    seed_everything(0)  # as a run seeds pml's sampler stream
    sampler, make_seconds, _ = _timed(lambda: _FreshSampler(targets, setup["m"], setup["batch"], batches * setup["batch"], first_generated=len(targets)))
    indices, epoch_seconds, peak = _timed(lambda: np.array(list(sampler)))
    batch_classes = [len(set(np.asarray(targets)[indices[i : i + setup["batch"]]])) for i in range(0, len(indices), setup["batch"])]
    base = dict(config=config, part="sampler", device="cpu", n=setup["train_images"], classes=setup["train_classes"], dim=0, **facts)
    return [
        {**base, "detail": f"one epoch: {batches} batches of {setup['batch']} ({setup['m']} per class)", "value": float(len(indices)),
         "seconds": epoch_seconds, "setup_seconds": make_seconds, "peak_mb": peak, "checksum": _checksum(indices)},
        {**base, "detail": "classes per batch (mean)", "value": float(np.mean(batch_classes)), "seconds": np.nan,
         "setup_seconds": np.nan, "peak_mb": np.nan, "checksum": ""},
    ]  # fmt: skip


def measure_retrieval(config: str, setup: dict, facts: dict, device: str) -> tuple[list[dict], dict]:
    from dmlsynth.metrics import QUERY_BLOCK, per_query_metrics

    x, labels = embeddings(setup["test_images"], setup["test_classes"], setup["dim"], seed=1, noise=setup["noise"])
    per_query, seconds, peak = _timed(lambda: per_query_metrics(x, labels, setup["ks"], device=device))
    per_query["labels"] = labels  # as the run's queries.npz holds them (dmlsynth.evaluation)
    kept = per_query["kept"]
    rows = [
        dict(config=config, part="retrieval", device=device, n=len(labels), classes=setup["test_classes"], dim=setup["dim"],
             detail=name, value=round(float(per_query[name][kept].mean()), 6), seconds=seconds, setup_seconds=np.nan,
             peak_mb=peak, checksum=f"block {QUERY_BLOCK}", **facts)
        for name in [*(f"recall@{k}" for k in setup["ks"]), "map@r"]
    ]  # fmt: skip
    return rows, per_query


def measure_bootstrap(config: str, setup: dict, facts: dict, per_query: dict) -> list[dict]:
    from dmlsynth import stats

    n = len(per_query["labels"])
    boot, make_seconds, make_peak = _timed(lambda: stats.QueryBootstrap(n, setup["resamples"], seed=0))
    names = [f"recall@{k}" for k in setup["ks"]] + ["map@r"]
    replicates, seconds, peak = _timed(lambda: boot.replicates(per_query, names))
    low, high = stats.percentile_interval(replicates["recall@1"], 0.95)
    base = dict(config=config, part="bootstrap", device="cpu", n=n, classes=setup["test_classes"], dim=0, **facts)
    return [
        {**base, "detail": f"{setup['resamples']} resamples: counts (MB, {boot.counts.dtype})", "value": round(boot.counts.nbytes / 2**20, 3),
         "seconds": make_seconds, "setup_seconds": np.nan, "peak_mb": make_peak, "checksum": _checksum(boot.counts[:5])},
        {**base, "detail": f"one run's replicates of {len(names)} metrics; R@1 interval width", "value": round(high - low, 6),
         "seconds": seconds, "setup_seconds": np.nan, "peak_mb": peak, "checksum": ""},
    ]  # fmt: skip


def generation_rows(config: str, setup: dict, facts: dict) -> list[dict]:
    """Per-class BLenDeR jobs at this many training classes; GPU seconds from the generation benchmarks' GPU rows."""
    classes, images = setup["train_classes"], setup["images_per_class"]
    per_image = _gpu_value(ROOT / "benchmarks/results/sd_generation.csv", "seconds_per_image", "default")
    fine_tune_steps, per_step = 400, _gpu_value(ROOT / "benchmarks/results/sd_fine_tuning.csv", "seconds_per_step", None)
    sampled = classes * images * setup["sets"]
    base = dict(config=config, part="generation", device="arithmetic", n=classes, classes=classes, dim=0, setup_seconds=np.nan, peak_mb=np.nan, checksum="", **facts)
    return [
        {**base, "detail": "per-class jobs (fine_tune + generate + filter_generated)", "value": float(3 * classes), "seconds": np.nan},
        {**base, "detail": f"images sampled ({images} per class and set, {setup['sets']} sets)", "value": float(sampled),
         "seconds": sampled * per_image if per_image == per_image else np.nan},
        {**base, "detail": f"fine-tuning steps ({fine_tune_steps} per class)", "value": float(classes * fine_tune_steps),
         "seconds": classes * fine_tune_steps * per_step if per_step == per_step else np.nan},
    ]  # fmt: skip


def _gpu_value(path: Path, column: str, variant: str | None) -> float:
    """The column of the CSV's first GPU row (device cuda...), NaN where none was measured."""
    if not path.is_file():
        return float("nan")
    frame = pd.read_csv(path)
    gpu = frame[frame["device"].astype(str).str.startswith("cuda")]
    if variant is not None and "variant" in gpu.columns:
        gpu = gpu[gpu["variant"] == variant]
    return float(gpu[column].iloc[0]) if len(gpu) else float("nan")


def measure(config: str, devices: tuple[str, ...] | None = None) -> pd.DataFrame:
    import torch

    torch.set_num_threads(1)
    facts = machine_facts()
    setup = CONFIGS[config]
    devices = devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    rows = measure_sampler(config, setup, facts)
    per_query = None
    for device in devices:
        found, on_device = measure_retrieval(config, setup, facts, device)
        rows += found
        per_query = per_query if per_query is not None else on_device
    rows += measure_bootstrap(config, setup, facts, per_query)
    rows += generation_rows(config, setup, facts)
    return pd.DataFrame(rows)


def _seconds(value: float) -> str:
    return "—" if value != value else f"{value:,.1f} s" if value < 3600 else f"{value / 3600:,.1f} h"


def render(frame: pd.DataFrame) -> str:
    """BENCHMARKS.md: the SOP-size rows, by part."""
    frame = frame[frame.config == "sop"]
    order = {part: i for i, part in enumerate(("sampler", "retrieval", "bootstrap", "generation"))}
    frame = frame.sort_values("part", key=lambda parts: parts.map(order), kind="stable")
    if frame.empty:
        return f"Not measured yet: `PYTHONPATH=src python {SCRIPT} --config sop --write` measures it and writes it here.\n"
    first = frame.iloc[0]
    lines = [f"Synthetic data of Stanford Online Products' size; {facts_line(first)}", ""]
    lines += ["| part | device | size | what | value | seconds | peak numpy MB |", "|---|---|---|---|---:|---:|---:|"]
    for _, row in frame.iterrows():
        size = f"{int(row['n']):,} × {int(row['dim'])}" if row["dim"] else f"{int(row['n']):,} ({int(row['classes']):,} classes)"
        value = f"{row['value']:,.0f}" if float(row["value"]).is_integer() and row["value"] > 100 else f"{row['value']:.4g}"
        peak = "" if row["peak_mb"] != row["peak_mb"] else f"{row['peak_mb']:,.0f}"
        lines.append(f"| {row['part']} | {row['device']} | {size} | {row['detail']} | {value} | {_seconds(row['seconds'])} | {peak} |")
    gpu = frame[(frame.part == "retrieval") & frame.device.astype(str).str.startswith("cuda")]
    generation = frame[frame.part == "generation"]
    lines += [
        "",
        ("Retrieval on the GPU: measured above." if len(gpu) else
         "Retrieval on the GPU (`device` cuda, torch): **not measured** — no GPU was lent to the task that ran this; "
         "the code path is tested on CUDA where one is present (tests/unit/test_query_gallery.py)."),
        ("BLenDeR at SOP's classes: the job and image counts are arithmetic (one fine-tune, generate and filter job per "
         "class); their GPU time is " + ("from the generation benchmarks' GPU rows." if generation["seconds"].notna().any()
         else "**not measured** (benchmarks/results/sd_generation.csv and sd_fine_tuning.csv have no GPU row yet).")),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="sop")
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--write", action="store_true", help="render the BENCHMARKS.md block from the results")
    args = parser.parse_args()

    frame = measure(args.config)
    print(frame[["part", "device", "detail", "value", "seconds", "peak_mb"]].to_string(index=False))
    for _, rows in frame.groupby("device", sort=False):  # record_rows replaces one (config, device) at a time
        docblocks.record_rows(args.out, rows, ["config", "device"], float_format="%.6g", order=list(CONFIGS))
    if args.write:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render})


if __name__ == "__main__":
    main()
