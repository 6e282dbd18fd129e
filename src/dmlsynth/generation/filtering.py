"""Filtering generated images: a score per image and the rule that keeps a set's budget.

BLenDeR filters its generated images with CLIP (Kolf et al.; the paper states
neither the CLIP model nor the threshold). Here every image of a class job gets
a score, and each image set keeps its first ``images_per_class`` images (in
index order, i.e. per-image seed order) whose score reaches the threshold:

- ``clip``: cosine similarity of the image's CLIP embedding and the CLIP
  embedding of its class's ``plain`` prompt (transformers ``CLIPModel``,
  ``filter.clip_model``; default ``openai/clip-vit-large-patch14``, threshold
  ``filter.clip_threshold`` = 0.2) **[project definition]**;
- ``fidelity``: the probability the fidelity classifier of the generation
  report (:mod:`dmlsynth.generation.quality`: logistic regression on the real
  training images' features) gives the intended class (threshold
  ``filter.fidelity_threshold`` = 0.5) **[project definition]** — the default
  for the embedded generator, whose 8x8 grayscale digits CLIP cannot judge;
- ``none``: every image scores NaN and the first ``images_per_class`` are kept.

Generation makes ``ceil(extra x images_per_class)`` extra images per class
and set (:func:`dmlsynth.generation.settings.images_generated`; their seeds
continue the indices, so the first images are those an unfiltered run makes).
Each image ends with a status: ``kept``, ``rejected`` (score below the
threshold) or ``unused`` (it passed, but the budget was already full). Taking
the first passing images, rather than the best-scoring ones, keeps the kept
images as varied as the passing ones **[project definition]**. When fewer
than the budget pass, the set keeps those that did, and the job warns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from dmlsynth.io import atomic_write_text

log = logging.getLogger("dmlsynth.generation.filtering")

KEPT, REJECTED, UNUSED = "kept", "rejected", "unused"
# The filtered part: the generation part's columns plus these.
# ``source_part``: the generation part that made the image (what to delete to make it again).
FILTER_COLUMNS = ["score", "status", "scorer", "threshold", "source_part"]


def keep_statuses(image_sets: Sequence[str], scores: np.ndarray, threshold: float, budget: int) -> list[str]:
    """``kept`` / ``rejected`` / ``unused`` of each image (rows in generation order, any mix of sets).

    Per image set, the first ``budget`` images scoring at least ``threshold`` are kept; a NaN score
    (no scorer) passes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    passes = np.isnan(scores) | (scores >= threshold)
    taken: dict[str, int] = {}
    statuses = []
    for image_set, passed in zip(image_sets, passes):
        if not passed:
            statuses.append(REJECTED)
        elif taken.get(image_set, 0) < budget:
            taken[image_set] = taken.get(image_set, 0) + 1
            statuses.append(KEPT)
        else:
            statuses.append(UNUSED)
    return statuses


def load_rgb(files: Sequence[str | Path]) -> list[Any]:
    from PIL import Image

    images = []
    for file in files:
        with Image.open(file) as image:
            images.append(image.convert("RGB"))
    return images


def clip_scores(
    files: Sequence[str | Path], texts: Sequence[str], model_id: str, device: str = "auto", batch_size: int = 32
) -> np.ndarray:
    """Cosine similarity of each image's CLIP embedding with the CLIP embedding of its text."""
    import torch
    from transformers import AutoProcessor, CLIPModel

    from dmlsynth.device import pick_device

    if len(files) != len(texts):
        raise ValueError(f"{len(files)} images but {len(texts)} texts")
    target = pick_device(str(device), "generation.<dataset>.device")
    try:
        model = CLIPModel.from_pretrained(model_id, use_safetensors=True).to(target).eval()
        processor = AutoProcessor.from_pretrained(model_id)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"cannot load the CLIP model {model_id!r} (generation.<dataset>.filter.clip_model): {error}. "
            "Give a Hugging Face id (downloaded once, safetensors weights) or a local folder saved with "
            "save_pretrained, or set filter.scorer to fidelity or none"
        ) from error
    unique = sorted(set(texts))
    with torch.no_grad():
        tokens = processor(text=unique, return_tensors="pt", padding=True, truncation=True).to(target)
        text_features = _features(model.get_text_features(**tokens))
        text_features = torch.nn.functional.normalize(text_features.float(), dim=-1)
        row_of = {text: i for i, text in enumerate(unique)}
        scores = []
        for start in range(0, len(files), batch_size):
            batch = load_rgb(files[start : start + batch_size])
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(target)
            image_features = torch.nn.functional.normalize(_features(model.get_image_features(pixel_values=pixels)).float(), dim=-1)
            wanted = text_features[[row_of[t] for t in texts[start : start + batch_size]]]
            scores.append((image_features * wanted).sum(-1).cpu().numpy())
    return np.concatenate(scores).astype(np.float64) if scores else np.zeros(0)


