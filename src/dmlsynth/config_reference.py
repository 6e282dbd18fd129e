"""The reference of params.yaml's keys in docs/configuration.md: every key of the schema with the default
that :func:`dmlsynth.config.config_defaults` resolves it to and the schema's description.

Rendered into the document as a generated block (:mod:`dmlsynth.docblocks`, source: the schema file);
``tests/unit/test_docblocks.py`` fails when a default, a key or a description changes and the page
was not rendered again::

    python -m dmlsynth.config_reference    # re-render docs/configuration.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

SCRIPT = "src/dmlsynth/config_reference.py"
SOURCE = "src/dmlsynth/schema/params.schema.yaml"
DOCUMENT = "docs/configuration.md"
MISSING = object()


def _value(value: Any) -> str:
    if value is MISSING:
        return "—"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).split("\n...")[0].strip()
    return f"`{text}`".replace("|", "\\|")


def _describe(node: Mapping[str, Any]) -> str:
    """What the schema says of a key: its description, else its allowed values or type."""
    if node.get("description"):
        return str(node["description"]).replace("|", "\\|")
    if isinstance(node.get("enum"), list):
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        items = node.get("items") or {}
        if isinstance(items.get("enum"), list):
            return "a list of: " + ", ".join(f"`{v}`" for v in items["enum"])
        if items.get("properties"):
            return "a list of `{" + ", ".join(items["properties"]) + "}`"
        return "a list"
    if not kind:
        return ""
    bounds = []
    if "minimum" in node:
        bounds.append(f"≥ {node['minimum']}")
    if "exclusiveMinimum" in node:
        bounds.append(f"> {node['exclusiveMinimum']}")
    if "maximum" in node:
        bounds.append(f"≤ {node['maximum']}")
    if "exclusiveMaximum" in node:
        bounds.append(f"< {node['exclusiveMaximum']}")
    return " or ".join(kind if isinstance(kind, list) else [kind]) + (f" {', '.join(bounds)}" if bounds else "")


def _leaves(node: Mapping[str, Any], defaults: Any, prefix: str = "") -> Iterator[tuple[str, Any, Mapping[str, Any]]]:
    """``(dotted key, default, schema node)`` of every leaf key under ``node``'s properties."""
    for key, child in (node.get("properties") or {}).items():
        default = defaults.get(key, MISSING) if isinstance(defaults, Mapping) else MISSING
        if child.get("properties") and not child.get("description"):
            yield from _leaves(child, {} if default is MISSING else default, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", default, child


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def render(schema_file: Path) -> str:
    """Markdown: one table per block of params.yaml, keys in the schema's order."""
    del schema_file  # the schema as validation uses it, with the registry's names filled in
    from dmlsynth import registry
    from dmlsynth.config import _schema, config_defaults

    schema = _schema()["properties"]
    datasets = list(registry.DATASETS)
    defaults = config_defaults(datasets)
    out: list[str] = []
    for block, node in schema.items():
        out.append(f"#### `{block}`")
        out.append("")
        if block == "dataset_settings":
            entry = node["additionalProperties"]
            rows = []
            for key, _, child in _leaves(entry, {}):
                values = [_value(_dig(defaults["dataset_settings"][d], key)) for d in datasets]
                rows.append([f"`{key}`", *values, _describe(child)])
            out += [f"Per dataset (`dataset_settings.<dataset>`); the defaults of each dataset:", ""]
            out += _table(["key", *(f"`{d}`" for d in datasets), "what it is"], rows)
        elif block == "generation":
            entry = node["additionalProperties"]
            first = defaults["generation"][datasets[0]]
            rows = [[f"`{key}`", _value(value), _describe(child)] for key, value, child in _leaves(entry, first)]
            generators = ", ".join(f"{d}: `{defaults['generation'][d]['generator']}`" for d in datasets)
            out += [f"Per dataset (`generation.<dataset>`), the same defaults for every dataset but `generator` ({generators}):", ""]
            out += _table(["key", "default", "what it is"], rows)
        elif block in ("loss_params", "method_params"):
            rows = []
            for name, child in (node.get("properties") or {}).items():
                for key, value, leaf in _leaves(child, defaults[block].get(name, {})):
                    rows.append([f"`{name}.{key}`", _value(value), _describe(leaf)])
            out += _table(["key", "default", "what it is"], rows) if rows else []
        elif node.get("properties"):
            rows = [[f"`{key}`", _value(value), _describe(child)] for key, value, child in _leaves(node, defaults.get(block, {}))]
            out += _table(["key", "default", "what it is"], rows)
        else:
            out += [_describe(node) or "see above", ""]
    return "\n".join(out).rstrip() + "\n"


def _dig(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return MISSING
        tree = tree[part]
    return tree


def main() -> None:
    from dmlsynth import docblocks

    root = Path(__file__).resolve().parents[2]
    missing = docblocks.render_into(root, SCRIPT, SOURCE, {"render": render(root / SOURCE)})
    if missing:
        raise SystemExit(f"{DOCUMENT} has no block for {SCRIPT}; place its markers first")


if __name__ == "__main__":
    main()
