"""Union vs intersection on the digits generator: the per-element operators against the earlier rule.

Trains the embedded generator exactly as the workflow does with params.yaml's
``generation.digits`` (seed, recipe; one thread), then measures for two
operator definitions — the current per-element rule
(:mod:`dmlsynth.generation.blend`) and the project's earlier
principal-component rule (``∩ = mean_k⟨d_k, v⟩ v`` with v the top singular
vector of the K residuals, ``∪ = Σ d_k − (K − 1) ∩``, kept here only as the
reference it replaced):

- ``steps``: at every denoising step of the union image set's first images (4 per class),
  ``‖∪ − ∩‖ / ‖mean residual‖`` per image (mean and smallest over the images);
- ``images``: the union and intersection image sets (``images_per_class`` per class each,
  generated as the workflow does), compared as ``results/generation.csv`` does
  (:func:`dmlsynth.generation.quality.operator_separation` on pixel features).

Raw numbers go to benchmarks/results/blend_operators_digits.csv; ``--write-docs`` renders the
README block from them.

    PYTHONPATH=src python benchmarks/measure_blend_operators.py --work /tmp/blend-ops --write-docs
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "blend_operators_digits.csv"
SCRIPT = "benchmarks/measure_blend_operators.py"
RULES = {"per_element": "per element (current)", "principal_component": "principal component (earlier)"}
COLUMNS = ["part", "rule", "step", "gap_mean", "gap_min", "images", "distance", "separation", "pvalue"]
IMAGES_PER_CLASS_FOR_STEPS = 4


def principal_component_intersection(residuals: torch.Tensor) -> torch.Tensor:
    """The earlier rule: ``(1/K Σ⟨d_k, v⟩) v``, v the top right-singular vector (signed to the residuals)."""
    k, b = residuals.shape[:2]
    flat = residuals.reshape(k, b, -1).transpose(0, 1).double()
    out = []
    for matrix in flat:
        v = torch.linalg.svd(matrix, full_matrices=False).Vh[0]
        if (matrix @ v).sum() < 0:
            v = -v
        out.append((matrix @ v).mean() * v)
    return torch.stack(out).reshape(residuals.shape[1:]).to(residuals.dtype)


def principal_component_combine(residuals: torch.Tensor, operators) -> torch.Tensor:
    k = residuals.shape[0]
    shared = principal_component_intersection(residuals)
    union = residuals.sum(0) - (k - 1) * shared
    return torch.stack([union[i] if name == "union" else shared[i] for i, name in enumerate(operators)])


def gaps(residuals: torch.Tensor, rule: str) -> torch.Tensor:
    """``‖∪ − ∩‖ / ‖mean residual‖`` per image under ``rule``."""
    from dmlsynth.generation import blend

    k = residuals.shape[0]
    shared = blend.intersection(residuals) if rule == "per_element" else principal_component_intersection(residuals)
    union = residuals.sum(0) - (k - 1) * shared
    return (union - shared).flatten(1).norm(dim=1) / residuals.mean(0).flatten(1).norm(dim=1)


@contextmanager
def sampler_combine(replacement):
    from dmlsynth.generation import sampler

    original = sampler.combine
    sampler.combine = replacement
    try:
        yield
    finally:
        sampler.combine = original


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
    folder = work / "generator"
    if not (folder / "generator.json").is_file():
        train_embedded(train, folder, settings["embedded"], settings["seed"], threads=1)
    prompts = write_prompts(build_prompts("digits", train), work / "prompts.yaml")
    return load_embedded(folder), prompts, train, settings


def measure_steps(components, prompts_file, labels, settings) -> list[dict]:
    """Per-step gaps on the union set's first images, for both rules, from one recorded sampling run."""
    from dmlsynth.generation import blend
    from dmlsynth.generation.prompts import read_prompts
    from dmlsynth.generation.run import _conditions, image_seed, initial_noise, plan_image
    from dmlsynth.generation.sampler import encode_prompts, sample
    from dmlsynth.generation.settings import set_recipe

    entries = read_prompts(prompts_file, labels)
    recipe = set_recipe("union", settings)
    owners = [label for label in labels for _ in range(IMAGES_PER_CLASS_FOR_STEPS)]
    seeds = [image_seed(settings["seed"], label, "union", i % IMAGES_PER_CLASS_FOR_STEPS) for i, label in enumerate(owners)]
    plans = [plan_image(entries[label], recipe, seed) for label, seed in zip(owners, seeds)]
    recorded = []

    def recording(residuals, operators):
        recorded.append(residuals.clone())
        return blend.combine(residuals, operators)

    with sampler_combine(recording):
        sample(
            components,
            _conditions(components, plans, {}),
            encode_prompts(components, [""])[0],
            [p["operator"] for p in plans],
            torch.stack([initial_noise(components, s) for s in seeds]),
            guidance_scale=float(settings["guidance_scale"]),
            steps=int(settings["steps"]),
            scheduler=str(settings["scheduler"]),
        )
    rows = []
    for rule in RULES:
        for step, residuals in enumerate(recorded, start=1):
            g = gaps(residuals, rule)
            rows.append({"part": "steps", "rule": rule, "step": step, "gap_mean": float(g.mean()),
                         "gap_min": float(g.min()), "images": len(plans)})
    return rows


