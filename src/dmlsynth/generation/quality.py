"""Quality of generated images: fidelity, diversity and sample grids.

- **fidelity**: share of generated images that a classifier trained on the
  real training images assigns to their intended class. The classifier is a
  logistic regression on image features (standardised pixels for grayscale
  datasets; ImageNet ResNet-50 pooled features for RGB datasets). Its own
  5-fold cross-validated accuracy on the real images is reported as
  ``real_accuracy`` (the ceiling), and ``chance`` is 1 / classes.
- **diversity**: per class, the mean pairwise Euclidean distance of the
  generated images' features (pixels in [0, 1], or ResNet-50 features; not
  standardised, so near-constant background pixels do not inflate it), divided by the same quantity
  for the real images of that class; averaged over classes. 1 means as
  varied as the real images, 0 means one image repeated.

- **union vs intersection** (rows whose operator is ``union`` or
  ``intersection``; the same values on each of them): all images of the
  dataset drawn with the union operator (any image set) against all drawn with
  the intersection operator, per class, on the diversity features.
  ``union_intersection_distance`` is the mean distance between a union and an
  intersection image of a class; ``union_intersection_separation`` the energy
  distance ``2·between − within_union − within_intersection`` divided by
  ``within_union + within_intersection`` (within: mean pairwise distance inside
  one operator's images of the class), averaged over classes: 0 when the two
  operators' images are as far from each other as from their own kind, more
  when they differ. ``union_intersection_pvalue`` is a permutation test of
  "the operator makes no difference" (per-image seeds alone): the summed
  energy distance of the classes against 999 reshufflings of the operator
  labels within each class (fixed seed), ``(1 + #{shuffled >= observed}) / 1000``.

- **guidance strength** (recorded per image at every denoising step by the
  sampling run itself, :func:`dmlsynth.generation.blend.guidance_statistics`,
  averaged over the steps in the part files and here over the row's images):
  ``guidance_ratio``, the mean ``‖op(d)‖ / ‖mean residual‖`` of the row's
  operator before any rescaling (1 for ordinary guidance); ``difference_along_mean``,
  the mean share of ``‖∪ − ∩‖²`` that lies along the mean residual (the two
  operators as they are, at the images' residuals); ``applied_difference_along_mean``,
  that share after the dataset's ``guidance_norm`` (the same with ``none``).
  ``intersection_rule`` and ``guidance_norm`` are the dataset's settings.

- **filter** (:mod:`dmlsynth.generation.filtering`): the scorer that chose
  the kept images (``clip``, ``fidelity`` or ``none``); ``generated`` images
  were made, ``rejected`` scored below the threshold, ``unused`` passed after
  the budget was full; ``images`` were kept, with mean score ``kept_score``.
  Fidelity and diversity are measured on the kept images.

Rows of ``results/generation.csv``: one per dataset x image set x operator
(``all`` pools a set's operators when it mixes several).

The ResNet-50 features are computed on the dataset's generation device
(``generation.<dataset>.device``: CUDA when present with ``auto``), with
``threads`` worker processes decoding the images; the classifier itself is
scikit-learn on the CPU.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from dmlsynth.generation.features import features, fidelity_classifier, load_images
from dmlsynth.io import atomic_write_text, save_figure

log = logging.getLogger("dmlsynth.generation.quality")

COLUMNS = [
    "dataset",
    "image_set",
    "operator",
    "generator",
    "images",
    "classes",
    "fidelity",
    "chance",
    "real_accuracy",
    "diversity",
    "diversity_generated",
    "diversity_real",
    "union_intersection_distance",
    "union_intersection_separation",
    "union_intersection_pvalue",
    "intersection_rule",
    "guidance_norm",
    "guidance_ratio",
    "difference_along_mean",
    "applied_difference_along_mean",
    "seconds_per_image",
    "device",
    "generator_train_seconds",
    "filter",
    "generated",
    "rejected",
    "unused",
    "kept_score",
]
PERMUTATIONS = 999


def mean_pairwise_distance(x: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    squared = (x * x).sum(1)
    d2 = np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0)
    n = len(x)
    return float(np.sqrt(d2)[np.triu_indices(n, 1)].mean())


def _energy_sums(distances: np.ndarray, is_union: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Between, within-union and within-intersection mean distances for each column of ``is_union`` (n, P)."""
    first = is_union.astype(np.float64)
    second = 1.0 - first
    n_first, n_second = first.sum(0), second.sum(0)
    d_first = distances @ first
    between = (d_first * second).sum(0) / (n_first * n_second)
    within_first = (d_first * first).sum(0) / (n_first * (n_first - 1))
    within_second = ((distances @ second) * second).sum(0) / (n_second * (n_second - 1))
    return between, within_first, within_second


