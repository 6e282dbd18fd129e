"""BLenDeR (Kolf et al.; docs/methods.md §7) and its ablations as training methods.

They are *data-level* methods: the loss is the base loss alone, and what makes
them differ is the training set. The generation stage (:mod:`dmlsynth.generation`)
makes the image set their registry entry names (``MethodSpec.synthetic_images``:
``blender``, ``union``, ``intersection``, ``plain``), and
:meth:`GeneratedImages.training_frame` mixes it into the real training images.

``mix_synthetic`` adds, for every training class, ``round(synthetic_per_real ×
n_real)`` generated images of that class (at most as many as were generated),
drawn without replacement with the run's seed; ``synthetic_per_real: all`` (the
default) adds every generated image of the class, as the paper adds its whole
generated set. Generated images keep their
class label and join that class only; an image set that holds a class which
is not a training class is rejected, so test classes never get synthetic
images.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from dmlsynth.data.manifest import ManifestError
from dmlsynth.methods.base import Method

ALL = "all"  # synthetic_per_real: every generated image of a class


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"synthetic_per_real must be a number >= 0 or {ALL!r}, got {value!r}")
    return float(value)


def mix_synthetic(
    train_frame: pd.DataFrame, synthetic_frame: pd.DataFrame, method_params: Mapping[str, Any], seed: int
) -> pd.DataFrame:
    """Real training rows plus the sampled synthetic rows (same columns, ``synthetic`` flag added)."""
    if (train_frame["split"] != "train").any():
        raise ValueError("mix_synthetic expects the training split only")
    every = method_params["synthetic_per_real"] == ALL
    ratio = 1.0 if every else _ratio(method_params["synthetic_per_real"])
    train_labels = set(int(l) for l in train_frame["label"])
    synthetic_labels = set(int(l) for l in synthetic_frame["label"])
    foreign = sorted(synthetic_labels - train_labels)
    if foreign:
        raise ManifestError(
            f"the generated image set holds class(es) {foreign} that are not training classes; test classes must "
            "never get synthetic images: delete the generated folder and generate it again"
        )
    if "split" in synthetic_frame and (synthetic_frame["split"] != "train").any():
        raise ManifestError("generated images must all be in the train split")
    missing = sorted(train_labels - synthetic_labels)
    if missing and ratio > 0:
        raise ManifestError(
            f"the generated image set has no images of training class(es) {missing}: generate them, or, if the "
            "filter rejected them all (logs/filter_generated/), raise generation.<dataset>.filter.extra, lower "
            "its threshold or set filter.scorer: none"
        )
    rng = np.random.default_rng([int(seed), 7919])  # a stream of its own, independent of the training RNGs
    real = train_frame.assign(synthetic=False)
    picked = []
    for label in sorted(train_labels):
        pool = synthetic_frame[synthetic_frame["label"] == label].sort_values("path")
        count = len(pool) if every else min(len(pool), int(round(ratio * int((train_frame["label"] == label).sum()))))
        if count:
            picked.append(pool.iloc[np.sort(rng.choice(len(pool), size=count, replace=False))])
    if not picked:
        return real
    synthetic = pd.concat(picked).assign(split="train", synthetic=True)
    # Generated rows keep the part file of the job that made them (what to delete to make them again).
    columns = list(real.columns) + [c for c in ("part",) if c in synthetic.columns and c not in real.columns]
    return pd.concat([real, synthetic[columns]], ignore_index=True)


class GeneratedImages(Method):
    """The base loss alone, on real images plus generated images of the same classes."""

    @classmethod
    def training_frame(
        cls, train_frame: pd.DataFrame, generated_frame: pd.DataFrame | None, params: Mapping[str, Any], seed: int
    ) -> pd.DataFrame:
        if generated_frame is None:
            raise ManifestError("this method trains with generated images: give the image set's manifest")
        return mix_synthetic(train_frame, generated_frame, params, seed)
