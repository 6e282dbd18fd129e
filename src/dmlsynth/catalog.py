"""What ``dmlsynth list`` prints: each entry of the registry with its one-line description, what it
works with and its variants.

Everything is read, when called, from the registry's tables (:func:`tables`) and the fields of each
spec, never from a list of names here: an entry added to a table — in :mod:`dmlsynth.registry`, or by a
loader of plugins that fills the same tables — is listed without a change to this module, its variants
(``MethodSpec.variants``) included. Torch-free, like the registry, so ``dmlsynth list`` starts fast.
"""

from __future__ import annotations

import shutil
import textwrap
from typing import Any, Callable, Iterable, Mapping

from dmlsynth import registry

KINDS = ("datasets", "backbones", "losses", "methods")
# What each kind is in params.yaml, printed above its entries.
HEADINGS = {
    "datasets": "datasets (params.yaml `datasets`; dataset_settings.<name> overrides their defaults)",
    "backbones": "backbones (dataset_settings.<dataset>.backbone)",
    "losses": "losses (params.yaml `losses`; loss_params.<name> overrides their params)",
    "methods": "methods (params.yaml `methods`; method_params.<name> overrides their params)",
}


def tables() -> dict[str, Mapping[str, Any]]:
    """The registry's table of each kind, as it is now (plugins' entries included once loaded)."""
    return {
        "datasets": registry.DATASETS,
        "backbones": registry.BACKBONES,
        "losses": registry.LOSSES,
        "methods": registry.METHODS,
    }


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "none"
    return str(value)


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_value(value)}" for key, value in params.items()) or "none"


def _names(names: Iterable[str]) -> str:
    return ", ".join(names) or "none"


def dataset_details(spec: registry.DatasetSpec) -> list[str]:
    generator = registry.GENERATORS.get(spec.default_generator)
    images = "grayscale" if spec.image_mode == "L" else spec.image_mode
    details = [
        f"classes: {spec.num_classes} ({spec.train_classes} train, {spec.num_classes - spec.train_classes} test)",
        f"images: {images}, {spec.default_image_size} px input; backbone {spec.default_backbone}, "
        f"embedding {spec.default_embedding_dim} by default",
        f"generator of the BLenDeR methods: {spec.default_generator}" + (f": {generator.description}" if generator else ""),
    ]
    if spec.default_cache_short_side:
        short_side = spec.default_cache_short_side
        details.append(f"training reads a resized JPEG copy (short side {short_side} px; dmlsynth cache-images)")
    if spec.bounding_boxes:
        details.append(f"bounding boxes: annotated (dataset_settings.{spec.name}.bounding_boxes: true crops to them)")
    return [*details, f"code: {spec.prepare}"]


def backbone_details(spec: registry.BackboneSpec) -> list[str]:
    default_of = [name for name, dataset in registry.DATASETS.items() if dataset.default_backbone == spec.name]
    return [f"default of: {_names(default_of)}", f"code: {spec.build}"]


def loss_details(spec: registry.LossSpec) -> list[str]:
    methods = [name for name, method in registry.METHODS.items() if method.is_compatible(spec.name)]
    details = [f"params: {_params(spec.defaults)}"]
    forms = registry.PAIR_FORMS.get(spec.name)
    if forms:
        details.append(f"forms (loss_params.{spec.name}.pairs): {forms[0]} (default), {_names(forms[1:])}")
    return [*details, f"methods: {_names(methods)}"]


def method_details(spec: registry.MethodSpec) -> list[str]:
    losses = "every loss" if spec.compatible_losses is None else _names(l for l in registry.LOSSES if spec.is_compatible(l))
    details = [f"losses: {losses}"]
    own = {key: value for key, value in spec.defaults.items() if not (spec.variants and key == "variant")}
    if own:
        details.append(f"params: {_params(own)}")
    default_variant = spec.defaults.get("variant")
    for variant, params in spec.variants.items():
        default = " (the default)" if variant == default_variant else ""
        details.append(f"variant={variant}{default}: {_params(params)}")
    if spec.synthetic_images:
        details.append(f"trains with generated images: the `{spec.synthetic_images}` set (generation.<dataset>)")
    for loss, params in spec.loss_params.items():
        details.append(f"with {loss}, it and its control train with: {_params(params)}")
    if spec.off_params:
        details.append(f"off (the base loss alone): {_params(spec.off_params)}")
    return [*details, f"code: {spec.module}"]


DETAILS: dict[str, Callable[[Any], list[str]]] = {
    "datasets": dataset_details,
    "backbones": backbone_details,
    "losses": loss_details,
    "methods": method_details,
}


def render(kinds: Iterable[str] = KINDS, width: int | None = None) -> str:
    """The listing of ``kinds``, wrapped to ``width`` columns (default: the terminal's)."""
    width = width or max(60, shutil.get_terminal_size((100, 24)).columns)
    blocks = []
    for kind in kinds:
        entries = tables()[kind]
        column = max((len(name) for name in entries), default=0) + 2
        lines = [f"{HEADINGS[kind]}:"]
        for name, spec in entries.items():
            lines += _wrap(f"  {name.ljust(column)}{spec.description}", width, " " * (column + 2))
            for detail in DETAILS[kind](spec):
                lines += _wrap(" " * (column + 4) + detail, width, " " * (column + 6))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _wrap(line: str, width: int, indent: str) -> list[str]:
    # Names and params are never cut: a line breaks only between words.
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)
