"""Validation classes: a held-out part of the training classes, for choosing the epoch.

Model selection on the test classes would report an optimistic number
(Musgrave et al. 2020, "A Metric Learning Reality Check"). With
``dataset_settings.<dataset>.validation_classes: N`` the last N training
classes (by sorted class id) are validation classes: training, prompts,
the embedded generator, image generation and the generation report see only
the remaining training classes; the test classes stay as they are. The split
is deterministic and the same for every seed and method, so paired runs
choose their epochs on the same classes.

Torch-free: Snakemake reads :func:`training_class_count` to size the
generation jobs.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from dmlsynth import registry


# The fewest validation classes a retrieval metric means anything on (one class: every neighbor is right).
MIN_VALIDATION_CLASSES = 2

# Images of each training class (by sorted class id) of the datasets whose copy is fixed and countable
# offline: scikit-learn's digits (tests/unit/data/test_split.py counts them in the prepared dataset).
# The photo datasets' class sizes are not known before their download, so they are not checked here.
TRAINING_CLASS_SIZES: dict[str, tuple[int, ...]] = {"digits": (178, 182, 177, 183, 181)}


def validation_class_count(config: Mapping[str, Any], dataset: str) -> int:
    """``dataset_settings.<dataset>.validation_classes`` (0: no validation split)."""
    return int(registry.dataset_settings(config, dataset)["validation_classes"])


def split_class_count(config: Mapping[str, Any], dataset: str) -> int:
    """Classes of the training split of ``dataset``: the first half of its classes by id, or the dataset's own
    training classes (Stanford Online Products: 11,318 of 22,634; In-Shop: 3,997 of 7,982).

    ``dataset_settings.<dataset>.expected.train_classes`` (or ``classes``, halved; a smaller copy of the
    dataset, as in the tests) overrides the published class count.
    """
    expected = (((config.get("dataset_settings") or {}).get(dataset) or {}).get("expected")) or {}
    if "train_classes" in expected:
        return int(expected["train_classes"])
    if "classes" in expected:
        return int(expected["classes"]) // 2
    return registry.dataset(dataset).train_classes


def training_class_count(config: Mapping[str, Any], dataset: str) -> int:
    """Training classes left for training (and generation: one job each) after the validation classes."""
    return split_class_count(config, dataset) - validation_class_count(config, dataset)


def smallest_training_class(config: Mapping[str, Any], dataset: str) -> int | None:
    """Images of the smallest class training uses (validation classes left out), where it is known before
    the data is prepared (:data:`TRAINING_CLASS_SIZES`, a declared dataset's count; not for a smaller copy given by ``expected``)."""
    sizes = TRAINING_CLASS_SIZES.get(dataset)
    expected = (((config.get("dataset_settings") or {}).get(dataset) or {}).get("expected")) or {}
    if sizes is None and registry.dataset(dataset).smallest_class and not expected:
        # A dataset declared in params.yaml counted its classes (validation classes included: stricter).
        return registry.dataset(dataset).smallest_class
    if sizes is None or expected:
        return None
    return min(sizes[: len(sizes) - validation_class_count(config, dataset)])


def uses_validation(config: Mapping[str, Any]) -> bool:
    """Whether the configured datasets choose their epoch on validation classes (all or none do)."""
    return any(validation_class_count(config, dataset) for dataset in config["datasets"])


def split_training(train_frame: pd.DataFrame, validation_classes: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training split of a manifest -> (training rows, validation rows): the last classes by id validate."""
    if (train_frame["split"] != "train").any():
        raise ValueError("validation classes are taken from the training split only")
    classes = sorted(int(c) for c in train_frame["label"].unique())
    count = int(validation_classes)
    if count == 0:
        return train_frame, train_frame.iloc[0:0]
    if count < MIN_VALIDATION_CLASSES or count > len(classes) - MIN_VALIDATION_CLASSES:
        raise ValueError(
            f"validation_classes is {count}, but it must be 0 or between {MIN_VALIDATION_CLASSES} and "
            f"{len(classes) - MIN_VALIDATION_CLASSES} for {len(classes)} training classes"
        )
    held_out = set(classes[-count:])
    is_validation = train_frame["label"].astype(int).isin(held_out)
    return train_frame[~is_validation], train_frame[is_validation]


def training_rows(frame: pd.DataFrame, config: Mapping[str, Any], dataset: str) -> pd.DataFrame:
    """The rows of a manifest that training and generation may use: training split less validation classes."""
    train = frame[frame["split"] == "train"]
    return split_training(train, validation_class_count(config, dataset))[0].reset_index(drop=True)