def operator_separation(
    x: np.ndarray, y: np.ndarray, is_union: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0
) -> dict[str, float]:
    """Union vs intersection images (features ``x``, classes ``y``): distance, separation and permutation p-value.

    Classes with fewer than two images of either operator are left out; all NaN when none is left.
    """
    rng = np.random.default_rng(seed)
    distance, separation, observed, shuffled = [], [], 0.0, np.zeros(permutations)
    for c in np.unique(y):
        members = y == c
        labels = is_union[members].astype(bool)
        if labels.sum() < 2 or (~labels).sum() < 2:
            continue
        features = x[members]
        squared = (features * features).sum(1)
        d = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * features @ features.T, 0))
        np.fill_diagonal(d, 0.0)
        between, within_u, within_i = _energy_sums(d, labels[:, None])
        energy = 2 * between[0] - within_u[0] - within_i[0]
        distance.append(between[0])
        separation.append(energy / (within_u[0] + within_i[0]))
        observed += energy
        columns = np.stack([rng.permutation(labels) for _ in range(permutations)], axis=1)
        between, within_u, within_i = _energy_sums(d, columns)
        shuffled += 2 * between - within_u - within_i
    if not distance:
        return {"distance": float("nan"), "separation": float("nan"), "pvalue": float("nan")}
    # A small tolerance: a reshuffle equal to the observed labelling must count as ">=" despite rounding.
    exceed = int((shuffled >= observed - 1e-12 * max(1.0, abs(observed))).sum())
    return {
        "distance": float(np.mean(distance)),
        "separation": float(np.mean(separation)),
        "pvalue": (1 + exceed) / (1 + permutations),
    }


