"""Per-class generation and the image-set manifests.

:func:`generate_class` makes every configured image set of one training
class and writes a *part* file (one row per image, written last and
atomically), so a class whose part exists under the same key (its job's
identity, :meth:`dmlsynth.jobs.Job.identity`, and the class's prompts) is
not redone. :func:`merge_parts` joins the parts of one image set into
``{data}/{dataset}/generated/{set}/manifest.csv`` (the manifest format of
:mod:`dmlsynth.data.manifest`, plus ``operator``, ``prompts`` and ``seed``).

Every image has its own seed derived from (generation seed, class label,
image set, image index): its prompts, blend weights, operator and initial
noise do not depend on batching or on which other classes were generated.
How many images go through the sampler at once is decided by
:mod:`dmlsynth.generation.batching` (GPU memory, halving on out-of-memory).
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dmlsynth.io import atomic_output, atomic_write_text
from dmlsynth.data.manifest import COLUMNS
from dmlsynth.generation.blend import STATISTICS, GuidanceRecord
from dmlsynth.generation.batching import choose_batch_size, in_batches, measure_memory, memory_budget
from dmlsynth.generation.fine_tuning import entry_with_token
from dmlsynth.generation.prompts import read_prompts
from dmlsynth.generation.sampler import Components, blend_embeddings, encode_prompts, sample, to_uint8
from dmlsynth.generation.settings import images_generated, set_recipe
from dmlsynth.provenance import params_hash
from dmlsynth.errors import DmlsynthError

log = logging.getLogger("dmlsynth.generation")

# ``seconds``: sampling time of the image (its batch's time shared by the batch), for the cost report;
# ``batch``: how many images that sampler call made (after any halving on out-of-memory);
# GUIDANCE_COLUMNS: the image's guidance statistics, means over its denoising steps
# (dmlsynth.generation.blend.guidance_statistics; results/generation.csv aggregates them).
GUIDANCE_COLUMNS = list(STATISTICS)
# ``device``: the kind of device that sampled the image (``cpu``/``cuda``): its seconds are GPU-seconds on CUDA.
PART_COLUMNS = ["image_set", *COLUMNS, "operator", "prompts", "seed", "seconds", "device", "batch", *GUIDANCE_COLUMNS, "params_hash"]


class GenerationError(DmlsynthError, ValueError):
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
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    with atomic_output(path) as tmp:
        image.save(tmp, **options)


def generate_class(
    components: Components,
    prompts_file: str | Path,
    label: int,
    train_labels: Sequence[int],
    image_sets: Sequence[str],
    settings: Mapping[str, Any],
    generated_dir: str | Path,
    part_file: str | Path,
    class_token: str | None = None,
    identity: str | None = None,
) -> pd.DataFrame:
    """Generate every image set of training class ``label``; return (and write) its part.

    ``class_token``: the class's textual-inversion token (fine-tuning), put into each of its prompts.
    ``identity``: that of its ``generate`` job (:meth:`dmlsynth.jobs.Job.identity`); a part made under it
    and the same prompts of the class (an input the identity does not hash) is kept. Without one (a call
    outside a job) the class is made.
    """
    if int(label) not in {int(l) for l in train_labels}:
        raise GenerationError(f"class {label} is not a training class; test classes never get synthetic images")
    entries = read_prompts(prompts_file, train_labels)
    entry = entry_with_token(entries[int(label)], class_token)
    generated_dir, part_file = Path(generated_dir), Path(part_file)
    part_key = "none" if identity is None else params_hash({"identity": identity, "entry": entry})
    if identity is not None and part_file.is_file():
        existing = pd.read_csv(part_file, dtype={"class_name": str})  # digits' class names are "0".."9"
        if not existing.empty and set(existing["params_hash"]) == {part_key} and all(
            (generated_dir / s / p).is_file() for s, p in zip(existing["image_set"], existing["path"])
        ):
            log.info("class %s already complete in %s; not redone", label, part_file)
            return existing
    started = time.perf_counter()
    cache: dict[str, torch.Tensor] = {}
    unconditional = encode_prompts(components, [""])[0]
    memory = budget = None
    if components.device.type == "cuda":
        budget = memory_budget(settings.get("gpu_memory_gib"), components.device)
        memory = measure_memory(components, unconditional)
    vae_sliced = bool(getattr(components.vae, "use_slicing", True))
    rows = []
    # The budget plus the filter's extra images (dmlsynth.generation.filtering): further indices, further seeds.
    count = images_generated(settings)
    for image_set in image_sets:
        recipe = set_recipe(image_set, settings)
        seeds = [image_seed(settings["seed"], label, image_set, i) for i in range(count)]
        plans = [plan_image(entry, recipe, s) for s in seeds]
        batch_size = choose_batch_size(settings["batch_size"], memory, budget, recipe["prompts_per_image"], vae_sliced)

        def run_batch(start: int, stop: int) -> tuple[np.ndarray, float, dict[str, list[float]]]:
            batch_started = time.perf_counter()
            operators = [p["operator"] for p in plans[start:stop]]
            rule, norm = str(settings["intersection_rule"]), str(settings["guidance_norm"])
            record = GuidanceRecord(operators, rule, norm)
            images = sample(
                components,
                _conditions(components, plans[start:stop], cache),
                unconditional,
                operators,
                torch.stack([initial_noise(components, s) for s in seeds[start:stop]]),
                guidance_scale=float(settings["guidance_scale"]),
                steps=int(settings["steps"]),
                scheduler=str(settings["scheduler"]),
                intersection_rule=rule,
                guidance_norm=norm,
                on_step=record,
            )
            arrays = to_uint8(images).numpy()  # on the CPU: the batch is finished
            return arrays, (time.perf_counter() - batch_started) / (stop - start), record.means()

        try:
            for start, _stop, (arrays, seconds_per_image, guidance) in in_batches(count, batch_size, run_batch, f"class {label} {image_set} images"):
                for offset, array in enumerate(arrays):
                    row = _save(array, start + offset, image_set, plans[start + offset], seeds[start + offset],
                                entry, int(label), generated_dir, seconds_per_image, part_key)  # fmt: skip
                    statistics = {name: float(f"{values[offset]:.6g}") for name, values in guidance.items()}
                    rows.append({**row, "device": components.device.type, "batch": len(arrays), **statistics})
        except torch.OutOfMemoryError as error:
            raise GenerationError(str(error)) from error
    part = pd.DataFrame(rows, columns=PART_COLUMNS)
    atomic_write_text(part_file, part.to_csv(index=False))
    log.info(
        "class %s: %d images in %d set(s) in %.1fs", label, len(part), len(image_sets), time.perf_counter() - started
    )
    return part


def _save(
    array: np.ndarray,
    index: int,
    image_set: str,
    plan: Mapping[str, Any],
    seed: int,
    entry: Mapping[str, Any],
    label: int,
    generated_dir: Path,
    seconds_per_image: float,
    key: str,
) -> dict[str, Any]:
    """Write one generated image and return its row of the part file."""
    # Grayscale stays lossless PNG (like the digits); photos are JPEG (512 px PNGs are ~0.4 MB each).
    suffix = "png" if array.shape[-1] == 1 else "jpg"
    relative = f"images/{label}/{index:04d}.{suffix}"
    save_image(array, generated_dir / image_set / relative)
    return {
        "image_set": image_set,
        "path": relative,
        "label": label,
        "class_name": entry["class_name"],
        "split": "train",
        "operator": plan["operator"],
        "prompts": json.dumps({"prompts": plan["prompts"], "weights": plan["weights"]}),
        "seed": seed,
        "seconds": round(seconds_per_image, 4),
        "params_hash": key,
    }


def merge_parts(part_files: Sequence[str | Path], image_set: str, manifest: str | Path) -> pd.DataFrame:
    """Join the kept rows of ``image_set`` from every class part into the set's manifest.

    The parts are the filtered parts (:mod:`dmlsynth.generation.filtering`): only images whose
    ``status`` is ``kept`` join, with their filter ``score``. Each row also names its part file
    (``part``, relative to the manifest's folder): the job that made the image, and what to delete
    to make it again.
    """
    folder = Path(manifest).parent
    frames = [pd.read_csv(f).assign(part=os.path.relpath(f, folder)) for f in part_files]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*PART_COLUMNS, "part"])
    frame = frame[frame["image_set"] == image_set]
    if "status" in frame:
        frame = frame[frame["status"] == "kept"]
        # The job that made an image is the generation job whose part the filter read.
        made_by = frame["source_part"].fillna("").astype(str)
        frame = frame.assign(part=[os.path.relpath(s, folder) if s else p for s, p in zip(made_by, frame["part"])])
    if "score" not in frame:
        frame = frame.assign(score=float("nan"))  # an unfiltered part
    if frame.empty:
        raise GenerationError(f"no images of image set {image_set!r} in {len(frames)} part file(s); regenerate them")
    for name in GUIDANCE_COLUMNS:
        if name not in frame:
            frame = frame.assign(**{name: float("nan")})  # a part written before the statistics were recorded
    if "device" not in frame:
        frame = frame.assign(device="unknown")  # a part written before devices were recorded
    columns = [*COLUMNS, "operator", "prompts", "seed", "seconds", "device", *GUIDANCE_COLUMNS, "score", "part"]
    atomic_write_text(manifest, frame[columns].to_csv(index=False))
    return frame[columns]
