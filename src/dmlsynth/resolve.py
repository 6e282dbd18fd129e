"""A config resolved once into one tree: what every job record is built from (torch-free).

:func:`resolve` validates the config, which fills every default in one pass (:mod:`dmlsynth.defaults`), and
adds what follows from it: the run matrix (:func:`runs`: dataset x method x loss x seed, less ``exclude``d
pairs, plus the controls), each (method, loss) pair's loss params and control, the forest-plot groups,
the image sets, and each dataset's class counts. :class:`dmlsynth.jobs.Jobs` builds its records from this
tree; nothing below it merges a default or decides which runs exist.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping

from dmlsynth import config as cfg
from dmlsynth import registry
from dmlsynth.data import split
from dmlsynth.generation.settings import image_sets


def _excluded(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(e["method"], e["loss"]) for e in config.get("exclude") or []}


def runs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every training run of the (validated) config: dataset x method x loss x seed, less ``exclude``d pairs, and
    the controls the methods are compared with (:func:`dmlsynth.registry.control_label`): ``baseline`` even
    when the config does not list it, and a baseline with a method's own loss params where it has some.
    ``method`` is the run's name (its folder and its row in the table)."""
    excluded = _excluded(config)
    pairs = [(m, l) for m, l in itertools.product(config["methods"], config["losses"]) if (m, l) not in excluded]
    for method, loss in list(pairs):
        if method != registry.BASELINE:
            control = (registry.control_label(config, method, loss), loss)
            if control not in pairs:
                pairs.append(control)
    names = list(dict.fromkeys(m for m, _ in pairs))  # the configured methods first, then the controls
    return [
        {"dataset": d, "method": m, "loss": l, "seed": s}
        for d, m, l, s in itertools.product(config["datasets"], names, config["losses"], config["seeds"])
        if (m, l) in pairs
    ]


def comparison_groups(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (dataset, loss) pairs of the job matrix: one forest plot each."""
    return _groups(runs(config))


def _groups(matrix: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((run["dataset"], run["loss"]) for run in matrix))


def resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved tree of ``config``: ``config`` (validated, every block filled), ``runs``, ``pairs`` (per
    configured ``method/loss``: its ``loss_params`` and ``control``), ``comparison_groups``, ``image_sets`` and,
    per configured dataset, ``training_classes`` and ``validation_classes``."""
    config = cfg.validate(config)
    excluded = _excluded(config)
    pairs = {
        f"{method}/{loss}": {"loss_params": registry.loss_params(loss, config, method), "control": registry.control_label(config, method, loss)}
        for method, loss in itertools.product(config["methods"], config["losses"])
        if (method, loss) not in excluded and registry.METHODS[method].is_compatible(loss)
    }
    matrix = runs(config)
    return {
        "config": config,
        "runs": matrix,
        "pairs": pairs,
        "comparison_groups": _groups(matrix),
        "image_sets": image_sets(config),
        "datasets": {
            name: {"training_classes": split.training_class_count(config, name), "validation_classes": split.validation_class_count(config, name)}
            for name in config["datasets"]
        },
    }
