"""Loading, validating and resolving ``params.yaml``.

The schema file fixes the structure; the allowed names come from
:mod:`dmlsynth.registry`. Validation happens before any job runs (the
Snakefile calls :func:`validate`), and every error names the key, the bad
value and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from dmlsynth import registry


class ConfigError(ValueError):
    """params.yaml is malformed or asks for something that does not exist."""


def _schema() -> dict[str, Any]:
    text = resources.files("dmlsynth.schema").joinpath("params.schema.yaml").read_text()
    schema = yaml.safe_load(text)
    names = {
        "@datasets": sorted(registry.DATASETS),
        "@methods": sorted(registry.METHODS),
        "@losses": sorted(registry.LOSSES),
        "@backbones": sorted(registry.BACKBONES),
    }

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (names[v] if k == "enum" and isinstance(v, str) else fill(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    schema = fill(schema)
    # Each method's own params are validated by the schema its registry entry declares.
    schema["properties"]["method_params"]["properties"] = {
        name: {"type": "object", "additionalProperties": False, "properties": dict(spec.params_schema)}
        for name, spec in registry.METHODS.items()
    }
    return schema


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate(config: Mapping[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Check ``config`` and return a deep copy; raise :class:`ConfigError` listing every problem."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(config).__name__}")
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft202012Validator(_schema())
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        message = error.message
        if error.validator == "enum":
            message = f"{error.instance!r} is not allowed; allowed values: {', '.join(map(str, error.validator_value))}"
        elif error.validator == "additionalProperties" and "was unexpected" in message:
            allowed = sorted(error.schema.get("properties", {}))
            message += f"; allowed keys: {', '.join(allowed) if allowed else 'none'}"
        problems.append(f"  - at {_where(error.absolute_path)}: {message}")
    if not problems:
        problems = _semantic_problems(config)
    if problems:
        raise ConfigError(
            f"{source} is not valid:\n" + "\n".join(problems) + "\nFix these keys (see README, 'Configuration')."
        )
    return config


def _semantic_problems(config: Mapping[str, Any]) -> list[str]:
    """Rules the schema cannot express: method x loss compatibility and batch composition."""
    problems = []
    excluded = {(e["method"], e["loss"]) for e in config.get("exclude") or []}
    for method in config["methods"]:
        spec = registry.METHODS[method]
        for loss in config["losses"]:
            if not spec.is_compatible(loss) and (method, loss) not in excluded:
                allowed = ", ".join(sorted(spec.compatible_losses or ()))
                problems.append(
                    f"  - at methods/losses: method {method!r} does not work with loss {loss!r} "
                    f"(it works with: {allowed}); remove one of them, or skip just this pair with "
                    f"`exclude: [{{method: {method}, loss: {loss}}}]`"
                )
    training = config["training"]
    if training["batch_size"] % training["m_per_class"]:
        problems.append(
            f"  - at training.batch_size: {training['batch_size']} is not a multiple of "
            f"training.m_per_class ({training['m_per_class']})"
        )
    for name in config["datasets"]:
        classes = registry.DATASETS[name].train_classes
        if training["m_per_class"] * classes < training["batch_size"]:
            problems.append(
                f"  - at training.batch_size: {training['batch_size']} needs at least "
                f"{training['batch_size'] // training['m_per_class']} training classes at "
                f"m_per_class={training['m_per_class']}, but {name!r} has {classes}"
            )
    return problems


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of params.yaml")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return validate(config if config is not None else {}, source=str(path))


def dataset_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """Registry defaults for ``dataset`` updated with ``config['dataset_settings'][dataset]``."""
    spec = registry.DATASETS[dataset]
    settings: dict[str, Any] = {
        "backbone": spec.default_backbone,
        "pretrained": False,
        "embedding_dim": spec.default_embedding_dim,
        "image_size": spec.default_image_size,
        "urls": {},
        "resources": {},
    }
    settings.update((config.get("dataset_settings") or {}).get(dataset) or {})
    return settings


NOT_RUN_PARAMS = ("resources", "urls", "md5", "expected")


def run_params(config: Mapping[str, Any], dataset: str, method: str, loss: str, seed: int) -> dict[str, Any]:
    """Everything that determines the numbers of one training run, fully resolved.

    This is what a run records, what its checkpoint is keyed on and what
    Snakemake compares to decide whether a finished run is out of date.
    """
    return {
        "dataset": dataset,
        "method": method,
        "loss": loss,
        "seed": int(seed),
        # Where the data came from (mirror URLs, checksums) and cluster resources don't change the numbers.
        "dataset_settings": {
            k: v for k, v in dataset_settings(config, dataset).items() if k not in NOT_RUN_PARAMS
        },
        "training": dict(config["training"]),
        "loss_params": registry.loss_params(loss, config),
        "method_params": registry.method_params(registry.METHODS[method], config),
        "evaluation": dict(config["evaluation"]),
    }


def params_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_effective(config: Mapping[str, Any], folder: str | os.PathLike[str]) -> Path:
    """Write the merged config Snakemake runs with to a content-addressed file; return its path.

    Snakemake may merge several config files and ``--config`` overrides; jobs
    read exactly that merged config from this file.
    """
    text = yaml.safe_dump(dict(config), sort_keys=True)
    path = Path(folder) / f"config-{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        atomic_write_text(path, text)
    return path