def measure_images(components, prompts_file, train, settings, work: Path) -> list[dict]:
    """Union and intersection image sets under each rule, compared like results/generation.csv."""
    from dmlsynth.generation.quality import features, operator_separation
    from dmlsynth.generation.run import generate_class

    labels = sorted(int(l) for l in train.label.unique())
    rows = []
    for rule in RULES:
        combine = None if rule == "per_element" else principal_component_combine
        folder = work / "generated" / rule
        parts = []
        with sampler_combine(combine) if combine else _nothing():
            for label in labels:
                parts.append(
                    generate_class(components, prompts_file, label, labels, ["union", "intersection"], settings, folder,
                                   folder / "parts" / f"class{label}.csv")
                )
        frame = pd.concat(parts, ignore_index=True)
        files = [str(folder / s / p) for s, p in zip(frame["image_set"], frame["path"])]
        x = features(files, "L", 8)
        result = operator_separation(x, frame["label"].to_numpy(), frame["operator"].to_numpy() == "union", seed=0)
        rows.append({"part": "images", "rule": rule, "images": len(frame), **result})
    return rows


@contextmanager
def _nothing():
    yield


def render(frame: pd.DataFrame) -> str:
    """The README block: per rule, the gap in the first steps, its smallest value, and the image sets' separation."""
    lines = [
        "| operators | ‖∪ − ∩‖ / ‖mean residual‖, steps 1 / 2 / 3 | smallest over all steps (any image) | union vs intersection images: separation | p-value |",
        "|---|---|---|---|---|",
    ]
    for rule, name in RULES.items():
        steps = frame[(frame.part == "steps") & (frame.rule == rule)].sort_values("step")
        images = frame[(frame.part == "images") & (frame.rule == rule)].iloc[0]
        first = " / ".join(f"{100 * v:.1f} %" for v in steps.gap_mean.head(3))
        lines.append(
            f"| {name} | {first} | {100 * steps.gap_min.min():.1f} % | {images.separation:.4f} | {images.pvalue:.3f} |"
        )
    steps = frame[frame.part == "steps"]
    images = frame[frame.part == "images"].iloc[0]
    lines += [
        "",
        f"({int(steps.images.iloc[0])} images, {int(steps.step.max())} DPM-Solver steps, K = 3 blended conditions; "
        f"image sets: {int(images.images)} images per rule, union and intersection halves.)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, the generator and the images")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--write-docs", action="store_true", help="render the README block from the results")
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
        source = str(RESULTS.relative_to(ROOT))
        if not docblocks.replace_block(ROOT / "README.md", SCRIPT, "render", source, render(pd.read_csv(RESULTS))):
            raise SystemExit("README.md has no block for this script; place its markers first")


if __name__ == "__main__":
    main()
