"""Per-class generation and the image-set manifests.

:func:`generate_class` makes every configured image set of one training
class and writes a *part* file (one row per image, written last and
atomically), so a class whose part exists with the same settings is not
redone. :func:`merge_parts` joins the parts of one image set into
``{data}/{dataset}/generated/{set}/manifest.csv`` (the manifest format of
:mod:`dmlsynth.data.manifest`, plus ``operator``, ``prompts`` and ``seed``).

Every image has its own seed derived from (generation seed, class label,
image set, image index): its prompts, blend weights, operator and initial
noise do not depend on batching or on which other classes were generated.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dmlsynth.config import atomic_write_text, params_hash
from dmlsynth.data.manifest import COLUMNS
from dmlsynth.generate.prompts import read_prompts
from dmlsynth.generate.sampler import Components, blend_embeddings, encode_prompts, sample, to_uint8
from dmlsynth.generate.settings import set_recipe

log = logging.getLogger("dmlsynth.generate")

# ``seconds``: sampling time of the image (its batch's time shared by the batch), for the cost report.
PART_COLUMNS = ["image_set", *COLUMNS, "operator", "prompts", "seed", "seconds", "params_hash"]


class GenerationError(ValueError):
    """Generation was asked for something impossible (e.g. a test class)."""


def image_seed(base_seed: int, label: int, image_set: str, index: int) -> int:
    sequence = np.random.SeedSequence([int(base_seed), int(label), zlib.crc32(image_set.encode()), int(index)])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def plan_image(entry: Mapping[str, Any], recipe: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Prompts, Dirichlet(1) blend weights and operator of one image, drawn from its own seed.

    Each of the K conditions blends ``prompts_per_condition`` distinct prompts of
    the class; the K conditions use distinct prompts where the class has enough.
    """
    rng = np.random.default_rng(seed)
    if recipe["plain"]:
        return {"prompts": [[entry["plain"]]], "weights": [[1.0]], "operator": "conjunction"}
    pool = list(entry["prompts"])
    k, per = int(recipe["prompts_per_image"]), int(recipe["prompts_per_condition"])
    prompts, weights = [], []
    for _ in range(k):
        chosen = rng.choice(len(pool), size=min(per, len(pool)), replace=False)
        prompts.append([pool[i] for i in chosen])
        weights.append(rng.dirichlet(np.ones(len(chosen))).tolist())
    names = sorted(recipe["operators"])
    operator = names[int(rng.choice(len(names), p=[recipe["operators"][n] for n in names]))]
    return {"prompts": prompts, "weights": weights, "operator": operator}


def _conditions(components: Components, plans: Sequence[Mapping[str, Any]], cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(K, B, L, D)`` blended text embeddings of a batch of planned images."""
    needed = sorted({p for plan in plans for condition in plan["prompts"] for p in condition} - set(cache))
    if needed:
        for prompt, embedding in zip(needed, encode_prompts(components, needed)):
            cache[prompt] = embedding
    k = len(plans[0]["prompts"])
    rows = []
    for i in range(k):
        per_image = []
        for plan in plans:
            stack = torch.stack([cache[p] for p in plan["prompts"][i]])
            weights = torch.tensor(plan["weights"][i], dtype=torch.float32)
            per_image.append(blend_embeddings(stack.float(), weights))
        rows.append(torch.stack(per_image))
    return torch.stack(rows).to(components.dtype)


def initial_noise(components: Components, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(components.latent_shape, generator=generator)


def save_image(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    image.save(tmp, **options)
    tmp.replace(path)


def generate_class(
    components: Components,
    prompts_file: str | Path,
    label: int,
    train_labels: Sequence[int],
    image_sets: Sequence[str],
    settings: Mapping[str, Any],
    generated_dir: str | Path,
    part_file: str | Path,
) -> pd.DataFrame:
    """Generate every image set of training class ``label``; return (and write) its part."""
    if int(label) not in {int(l) for l in train_labels}:
        raise GenerationError(f"class {label} is not a training class; test classes never get synthetic images")
    entries = read_prompts(prompts_file, train_labels)
    entry = entries[int(label)]
    generated_dir, part_file = Path(generated_dir), Path(part_file)
    key = params_hash({"settings": dict(settings), "sets": sorted(image_sets), "entry": entry, "label": int(label)})
    if part_file.is_file():
        existing = pd.read_csv(part_file)
        if not existing.empty and set(existing["params_hash"]) == {key} and all(
            (generated_dir / s / p).is_file() for s, p in zip(existing["image_set"], existing["path"])
        ):
            log.info("class %s already complete in %s; not redone", label, part_file)
            return existing
    started = time.perf_counter()
    cache: dict[str, torch.Tensor] = {}
    unconditional = encode_prompts(components, [""])[0]
    rows = []
    count, batch_size = int(settings["images_per_class"]), int(settings["batch_size"])
    for image_set in image_sets:
        recipe = set_recipe(image_set, settings)
        seeds = [image_seed(settings["seed"], label, image_set, i) for i in range(count)]
        plans = [plan_image(entry, recipe, s) for s in seeds]
        for start in range(0, count, batch_size):
            batch = plans[start : start + batch_size]
            noise = torch.stack([initial_noise(components, s) for s in seeds[start : start + batch_size]])
            batch_started = time.perf_counter()
            images = sample(
                components,
                _conditions(components, batch, cache),
                unconditional,
                [p["operator"] for p in batch],
                noise,
                guidance_scale=float(settings["guidance_scale"]),
                steps=int(settings["steps"]),
                scheduler=str(settings["scheduler"]),
            )
            seconds_per_image = (time.perf_counter() - batch_started) / len(batch)
            for offset, array in enumerate(to_uint8(images).numpy()):
                index = start + offset
                # Grayscale stays lossless PNG (like the digits); photos are JPEG (512 px PNGs are ~0.4 MB each).
                suffix = "png" if array.shape[-1] == 1 else "jpg"
                relative = f"images/{int(label)}/{index:04d}.{suffix}"
                save_image(array, generated_dir / image_set / relative)
                plan = batch[offset]
                rows.append(
                    {
                        "image_set": image_set,
                        "path": relative,
                        "label": int(label),
                        "class_name": entry["class_name"],
                        "split": "train",
                        "operator": plan["operator"],
                        "prompts": json.dumps({"prompts": plan["prompts"], "weights": plan["weights"]}),
                        "seed": seeds[index],
                        "seconds": round(seconds_per_image, 4),
                        "params_hash": key,
                    }
                )
    part = pd.DataFrame(rows, columns=PART_COLUMNS)
    atomic_write_text(part_file, part.to_csv(index=False))
    log.info(
        "class %s: %d images in %d set(s) in %.1fs", label, len(part), len(image_sets), time.perf_counter() - started
    )
    return part


def merge_parts(part_files: Sequence[str | Path], image_set: str, manifest: str | Path) -> pd.DataFrame:
    """Join the rows of ``image_set`` from every class part into the set's manifest."""
    frames = [pd.read_csv(f) for f in part_files]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PART_COLUMNS)
    frame = frame[frame["image_set"] == image_set]
    if frame.empty:
        raise GenerationError(f"no images of image set {image_set!r} in {len(frames)} part file(s); regenerate them")
    columns = [*COLUMNS, "operator", "prompts", "seed", "seconds"]
    atomic_write_text(manifest, frame[columns].to_csv(index=False))
    return frame[columns]
