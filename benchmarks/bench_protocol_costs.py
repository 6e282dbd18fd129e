"""What each protocol config costs: its jobs, its optimisation steps, and GPU-hours where a GPU was measured.

For the common protocol (config/paper.yaml) and each paper's (config/protocols/*.yaml), merged over
params.yaml as Snakemake merges it:

- **jobs**: training (and evaluation) runs of the job matrix (:func:`dmlsynth.resolve.runs`), and the
  per-class generation jobs of the BLenDeR methods (fine-tune, generate, filter: one each per training
  class, :func:`dmlsynth.data.split.training_class_count`); tests/e2e/test_protocols.py checks that the
  Snakemake dry run lists exactly these;
- **steps**: optimisation steps per run (epochs x batches per epoch; a config without batches_per_epoch
  makes one pass over the training images, counted from the datasets' published training-image counts
  less the validation classes' share, hence "≈") and the images all runs process;
- **GPU-hours**: the images processed divided by the images per second that
  ``benchmarks/results/training_throughput.csv`` measured on a CUDA GPU for the protocol's backbone, and
  the images generated times ``benchmarks/results/sd_generation.csv``'s seconds per image on a GPU. Where
  no GPU row exists the hours are **not measured**, and the table says so.

    PYTHONPATH=src python benchmarks/bench_protocol_costs.py --write

Writes ``benchmarks/results/protocol_costs.csv`` and renders the block of docs/protocols.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlsynth import docblocks  # noqa: E402

SCRIPT = "benchmarks/bench_protocol_costs.py"
RESULTS = "benchmarks/results/protocol_costs.csv"
PROTOCOLS = {
    "common": "config/paper.yaml",
    "iaa": "config/protocols/iaa.yaml",
    "symm": "config/protocols/symm.yaml",
    "sgar": "config/protocols/sgar.yaml",
    "blender": "config/protocols/blender.yaml",
}
THROUGHPUT = ROOT / "benchmarks/results/training_throughput.csv"
GENERATION = ROOT / "benchmarks/results/sd_generation.csv"


def merged(path: str) -> dict:
    """The config Snakemake runs: the protocol merged over params.yaml, as --configfile does."""
    from dmlsynth import config as cfg

    return cfg.load_layered(ROOT / "params.yaml", ROOT / path)


def training_images(dataset: str) -> int:
    """The published training-image count of a dataset (its module's EXPECTED)."""
    from dmlsynth import registry

    module = registry.load_object(registry.DATASETS[dataset].prepare.replace(":prepare", ":EXPECTED"))
    return int(module["train_images"])


def steps_per_run(config: dict, dataset: str) -> tuple[int, bool]:
    """(optimisation steps of one run on ``dataset``, whether the count is an estimate)."""
    from dmlsynth import config as cfg
    from dmlsynth.data.split import split_class_count, validation_class_count

    training = cfg.resolved_training(config["training"])
    if training["batches_per_epoch"]:
        return int(training["epochs"]) * int(training["batches_per_epoch"]), False
    share = 1 - validation_class_count(config, dataset) / split_class_count(config, dataset)
    per_epoch = max(1, int(training_images(dataset) * share) // int(training["batch_size"]))
    return int(training["epochs"]) * per_epoch, share < 1


def gpu_images_per_second(backbone: str) -> float:
    if not THROUGHPUT.is_file():
        return float("nan")
    frame = pd.read_csv(THROUGHPUT)
    rows = frame[frame["device"].astype(str).str.contains("cuda") & (frame["backbone"] == backbone) & (frame["measure"] == "full")]
    return float(rows["images_per_s"].max()) if len(rows) else float("nan")


def gpu_seconds_per_image() -> float:
    if not GENERATION.is_file():
        return float("nan")
    frame = pd.read_csv(GENERATION)
    rows = frame[frame["device"].astype(str).str.startswith("cuda")]
    return float(rows["seconds_per_image"].iloc[0]) if len(rows) else float("nan")


def measure() -> pd.DataFrame:
    from dmlsynth import config as cfg
    from dmlsynth import registry, resolve
    from dmlsynth.data.split import training_class_count
    from dmlsynth.generation.fine_tuning import fine_tunes
    from dmlsynth.generation.settings import generation_settings, image_sets

    rows = []
    for name, path in PROTOCOLS.items():
        config = merged(path)
        runs = resolve.runs(config)
        sets = image_sets(config)
        generation_jobs, generated_images = 0, 0
        if sets:
            for dataset in config["datasets"]:
                classes = training_class_count(config, dataset)
                settings = generation_settings(config, dataset)
                generation_jobs += classes * (3 if fine_tunes(settings) else 2)
                generated_images += classes * int(settings["images_per_class"]) * len(sets)
        batch = int(cfg.resolved_training(config["training"])["batch_size"])
        steps = {dataset: steps_per_run(config, dataset) for dataset in config["datasets"]}
        images = sum(steps[run["dataset"]][0] * batch for run in runs)
        backbones = sorted({registry.dataset_settings(config, d)["backbone"] for d in config["datasets"]})
        rates = [gpu_images_per_second(b) for b in backbones]
        train_hours = images / min(rates) / 3600 if rates and all(r == r for r in rates) else float("nan")
        per_image = gpu_seconds_per_image()
        rows.append(
            {
                "protocol": name, "config": path, "datasets": " ".join(config["datasets"]),
                "backbones": " ".join(backbones), "methods": len(config["methods"]), "losses": len(config["losses"]),
                "seeds": len(config["seeds"]), "train_jobs": len(runs), "evaluate_jobs": len(runs),
                "generation_jobs": generation_jobs, "generated_images": generated_images,
                "steps_per_run": " ".join(f"{d}:{'≈' if estimate else ''}{s}" for d, (s, estimate) in steps.items()),
                "images_trained": images, "gpu_hours_training": train_hours,
                "gpu_hours_generation": generated_images * per_image / 3600 if generated_images and per_image == per_image else (0.0 if not generated_images else float("nan")),
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def _hours(value: float) -> str:
    return "not measured" if value != value else f"{value:,.1f}"


def render(frame: pd.DataFrame) -> str:
    """docs/protocols.md: one line per protocol."""
    lines = [
        "| protocol | config | datasets | backbone | train + evaluate jobs | per-class generation jobs (images) "
        "| steps per run | images trained | GPU-hours training | GPU-hours generation |",
        "|---|---|---|---|---:|---:|---|---:|---|---|",
    ]
    for _, r in frame.iterrows():
        generation = f"{int(r['generation_jobs']):,} ({int(r['generated_images']):,})" if r["generation_jobs"] else "—"
        generation_hours = "—" if not r["generation_jobs"] else _hours(r["gpu_hours_generation"])
        lines.append(
            f"| {r['protocol']} | `{r['config']}` | {r['datasets']} | {r['backbones']} | {int(r['train_jobs'])} + {int(r['evaluate_jobs'])} "
            f"| {generation} | {r['steps_per_run'].replace(' ', ', ')} | {int(r['images_trained']):,} "
            f"| {_hours(r['gpu_hours_training'])} | {generation_hours} |"
        )
    unmeasured = frame["gpu_hours_training"].isna().any()
    lines += [
        "",
        ("GPU-hours are **not measured**: `benchmarks/results/training_throughput.csv` and `sd_generation.csv` hold no "
         "GPU row yet (no GPU was lent to the tasks that wrote them). Once their scripts have run on a GPU, "
         f"`{SCRIPT} --write` fills these columns: images trained ÷ the measured images per second of the backbone, "
         "and images generated × the measured seconds per image." if unmeasured else
         "GPU-hours: images trained ÷ the GPU images per second measured for the backbone "
         "(`benchmarks/results/training_throughput.csv`), images generated × the GPU seconds per image (`sd_generation.csv`)."),
        "≈: one pass over the training images, counted from the published training-image count less the validation classes' share.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--write", action="store_true", help="render the docs/protocols.md block")
    args = parser.parse_args()
    frame = measure()
    print(frame.drop(columns=["config"]).to_string(index=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False, float_format="%.6g")
    if args.write:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render})


if __name__ == "__main__":
    main()
