"""Union vs intersection on the digits generator: each intersection rule, with and without the strength control.

Trains the embedded generator as the workflow does with params.yaml's
``generation.digits`` (seed, recipe; one thread), but for ``GENERATOR_STEPS`` steps:
the recipe these numbers were measured with (the default was 1000 steps until the
quick start had to fit 5 minutes; a generator trained longer guides more distinctly,
which is what the operators are compared on). Then, for each intersection rule
(``principal_component``, the paper's surrogate; ``elementwise``) and each
``guidance_norm`` (``mean``: every image's combined residual rescaled to its mean
residual's norm; ``none``: as the operator gives it), measures:

- ``steps``: at every denoising step of the union image set's first images (4 per class),
  the union's and the intersection's ``‖op(d)‖ / ‖mean residual‖`` before rescaling, and
  for the guidance as applied (after the strength control) ``‖∪ − ∩‖ / ‖mean residual‖``
  (mean and smallest over the images) and the share of ``‖∪ − ∩‖²`` along the mean residual;
- ``images``: the union and intersection image sets (``images_per_class`` per class each,
  unfiltered), made by the workflow's own functions (``generate_class``, ``merge_parts``)
  and compared by those of ``results/generation.csv`` (``quality_rows``: fidelity, diversity,
  union vs intersection distance, separation and p-value on pixel features, and the
  guidance statistics every sampling run records per image).

Raw numbers go to benchmarks/results/blend_operators_digits.csv; ``--write-docs`` renders the
block in docs/methods.md (§7) and README.md from them.

    PYTHONPATH=src python benchmarks/bench_blend_operators.py --work /tmp/blend-ops --write-docs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "blend_operators_digits.csv"
SCRIPT = "benchmarks/bench_blend_operators.py"
# The generator's training steps of the committed numbers (see the docstring).
GENERATOR_STEPS = 1000
# (intersection_rule, guidance_norm), in the order of the rendered table.
VARIANTS = [
    ("principal_component", "mean"),
    ("principal_component", "none"),
    ("elementwise", "mean"),
    ("elementwise", "none"),
]
STEP_COLUMNS = ["union_ratio", "intersection_ratio", "gap_mean", "gap_min", "share_along_mean"]
IMAGE_COLUMNS = [
    "images", "distance", "separation", "pvalue", "fidelity_union", "fidelity_intersection", "diversity_union",
    "diversity_intersection", "guidance_ratio_union", "guidance_ratio_intersection", "difference_along_mean",
    "applied_difference_along_mean",
]  # fmt: skip
COLUMNS = ["part", "rule", "norm", "step", *STEP_COLUMNS, *IMAGE_COLUMNS]
IMAGES_PER_CLASS_FOR_STEPS = 4


def variant_settings(settings: dict, rule: str, norm: str) -> dict:
    """``settings`` with the variant's rule and norm, unfiltered (every generated image is compared)."""
    return {**settings, "intersection_rule": rule, "guidance_norm": norm, "filter": {**settings["filter"], "scorer": "none"}}


def setup(work: Path, params: Path):
    """Prepared digits, the trained generator, the prompts file and the generation settings."""
    from dmlsynth.config import validate
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.data.prepare import prepare_dataset
    from dmlsynth.generation.embedded import load_embedded, train_embedded
    from dmlsynth.generation.prompts import build_prompts, write_prompts
    from dmlsynth.generation.settings import generation_settings

    config = yaml.safe_load(params.read_text())
    config["paths"] = {"data": str(work / "data"), "results": str(work / "results"), "logs": str(work / "logs")}
    config = validate(config)
    manifest = prepare_dataset(config, "digits")
    frame = read_manifest(manifest)
    train = frame[frame.split == "train"].reset_index(drop=True)
    settings = generation_settings(config, "digits")
    settings = {**settings, "embedded": {**settings["embedded"], "train_steps": GENERATOR_STEPS}}
    folder = work / "generator"
    if not (folder / "generator.json").is_file():
        train_embedded(train, folder, settings["embedded"], settings["seed"], threads=1)
    prompts = write_prompts(build_prompts("digits", train), work / "prompts.yaml")
    return load_embedded(folder), prompts, train, settings


def step_row(residuals: torch.Tensor, rule: str, norm: str) -> dict:
    """One step's numbers over the images: raw strengths, applied gap and its share along the mean."""
    from dmlsynth.generation.blend import combine, guidance_statistics, intersection, union

    b = residuals.shape[1]
    scale = residuals.mean(0).flatten(1).norm(dim=1)
    applied = combine(residuals, ["union"] * b, rule, norm) - combine(residuals, ["intersection"] * b, rule, norm)
    gap = applied.flatten(1).norm(dim=1) / scale
    share = guidance_statistics(residuals, ["union"] * b, rule, norm)["applied_difference_along_mean"]
    return {
        "union_ratio": float((union(residuals).flatten(1).norm(dim=1) / scale).mean()),
        "intersection_ratio": float((intersection(residuals, rule).flatten(1).norm(dim=1) / scale).mean()),
        "gap_mean": float(gap.mean()),
        "gap_min": float(gap.min()),
        "share_along_mean": float(share.mean()),
    }


