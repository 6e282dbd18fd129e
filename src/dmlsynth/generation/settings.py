"""Generation settings and image sets, without importing torch (Snakemake reads these).

An *image set* is one kind of synthetic training images of a dataset, made
by one sampling recipe; a data-level method names the set it trains with
(``MethodSpec.synthetic_images``):

| set | method | conditions per image | operator per image |
|---|---|---|---|
| ``blender`` | ``blender`` | K blended prompts | drawn from ``operators`` (union and intersection mixed) |
| ``union`` | ``blender_union`` | K blended prompts | union |
| ``intersection`` | ``blender_intersection`` | K blended prompts | intersection |
| ``plain`` | ``sd_plain`` | the class's single ``plain`` prompt | ordinary classifier-free guidance |

Every set of a dataset has the same budget (``images_per_class`` images per
training class, same steps and guidance scale).

Which of these settings decide whether a class is generated again is the job
record's business (:data:`dmlsynth.jobs.NEUTRAL`): the batch size, slicing and
compiling stay compared, since they reorder float arithmetic and a batch size
measurably changed a generated pixel.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

from dmlsynth import registry

IMAGE_SETS = registry.IMAGE_SETS
# Order of the columns of the sample grid after the real images.
GRID_ORDER = ("plain", "union", "intersection", "blender")


def generation_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """``generation.<dataset>`` of a validated config (its defaults, and the dataset's generator, filled)."""
    return copy.deepcopy(dict(config["generation"][dataset]))


def filter_scorer(settings: Mapping[str, Any]) -> str:
    """``clip``, ``fidelity`` or ``none``: what scores a generated image (``auto`` resolved by the generator).

    **[project definition]** ``auto``: the fidelity classifier for a generator trained here (the
    embedded one: CLIP knows nothing of 8x8 digits), CLIP, as in the paper, for Stable Diffusion.
    """
    scorer = str(settings["filter"]["scorer"])
    if scorer != "auto":
        return scorer
    return "fidelity" if registry.GENERATORS[settings["generator"]].trained_here else "clip"


def images_generated(settings: Mapping[str, Any]) -> int:
    """Images generated per class and set: the budget plus the filter's ``extra`` share (none unfiltered)."""
    budget = int(settings["images_per_class"])
    if filter_scorer(settings) == "none":
        return budget
    return budget + math.ceil(float(settings["filter"]["extra"]) * budget)


def image_sets(config: Mapping[str, Any], dataset: str | None = None) -> list[str]:
    """The image sets the configured methods train with (sorted)."""
    del dataset  # every dataset gets the sets its methods need
    names = {registry.METHODS[m].synthetic_images for m in config["methods"]}
    return sorted(n for n in names if n)


def needs_generation(config: Mapping[str, Any]) -> bool:
    return bool(image_sets(config))


def set_recipe(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Operators mix, K and blend count of image set ``name`` under ``settings``."""
    if name not in IMAGE_SETS:
        raise ValueError(f"unknown image set {name!r}; known: {', '.join(IMAGE_SETS)}")
    recipe = IMAGE_SETS[name]
    plain = recipe.conditions == "plain"
    operators = dict(recipe.operators or settings["operators"])
    total = sum(operators.values())
    if total <= 0:
        raise ValueError(f"generation.operators of image set {name!r} must have a positive weight")
    return {
        "operators": {k: v / total for k, v in sorted(operators.items())},
        "prompts_per_image": 1 if plain else int(settings["prompts_per_image"]),
        "prompts_per_condition": 1 if plain else int(settings["prompts_per_condition"]),
        "plain": plain,
    }


def variant_line(config: Mapping[str, Any], method: str) -> str:
    """``<method>: variant <v>``, and the control each configured loss pairs it with."""
    variant = registry.method_params(registry.METHODS[method], config)["variant"]
    controls = ", ".join(f"{loss}: {registry.control_label(config, method, loss)}" for loss in config["losses"])
    return f"{method}: variant {variant} (control {controls})"


def describe(config: Mapping[str, Any]) -> list[str]:
    """What ``dmlsynth check-config`` prints beside the job matrix: each configured method's variant and
    control (methods with variants), then what generation makes and what training adds of it, one line per
    dataset and per method (nothing of it when no configured method trains with generated images)."""
    lines = [variant_line(config, method) for method in config["methods"] if registry.METHODS[method].variants]
    sets = image_sets(config)
    if not sets:
        return lines
    for dataset in config["datasets"]:
        settings = generation_settings(config, dataset)
        prompts = settings["prompts"]
        source = (
            f"captions of {prompts['images_per_class']} training images per class by {prompts['captioner']}"
            if prompts["source"] == "captions"
            else "attribute prompts"
        )
        lines.append(
            f"generation.{dataset}: {settings['generator']}, {settings['images_per_class']} images per training "
            f"class and image set ({', '.join(sets)}), {source}; intersection_rule {settings['intersection_rule']}, "
            f"guidance_norm {settings['guidance_norm']}"
        )
    for method in config["methods"]:
        spec = registry.METHODS[method]
        if spec.synthetic_images:
            share = registry.method_params(spec, config)["synthetic_per_real"]
            added = "every generated image the filter kept" if share == "all" else f"round({share} x its real images) generated images"
            lines.append(f"{method}: trains on the real images plus, per class, {added} of image set {spec.synthetic_images!r}")
    return lines