def _features(output: Any):
    """The projected embedding, whether transformers returns the tensor or a model output holding it."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def fidelity_scores(
    real_train: pd.DataFrame,
    files: Sequence[str],
    labels: Sequence[int],
    image_mode: str,
    image_size: int,
    pretrained: bool = True,
    device: str = "cpu",
    threads: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Probability the generation report's fidelity classifier gives each image's intended class."""
    from dmlsynth.generation.features import features, fidelity_classifier

    real_x = features(real_train["file"].tolist(), image_mode, image_size, pretrained, device, threads)
    classifier = fidelity_classifier(seed).fit(real_x, real_train["label"].to_numpy())
    known = {int(c): i for i, c in enumerate(classifier.classes_)}
    missing = sorted(set(int(l) for l in labels) - set(known))
    if missing:
        raise ValueError(f"generated images of classes {missing} that are not training classes")
    probabilities = classifier.predict_proba(features(list(files), image_mode, image_size, pretrained, device, threads))
    return probabilities[np.arange(len(files)), [known[int(l)] for l in labels]].astype(np.float64)


def filter_part(
    part: pd.DataFrame, scores: np.ndarray, scorer: str, threshold: float, budget: int, out: str | Path,
    source_part: str | Path | None = None,
) -> pd.DataFrame:
    """Write the filtered part (``part`` plus :data:`FILTER_COLUMNS`) and return it; warn on a short set."""
    statuses = keep_statuses(part["image_set"].tolist(), scores, threshold, budget)
    filtered = part.assign(score=np.round(np.asarray(scores, dtype=np.float64), 6), status=statuses, scorer=scorer,
                           threshold=threshold if scorer != "none" else float("nan"),
                           source_part=str(source_part) if source_part is not None else "")  # fmt: skip
    for image_set, rows in filtered.groupby("image_set", sort=True):
        kept = int((rows["status"] == KEPT).sum())
        rejected = int((rows["status"] == REJECTED).sum())
        log.info("%s, class %s: %d kept, %d rejected of %d (%s >= %s)", image_set, rows["label"].iloc[0], kept,
                 rejected, len(rows), scorer, threshold)  # fmt: skip
        if kept < budget:
            log.warning(
                "%s, class %s: only %d of %d generated images pass the filter (%s score >= %s), fewer than the "
                "budget of %d; raise generation.<dataset>.filter.extra or lower the threshold",
                image_set, rows["label"].iloc[0], kept, len(rows), scorer, threshold, budget,
            )  # fmt: skip
    atomic_write_text(out, filtered.to_csv(index=False))
    return filtered


def filter_generated(
    settings: Mapping[str, Any],
    image_mode: str,
    image_size: int,
    pretrained: bool,
    part_file: str | Path,
    generated_dir: str | Path,
    prompts_file: str | Path,
    real_train: pd.DataFrame,
    out: str | Path,
    threads: int = 1,
) -> pd.DataFrame:
    """Score every image of one class job and write its filtered part (the ``filter_generated`` job).

    ``settings``: the dataset's generation settings; ``image_mode``, ``image_size``, ``pretrained``: how
    the fidelity classifier sees its images (the dataset's)."""
    from dmlsynth.generation.prompts import read_prompts
    from dmlsynth.generation.settings import filter_scorer

    scorer = filter_scorer(settings)
    options = settings["filter"]
    part = pd.read_csv(part_file, dtype={"class_name": str})
    files = [str(Path(generated_dir) / s / p) for s, p in zip(part["image_set"], part["path"])]
    if scorer == "clip":
        entries = read_prompts(prompts_file)
        texts = [entries[int(label)]["plain"] for label in part["label"]]
        scores = clip_scores(files, texts, str(options["clip_model"]), settings["device"], int(options["batch_size"]))
        threshold = float(options["clip_threshold"])
    elif scorer == "fidelity":
        scores = fidelity_scores(
            real_train, files, part["label"].tolist(), image_mode, image_size,
            pretrained, settings["device"], threads, int(settings["seed"]),
        )  # fmt: skip
        threshold = float(options["fidelity_threshold"])
    elif scorer == "none":
        scores, threshold = np.full(len(part), np.nan), float("nan")
    else:
        from dmlsynth.registry import FILTER_SCORERS

        raise ValueError(f"unknown filter scorer {scorer!r}; known: {', '.join(FILTER_SCORERS)}")
    return filter_part(part, scores, scorer, threshold, int(settings["images_per_class"]), out, source_part=part_file)


def filter_counts(filtered: pd.DataFrame) -> dict[str, Any]:
    """Generated, rejected and unused images and the kept images' mean score of some filtered rows."""
    kept = filtered["status"] == KEPT
    return {
        "generated": int(len(filtered)),
        "rejected": int((filtered["status"] == REJECTED).sum()),
        "unused": int((filtered["status"] == UNUSED).sum()),
        "kept_score": float(filtered.loc[kept, "score"].mean()) if kept.any() else float("nan"),
    }
