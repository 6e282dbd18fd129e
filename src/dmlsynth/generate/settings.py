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
"""

from __future__ import annotations

from typing import Any, Mapping

from dmlsynth import registry

GENERATORS = ("embedded", "stable-diffusion")

DEFAULTS: dict[str, Any] = {
    "generator": "embedded",
    "model_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "scheduler": "dpm-solver",
    "steps": 15,
    "guidance_scale": 3.0,
    "images_per_class": 80,
    "batch_size": 80,
    "prompts_per_image": 3,
    "prompts_per_condition": 2,
    "operators": {"union": 0.5, "intersection": 0.5},
    "seed": 0,
    "device": "auto",
    "fp16": True,
    "attention_slicing": "auto",
    "textual_inversion": {},
    "lora": None,
    "threads": 1,
    "embedded": {},
}

IMAGE_SETS: dict[str, dict[str, Any]] = {
    "blender": {"operators": None, "conditions": "attributes"},  # None: the configured operators mix
    "union": {"operators": {"union": 1.0}, "conditions": "attributes"},
    "intersection": {"operators": {"intersection": 1.0}, "conditions": "attributes"},
    "plain": {"operators": {"conjunction": 1.0}, "conditions": "plain"},
}
# Order of the columns of the sample grid after the real images.
GRID_ORDER = ("plain", "union", "intersection", "blender")


def generation_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """Defaults updated with ``config['generation'][dataset]``."""
    settings = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    # The embedded generator is made for small grayscale images; photo datasets default to Stable Diffusion.
    if registry.DATASETS[dataset].image_mode != "L":
        settings["generator"] = "stable-diffusion"
    settings.update(((config.get("generation") or {}).get(dataset)) or {})
    return settings


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
    plain = recipe["conditions"] == "plain"
    operators = dict(recipe["operators"] or settings["operators"])
    total = sum(operators.values())
    if total <= 0:
        raise ValueError(f"generation.operators of image set {name!r} must have a positive weight")
    return {
        "operators": {k: v / total for k, v in sorted(operators.items())},
        "prompts_per_image": 1 if plain else int(settings["prompts_per_image"]),
        "prompts_per_condition": 1 if plain else int(settings["prompts_per_condition"]),
        "plain": plain,
    }


def generation_outputs(config: Mapping[str, Any]) -> list[str]:
    """Every output the generation rules declare (empty when no configured method uses generated images).

    Per dataset: the prompts file, the embedded generator's folder (when used), one part per
    training class and one manifest per image set; then the report and the sample grids.
    """
    if not needs_generation(config):
        return []
    data, results = config["paths"]["data"], config["paths"]["results"]
    outputs: list[str] = []
    for dataset in config["datasets"]:
        outputs.append(f"{data}/{dataset}/prompts.yaml")
        if generation_settings(config, dataset)["generator"] == "embedded":
            outputs.append(f"{data}/{dataset}/generator")
        outputs += [f"{data}/{dataset}/generated/parts/class{i}.csv" for i in range(registry.DATASETS[dataset].train_classes)]
        outputs += [f"{data}/{dataset}/generated/{name}/manifest.csv" for name in image_sets(config)]
    outputs.append(f"{results}/generation.csv")
    outputs += [f"{results}/figures/generated_{dataset}.png" for dataset in config["datasets"]]
    return outputs


def generated_image_dirs(config: Mapping[str, Any]) -> list[str]:
    """The folders of generated images (written by the generate jobs next to their parts; DVC versions them)."""
    data = config["paths"]["data"]
    return [f"{data}/{d}/generated/{name}/images" for d in config["datasets"] for name in image_sets(config)]