def measure_steps(components, prompts_file, labels, settings) -> list[dict]:
    """Per-step numbers on the union set's first images, one sampling run per variant."""
    from dmlsynth.generation.prompts import read_prompts
    from dmlsynth.generation.run import _conditions, image_seed, initial_noise, plan_image
    from dmlsynth.generation.sampler import encode_prompts, sample
    from dmlsynth.generation.settings import set_recipe

    entries = read_prompts(prompts_file, labels)
    recipe = set_recipe("union", settings)
    owners = [label for label in labels for _ in range(IMAGES_PER_CLASS_FOR_STEPS)]
    seeds = [image_seed(settings["seed"], label, "union", i % IMAGES_PER_CLASS_FOR_STEPS) for i, label in enumerate(owners)]
    plans = [plan_image(entries[label], recipe, seed) for label, seed in zip(owners, seeds)]
    rows = []
    for rule, norm in VARIANTS:
        recorded: list[torch.Tensor] = []
        sample(
            components,
            _conditions(components, plans, {}),
            encode_prompts(components, [""])[0],
            [p["operator"] for p in plans],
            torch.stack([initial_noise(components, s) for s in seeds]),
            guidance_scale=float(settings["guidance_scale"]),
            steps=int(settings["steps"]),
            scheduler=str(settings["scheduler"]),
            intersection_rule=rule,
            guidance_norm=norm,
            on_step=lambda step, d: recorded.append(d.clone()),
        )
        for step, residuals in enumerate(recorded, start=1):
            rows.append({"part": "steps", "rule": rule, "norm": norm, "step": step, **step_row(residuals, rule, norm),
                         "images": len(plans)})  # fmt: skip
    return rows


def measure_images(components, prompts_file, train, settings, work: Path) -> list[dict]:
    """Union and intersection image sets per variant, through generate_class, merge_parts and quality_rows."""
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.generation.quality import quality_rows
    from dmlsynth.generation.run import generate_class, merge_parts

    labels = sorted(int(l) for l in train.label.unique())
    rows = []
    for rule, norm in VARIANTS:
        chosen = variant_settings(settings, rule, norm)
        folder = work / "generated" / f"{rule}-{norm}"
        parts = [folder / "parts" / f"class{label}.csv" for label in labels]
        for label, part in zip(labels, parts):
            generate_class(components, prompts_file, label, labels, ["union", "intersection"], chosen, folder, part)
        sets = {}
        for name in ("union", "intersection"):
            merge_parts(parts, name, folder / name / "manifest.csv")
            sets[name] = read_manifest(folder / name / "manifest.csv")
        quality = quality_rows("digits", train, sets, "L", 8, "embedded", pretrained=False).set_index("image_set")
        union, inter = quality.loc["union"], quality.loc["intersection"]
        rows.append({
            "part": "images", "rule": rule, "norm": norm, "images": int(union["images"] + inter["images"]),
            "distance": union["union_intersection_distance"], "separation": union["union_intersection_separation"],
            "pvalue": union["union_intersection_pvalue"], "fidelity_union": union["fidelity"],
            "fidelity_intersection": inter["fidelity"], "diversity_union": union["diversity"],
            "diversity_intersection": inter["diversity"], "guidance_ratio_union": union["guidance_ratio"],
            "guidance_ratio_intersection": inter["guidance_ratio"],
            # The share is a property of the residuals at an image's steps: over both sets' images.
            "difference_along_mean": (union["difference_along_mean"] + inter["difference_along_mean"]) / 2,
            "applied_difference_along_mean": (union["applied_difference_along_mean"] + inter["applied_difference_along_mean"]) / 2,
        })  # fmt: skip
    return rows


NAMES = {"principal_component": "principal component", "elementwise": "element-wise"}


def render(frame: pd.DataFrame) -> str:
    """The docs block: per rule and strength control, how hard each operator guides and how far the image sets lie apart."""
    lines = [
        "| intersection rule | strength control | ‖∪‖ / ‖mean‖ | ‖∩‖ / ‖mean‖ | applied ‖∪ − ∩‖ / ‖mean‖, steps 1 / 2 / 3 (smallest) | share of applied ‖∪ − ∩‖² along the mean | union vs intersection images: separation | p-value | fidelity ∪ / ∩ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for rule, norm in VARIANTS:
        steps = frame[(frame.part == "steps") & (frame.rule == rule) & (frame.norm == norm)].sort_values("step")
        images = frame[(frame.part == "images") & (frame.rule == rule) & (frame.norm == norm)].iloc[0]
        first = " / ".join(f"{100 * v:.1f} %" for v in steps.gap_mean.head(3))
        control = "`mean`" if norm == "mean" else "`none`"
        lines.append(
            f"| {NAMES[rule]} | {control} | {images.guidance_ratio_union:.2f} | {images.guidance_ratio_intersection:.2f} "
            f"| {first} ({100 * steps.gap_min.min():.1f} %) | {100 * images.applied_difference_along_mean:.0f} % "
            f"| {images.separation:.4f} | {images.pvalue:.3f} | {images.fidelity_union:.3f} / {images.fidelity_intersection:.3f} |"
        )
    steps = frame[frame.part == "steps"]
    images = frame[frame.part == "images"].iloc[0]
    lines += [
        "",
        f"(Strengths: means over every step of every image of the two sets, as `results/generation.csv` reports "
        f"them (`guidance_ratio`, before any rescaling). Steps: {int(steps.images.iloc[0])} union images, "
        f"{int(steps.step.max())} DPM-Solver steps, K = 3 blended conditions. Image sets: {int(images.images)} "
        "images per row, union and intersection halves, unfiltered; separation and p-value as in "
        "`results/generation.csv`.)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, the generator and the images")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--write-docs", action="store_true", help="render the documents' block from the results")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from dmlsynth import docblocks
    from dmlsynth.io import atomic_write_text

    components, prompts, train, settings = setup(args.work, args.params)
    labels = sorted(int(l) for l in train.label.unique())
    rows = measure_steps(components, prompts, labels, settings)
    rows += measure_images(components, prompts, train, settings, args.work)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, frame.to_csv(index=False))
    print(render(frame))
    if args.write_docs:
        docblocks.write_blocks(ROOT, SCRIPT, RESULTS, {"render": render})


if __name__ == "__main__":
    main()