def _mean_of(frame: pd.DataFrame, column: str, mask: np.ndarray) -> float:
    """Mean of ``column`` over the rows in ``mask`` (NaN rows left out; NaN when the column is absent)."""
    if column not in frame:
        return float("nan")
    values = frame[column].to_numpy(dtype=np.float64)[mask]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def quality_rows(
    dataset: str,
    real_train: pd.DataFrame,
    generated: Mapping[str, pd.DataFrame],
    image_mode: str,
    image_size: int,
    generator: str,
    pretrained: bool = True,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 1,
    filtered: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Fidelity and diversity of every generated image set against the real training images.

    ``device`` and ``threads``: where the image features are computed (see :func:`features`).
    ``filtered``: every generated image of each set with its filter ``status`` and ``score``
    (the filtered parts), for the filter columns; without it they are NaN.
    """
    from dmlsynth.generation.blend import STATISTICS as GUIDANCE_STATISTICS
    from dmlsynth.generation.filtering import filter_counts

    from sklearn.model_selection import cross_val_score

    real_x = features(real_train["file"].tolist(), image_mode, image_size, pretrained, device, threads)
    real_y = real_train["label"].to_numpy()
    classifier = fidelity_classifier(seed)
    folds = min(5, int(pd.Series(real_y).value_counts().min()))
    real_accuracy = float(cross_val_score(classifier, real_x, real_y, cv=folds).mean()) if folds >= 2 else float("nan")
    classifier.fit(real_x, real_y)
    real_diversity = {c: mean_pairwise_distance(real_x[real_y == c]) for c in np.unique(real_y)}
    chance = 1.0 / len(np.unique(real_y))

    set_features = {}
    for image_set, frame in sorted(generated.items()):
        unknown = sorted(set(frame["label"]) - set(real_diversity))
        if unknown:
            raise ValueError(f"image set {image_set!r} has images of classes {unknown} that are not training classes")
        set_features[image_set] = features(frame["file"].tolist(), image_mode, image_size, pretrained, device, threads)
    # Union vs intersection images of the dataset, whichever sets they belong to (same recipe but the operator).
    pooled = [
        (set_features[name][mask], frame["label"].to_numpy()[mask], frame["operator"].to_numpy()[mask] == "union")
        for name, frame in sorted(generated.items())
        if "operator" in frame
        for mask in [frame["operator"].isin(["union", "intersection"]).to_numpy()]
        if mask.any()
    ]
    if pooled:
        separation = operator_separation(*(np.concatenate(parts) for parts in zip(*pooled)), seed=seed)
    else:
        separation = {"distance": float("nan"), "separation": float("nan"), "pvalue": float("nan")}

    rows = []
    for image_set, frame in sorted(generated.items()):
        x = set_features[image_set]
        y = frame["label"].to_numpy()
        predicted = classifier.predict(x)
        operators = frame["operator"].to_numpy() if "operator" in frame else np.array(["all"] * len(frame))
        groups = [("all", np.ones(len(frame), bool))] if len(set(operators)) > 1 else []
        groups += [(name, operators == name) for name in sorted(set(operators))]
        for name, mask in groups:
            per_class = [
                (mean_pairwise_distance(x[mask & (y == c)]), real_diversity[c]) for c in np.unique(y[mask])
            ]
            generated_div = float(np.nanmean([g for g, _ in per_class]))
            real_div = float(np.nanmean([r for _, r in per_class]))
            compared = name in ("union", "intersection")
            candidates = (filtered or {}).get(image_set)
            if candidates is not None and len(candidates):
                counts = filter_counts(candidates if name == "all" else candidates[candidates["operator"] == name])
                counts["filter"] = ",".join(sorted(set(candidates["scorer"].astype(str))))
            else:
                counts = {"filter": "", "generated": float("nan"), "rejected": float("nan"), "unused": float("nan"),
                          "kept_score": float("nan")}  # fmt: skip
            rows.append(
                {
                    "dataset": dataset,
                    "image_set": image_set,
                    "operator": "cfg" if name == "conjunction" and image_set == "plain" else name,
                    "generator": generator,
                    "images": int(mask.sum()),
                    "classes": int(len(np.unique(y[mask]))),
                    "fidelity": float((predicted[mask] == y[mask]).mean()),
                    "chance": chance,
                    "real_accuracy": real_accuracy,
                    "diversity": float(np.nanmean([g / r for g, r in per_class if r > 0])),
                    "diversity_generated": generated_div,
                    "diversity_real": real_div,
                    "union_intersection_distance": separation["distance"] if compared else float("nan"),
                    "union_intersection_separation": separation["separation"] if compared else float("nan"),
                    "union_intersection_pvalue": separation["pvalue"] if compared else float("nan"),
                    **{name: _mean_of(frame, name, mask) for name in GUIDANCE_STATISTICS},
                    # What the images cost: sampling time per image (the generator's training is extra).
                    "seconds_per_image": float(frame["seconds"].to_numpy()[mask].mean()) if "seconds" in frame else float("nan"),
                    # Where they were sampled (GPU-hours count CUDA seconds); unknown for parts of older code.
                    "device": ";".join(sorted(set(frame["device"].astype(str).to_numpy()[mask]))) if "device" in frame else "unknown",
                    **counts,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


# How the sample grid names the operator of an image (K = 1: ordinary classifier-free guidance).
OPERATOR_LABELS = {"union": "∪ union", "intersection": "∩ intersection", "conjunction": "Σ sum", "inclusion_exclusion": "∪ incl.-excl."}
# Characters of one prompt line under an image of the grid.
CAPTION_WIDTH = 22


def _common_prefix(prompts: Sequence[str]) -> str:
    """The words every prompt starts with (``a digit three``, commas aside): the class, which the grid's row
    names already."""
    split = [p.split(" ") for p in prompts if p]
    if not split:
        return ""
    common = []
    for words in zip(*split):
        if len({w.rstrip(",") for w in words}) != 1:
            break
        common.append(words[0].rstrip(","))
    return " ".join(common)


def _short(prompt: str, prefix: str, width: int = CAPTION_WIDTH) -> str:
    rest = prompt[len(prefix):].lstrip(" ,") if prefix and prompt.startswith(prefix) else prompt
    rest = rest or prompt  # the class prompt itself (sd_plain's)
    return rest if len(rest) <= width else rest[: width - 1].rstrip(" ,") + "…"


def image_caption(operator: str, prompts: str, prefix: str = "") -> str:
    """What made a generated image, short: its operator, then each of its K conditions' strongest prompt
    without the class words ``prefix`` (``∪ union / thin strokes / slanted left / large``)."""
    recipe = json.loads(prompts)
    conditions = [max(zip(weights, condition))[1] for condition, weights in zip(recipe["prompts"], recipe["weights"])]
    name = "CFG" if len(conditions) == 1 else OPERATOR_LABELS.get(operator, operator)
    return "\n".join([name, *(_short(prompt, prefix) for prompt in conditions)])


def sample_grid(
    real_train: pd.DataFrame,
    generated: Mapping[str, pd.DataFrame],
    columns: Sequence[str],
    out: str | Path,
    image_mode: str,
    per_cell: int = 4,
    cell_inches: float = 0.8,
) -> Path:
    """One row per class; columns ``real`` then the image sets in ``columns`` (those generated), ``per_cell``
    images each. Under every generated image: its operator and prompts (:func:`image_caption`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [("real", real_train)] + [(name, generated[name]) for name in columns if name in generated]
    labels = sorted(real_train["label"].unique())
    names = dict(zip(real_train["label"], real_train["class_name"]))
    lines = 1 + max(
        (len(json.loads(p)["prompts"]) for _, frame in sets[1:] for p in frame["prompts"].head(per_cell * len(labels))), default=0
    )
    caption_inches = 0.09 * lines
    fig, axes = plt.subplots(
        len(labels), len(sets) * per_cell, squeeze=False,
        figsize=(1.2 + cell_inches * len(sets) * per_cell, 0.45 + (cell_inches + caption_inches) * len(labels)),
    )  # fmt: skip
    for r, label in enumerate(labels):
        # The class's words, common to every prompt of its generated images (sd_plain's prompt is just them).
        prefix = _common_prefix(
            [p for _, frame in sets[1:] for prompts in frame.loc[frame["label"] == label, "prompts"]
             for condition in json.loads(prompts)["prompts"] for p in condition]
        )  # fmt: skip
        for c, (name, frame) in enumerate(sets):
            shown = frame[frame["label"] == label].head(per_cell)
            tiles = load_images(shown["file"].tolist(), image_mode, 96) if len(shown) else []
            for i in range(per_cell):
                ax = axes[r][c * per_cell + i]
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(False)
                if i < len(shown):
                    ax.imshow(tiles[i], cmap="gray" if image_mode == "L" else None, vmin=0, vmax=255, interpolation="nearest")
                    if name != "real":
                        row = shown.iloc[i]
                        ax.set_xlabel(image_caption(row["operator"], row["prompts"], prefix), fontsize=4.5, linespacing=1.0)
                if r == 0 and i == 0:
                    ax.set_title(name, fontsize=9, loc="left")
                if c == 0 and i == 0:
                    ax.set_ylabel(str(names[label]), rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.3, w_pad=0.1, h_pad=0.2)
    return save_figure(fig, out, dpi=150)


def write_report(rows: Sequence[pd.DataFrame], out_csv: str | Path) -> pd.DataFrame:
    table = pd.concat(list(rows), ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)
    atomic_write_text(out_csv, table.to_csv(index=False, float_format="%.4f"))
    return table


def generation_report(
    datasets: Mapping[str, Mapping[str, Any]], image_sets: list[str], layout: Any, threads: int = 1
) -> pd.DataFrame:
    """``results/generation.csv`` and the sample grids of ``datasets`` (the ``generation_report`` job).

    ``datasets``: per dataset its generation ``settings``, ``image_size``, ``pretrained`` and
    ``validation_classes`` (the job record's); files from ``layout`` (:class:`dmlsynth.layout.Layout`).
    Image features are computed on each dataset's generation device with ``threads`` decoding processes.
    """
    from dmlsynth import registry
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.data.split import split_training
    from dmlsynth.generation.fine_tuning import fine_tuning_seconds
    from dmlsynth.generation.settings import GRID_ORDER

    rows = []
    for dataset, values in datasets.items():
        spec, generation = registry.dataset(dataset), values["settings"]
        # The classes generation was for: the training split less any validation classes.
        frame = read_manifest(layout.manifest(dataset))
        real = split_training(frame[frame["split"] == "train"], int(values["validation_classes"]))[0].reset_index(drop=True)
        classes = real["label"].nunique()
        generated = {name: read_manifest(layout.image_set_manifest(dataset, name)) for name in image_sets}
        parts = [layout.filtered_part(dataset, i) for i in range(classes)]
        every = pd.concat([pd.read_csv(p, dtype={"class_name": str}) for p in parts], ignore_index=True)
        filtered = {name: every[every["image_set"] == name] for name in generated}
        generator = generation["generator"]
        quality = quality_rows(
            dataset, real, generated, spec.image_mode, int(values["image_size"]), generator, bool(values["pretrained"]),
            device=generation["device"], threads=threads, filtered=filtered,
        )  # fmt: skip
        # The embedded generator's training time, or Stable Diffusion's per-class fine-tuning, belongs to the cost of its images.
        metadata = Path(layout.generator_metadata(dataset))
        quality["generator_train_seconds"] = (
            json.loads(metadata.read_text())["seconds"] if generator == "embedded" else fine_tuning_seconds(generation, layout, dataset, classes)
        )
        # How the images were guided (the per-image statistics above depend on both).
        quality["intersection_rule"] = generation["intersection_rule"]
        quality["guidance_norm"] = generation["guidance_norm"]
        rows.append(quality)
        sample_grid(real, generated, GRID_ORDER, layout.generated_grid(dataset), spec.image_mode)
    return write_report(rows, layout.generation_csv())
