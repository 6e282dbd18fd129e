"""What filtering costs and rejects on the embedded default (digits, params.yaml's generation recipe).

Trains the embedded generator as the workflow does with params.yaml's
``generation.digits`` (one thread), generates every training class's image
sets with the default filter (``images_per_class`` plus ``filter.extra`` extra
images per set) and runs each class's filter job (the fidelity classifier), as
the ``generate`` and ``filter_generated`` jobs do. Per image set it records
how many images were generated, rejected, kept and left unused, the sampling
seconds of the first ``images_per_class`` images (what an unfiltered run
makes) and of all of them, and the filter jobs' wall time.

Raw numbers go to benchmarks/results/filtering_digits.csv; ``--write-docs`` renders the
docs/generation.md block from them.

    PYTHONPATH=src python benchmarks/bench_filtering_digits.py --work /tmp/filtering --write-docs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "filtering_digits.csv"
SCRIPT = "benchmarks/bench_filtering_digits.py"
COLUMNS = [
    "image_set", "classes", "budget", "generated", "rejected", "kept", "unused", "kept_score",
    "sampling_seconds_budget", "sampling_seconds_all", "filter_seconds",
]  # fmt: skip


def setup(work: Path, params: Path):
    """Prepared digits, the trained generator, the prompts file, the config and the generation settings."""
    from dmlsynth.config import validate
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.data.prepare import prepare_dataset
    from dmlsynth.data.split import training_rows
    from dmlsynth.generation.embedded import load_embedded, train_embedded
    from dmlsynth.generation.prompts import build_prompts, write_prompts
    from dmlsynth.generation.settings import generation_settings

    config = yaml.safe_load(params.read_text())
    config["paths"] = {"data": str(work / "data"), "results": str(work / "results"), "logs": str(work / "logs")}
    config = validate(config)
    frame = read_manifest(prepare_dataset(config, "digits"))
    train = training_rows(frame, config, "digits").reset_index(drop=True)
    settings = generation_settings(config, "digits")
    folder = work / "generator"
    if not (folder / "generator.json").is_file():
        train_embedded(train, folder, settings["embedded"], settings["seed"], threads=1)
    prompts = write_prompts(build_prompts("digits", train), work / "prompts.yaml")
    return load_embedded(folder), prompts, train, config, settings


def measure(work: Path, params: Path) -> pd.DataFrame:
    from dmlsynth import registry
    from dmlsynth.generation.filtering import filter_counts, filter_generated
    from dmlsynth.jobs import Jobs
    from dmlsynth.generation.run import generate_class
    from dmlsynth.generation.settings import image_sets

    components, prompts, train, config, settings = setup(work, params)
    labels = sorted(int(l) for l in train.label.unique())
    sets = image_sets(config)
    budget = int(settings["images_per_class"])
    generated_dir = work / "generated"
    filtered, filter_seconds = [], 0.0
    jobs = Jobs(config)
    for index, label in enumerate(labels):
        part_file = generated_dir / "parts" / f"class{index}.csv"
        generate_class(components, prompts, label, labels, sets, settings, generated_dir, part_file)
        # How the filter job's fidelity classifier sees the images: its record's (the dataset's) settings.
        job = jobs.filter_generated("digits", index)
        started = time.perf_counter()
        filtered.append(
            filter_generated(
                settings, registry.DATASETS["digits"].image_mode, int(job.params["image_size"]), bool(job.params["pretrained"]),
                part_file, generated_dir, prompts, train, generated_dir / f"filtered/class{index}.csv",
            )  # fmt: skip
        )
        filter_seconds += time.perf_counter() - started
    every = pd.concat(filtered, ignore_index=True)
    rows = []
    for image_set in sets:
        frame = every[every.image_set == image_set]
        index = frame.path.str.extract(r"(\d+)\.\w+$")[0].astype(int)
        counts = filter_counts(frame)
        rows.append({
            "image_set": image_set, "classes": len(labels), "budget": budget, **counts,
            "kept": int((frame.status == "kept").sum()),
            "sampling_seconds_budget": float(frame.seconds[index < budget].sum()),
            "sampling_seconds_all": float(frame.seconds.sum()),
            "filter_seconds": filter_seconds / len(sets),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def render(frame: pd.DataFrame) -> str:
    """The docs/generation.md block: per image set, what the fidelity filter rejected, and what it cost."""
    lines = [
        "| image set | generated | rejected | kept | unused | mean score of the kept | sampling s (budget → with extra) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in frame.itertuples():
        lines.append(
            f"| `{row.image_set}` | {row.generated} | {row.rejected} | {row.kept} | {row.unused} | {row.kept_score:.3f} "
            f"| {row.sampling_seconds_budget:.1f} → {row.sampling_seconds_all:.1f} |"
        )
    total_budget, total_all = frame.sampling_seconds_budget.sum(), frame.sampling_seconds_all.sum()
    filtering = frame.filter_seconds.sum()
    lines += [
        "",
        f"({int(frame.classes.iloc[0])} training classes x {int(frame.budget.iloc[0])} images per set; the extra images "
        f"add {total_all - total_budget:.1f} s of sampling to {total_budget:.1f} s, the {int(frame.classes.iloc[0])} "
        f"filter jobs {filtering:.1f} s in all, on one CPU thread.)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, the generator and the images")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--write-docs", action="store_true", help="render the docs/generation.md block from the results")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from dmlsynth import docblocks
    from dmlsynth.io import atomic_write_text

    frame = measure(args.work, args.params)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, frame.to_csv(index=False))
    print(render(frame))
    if args.write_docs:
        docblocks.write_blocks(ROOT, SCRIPT, RESULTS, {"render": render})


if __name__ == "__main__":
    main()
