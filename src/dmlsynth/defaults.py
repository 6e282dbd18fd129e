"""The one place defaults are merged: a JSON-schema validator that fills each absent key with its ``default:``.

Defaults live in the schema (``src/dmlsynth/schema/params.schema.yaml``) and, for what belongs to a
registry entry (a dataset's backbone and sizes, a loss's and a method's params, a method's variants), on
the entry; :func:`dmlsynth.config.validate` places the entries' defaults into the schema and fills the
whole config in the same pass that validates it (jsonschema's documented recipe: ``properties`` extended
to set defaults before it descends, so a block that is absent is created and then filled key by key).

A method's *variant* (``MethodSpec.variants``) chooses a set of defaults by the value of its ``variant``
key; its node carries them under :data:`VARIANTS_KEY` and they are filled before the method's own.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any, Iterator, Mapping

import jsonschema
import yaml

# The key of a schema node that holds a method's variants' defaults ({variant: {key: value}}).
VARIANTS_KEY = "x-variant-defaults"

_check_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]


def _fill_then_check(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if isinstance(instance, dict):
        variants = schema.get(VARIANTS_KEY) or {}
        if variants:
            chosen = instance.get("variant", (properties.get("variant") or {}).get("default"))
            # An unknown variant fills nothing of its own (the variant's enum names it as the error).
            for key, value in ((variants.get(chosen) if isinstance(chosen, str) else None) or {}).items():
                instance.setdefault(key, copy.deepcopy(value))
        for key, node in properties.items():
            if isinstance(node, Mapping) and "default" in node:
                instance.setdefault(key, copy.deepcopy(node["default"]))
    yield from _check_properties(validator, properties, instance, schema)


FillingValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": _fill_then_check})


@functools.lru_cache(maxsize=1)
def schema_file() -> dict[str, Any]:
    """``params.schema.yaml`` as written (the registry's names not yet filled in); callers copy before changing it."""
    return yaml.safe_load(resources.files("dmlsynth.schema").joinpath("params.schema.yaml").read_text())


def block(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``given`` as block ``name`` of params.yaml, its schema defaults filled (a block with no registry
    entries, e.g. ``tracking``, wanted without a whole config)."""
    values = copy.deepcopy(dict(given))
    fill(schema_file()["properties"][name], values)  # not validated: the caller's values are its own
    return values


def fill(schema: Mapping[str, Any], instance: Any) -> list[jsonschema.ValidationError]:
    """Fill ``instance`` in place with the defaults of ``schema``; the validation errors, by path."""
    return sorted(FillingValidator(schema).iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))


def params_node(
    properties: Mapping[str, Any], defaults: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The schema node of a registry entry's params: its ``properties`` with the entry's ``defaults`` as
    their ``default:`` entries (and its ``variants``' defaults); the node itself defaults to ``{}``."""
    filled = {key: dict(node) for key, node in properties.items()}
    for key, value in defaults.items():
        filled.setdefault(key, {})["default"] = value
    node: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": filled, "default": {}}
    if variants:
        node[VARIANTS_KEY] = {name: dict(values) for name, values in variants.items()}
    return node
