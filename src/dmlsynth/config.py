"""Loading, validating and resolving ``params.yaml``.

The schema file fixes the structure; the allowed names come from
:mod:`dmlsynth.registry`. Validation happens before any job runs (the
Snakefile calls :func:`validate`), and every error names the key, the bad
value and what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from dmlsynth import defaults, registry
from dmlsynth.io import read_yaml
from dmlsynth.errors import DmlsynthError


class ConfigError(DmlsynthError, ValueError):
    """params.yaml is malformed or asks for something that does not exist."""


def _schema(datasets: Iterable[str] = ()) -> dict[str, Any]:
    """The schema with the registry's names and the defaults its entries own: every loss's and method's
    params, and for each of ``datasets`` its backbone, sizes and generator (:mod:`dmlsynth.defaults`)."""
    schema = copy.deepcopy(defaults.schema_file())
    names = {
        "@datasets": sorted(registry.datasets()),
        "@methods": sorted(registry.METHODS),
        "@losses": sorted(registry.LOSSES),
        "@backbones": sorted(registry.BACKBONES),
        "@generators": sorted(registry.GENERATORS),
        "@tracking_runs": list(registry.TRACKING_RUNS),
        "@cpu_isa_levels": list(registry.CPU_ISA_LEVELS),
    }

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (names[v] if k == "enum" and isinstance(v, str) else fill(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    schema = fill(schema)
    blocks = schema["properties"]
    # Each method's own params are validated by the schema its registry entry declares, with its defaults.
    blocks["method_params"]["properties"] = {
        name: defaults.params_node(spec.params_schema, spec.defaults, spec.variants) for name, spec in registry.METHODS.items()
    }
    # A method's loss overrides take the keys loss_params allows for each loss (overrides: no defaults);
    # a plugin's loss brings its own.
    loss_schemas = blocks["loss_params"]["properties"]
    for name, spec in registry.LOSSES.items():
        loss_schemas.setdefault(name, {"type": "object", "additionalProperties": False, "properties": dict(spec.params_schema)})
    blocks["method_loss_params"]["additionalProperties"] = {
        "type": "object",
        "propertyNames": {"enum": sorted(registry.LOSSES)},
        "additionalProperties": False,
        "properties": copy.deepcopy(loss_schemas),
    }
    for name, spec in registry.LOSSES.items():
        loss_schemas[name] = defaults.params_node(loss_schemas[name]["properties"], spec.defaults)
    # The datasets' own defaults, per dataset (generation.<d> and dataset_settings.<d> are filled for each of
    # them: a job or a report may look up a dataset the config does not run).
    for name in datasets:
        spec = registry.dataset(name)
        own = {
            "backbone": spec.default_backbone, "embedding_dim": spec.default_embedding_dim,
            "image_size": spec.default_image_size, "cache_short_side": spec.default_cache_short_side,
        }  # fmt: skip
        for block, values in (("dataset_settings", own), ("generation", {"generator": spec.default_generator})):
            entry = copy.deepcopy(blocks[block]["additionalProperties"])
            for key, value in values.items():
                entry["properties"][key]["default"] = value
            blocks[block].setdefault("properties", {})[name] = {**entry, "default": {}}
    return schema


def filled(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` (or of a part of one: a test's, ``dmlsynth check-method``'s) with every default
    filled as :func:`validate` fills it, without validating it."""
    tree = copy.deepcopy(dict(config))
    tree.setdefault("training", {})
    defaults.fill(_schema(registry.datasets()), tree)  # the errors: what a part of a config lacks
    return tree


def config_defaults(datasets: Iterable[str] = ()) -> dict[str, Any]:
    """What a config that sets nothing of its own resolves to, block by block (for ``datasets``' per-dataset
    blocks): the defaults :func:`validate` fills. A shipped config states a value only where it differs
    (``tests/unit/test_defaults.py``); ``docs/configuration.md`` is rendered from this tree."""
    tree = filled({})
    for block in ("dataset_settings", "generation"):
        tree[block] = {name: tree[block][name] for name in datasets}
    return {key: value for key, value in tree.items() if key in DEFAULTED_BLOCKS}


# The blocks of params.yaml with defaults (the others are required or have none).
DEFAULTED_BLOCKS = (
    "dataset_settings", "training", "loss_params", "method_params", "evaluation", "statistics", "tracking",
    "reproducibility", "cluster", "generation",
)  # fmt: skip


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _parse_scalar(text: str, types: list[str]) -> Any:
    """``text`` as the first of ``types`` it reads as (YAML, then plain int/float for '1e-4'), else ``text``."""
    candidates = []
    try:
        candidates.append(yaml.safe_load(text))
    except yaml.YAMLError:
        pass
    for convert in (int, float):
        try:
            candidates.append(convert(text))
        except ValueError:
            pass
    # A whole number spelled as a float ('2.0', '1e3') is that integer where an integer is wanted.
    candidates += [int(v) for v in candidates if isinstance(v, float) and v.is_integer()]
    for kind in types:
        for value in candidates:
            if kind in _TYPES and _TYPES[kind](value):
                return value
    return text


def _types_of(schema: Mapping[str, Any]) -> list[str]:
    # An alternative without a type (e.g. {const: all}) adds none: a word that parses as no type stays a string.
    kinds = schema.get("type", [])
    return [kinds] if isinstance(kinds, str) else list(kinds)


def coerce(value: Any, schema: Mapping[str, Any]) -> Any:
    """Read strings as the types the schema asks for.

    ``snakemake --config training='{epochs: 5}'`` hands nested values over as
    strings (``{'epochs': '5'}``); where the schema wants a number, boolean,
    null, list or mapping, a string is parsed as YAML. Strings the schema
    allows as strings are left alone.
    """
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: coerce(v, properties.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce(v, schema.get("items", {})) for v in value]
    if isinstance(value, str):
        types = schema.get("type") or [t for alternative in schema.get("anyOf", []) for t in _types_of(alternative)]
        types = [types] if isinstance(types, str) else list(types)
        if types and "string" not in types:
            parsed = _parse_scalar(value, types)
            return coerce(parsed, schema) if isinstance(parsed, (dict, list)) else parsed
    return value


def validate(config: Mapping[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """Check ``config`` and return a deep copy; raise :class:`ConfigError` listing every problem.

    String values are first read as the types the schema asks for (:func:`coerce`).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(config).__name__}")
    from dmlsynth.data import declared

    config = coerce(copy.deepcopy(dict(config)), _schema())
    # The datasets the config declares (dataset_settings.<name>.source) become names the schema allows.
    declaration_problems = declared.declare(config)
    problems = list(declaration_problems) + _non_finite(config)
    # A declared dataset whose data cannot be used is said once (above), not again as an unknown name; one the
    # config does not run is not read, and its settings are not an unknown name either.
    undeclared = {name for name, given in (config.get("dataset_settings") or {}).items() if isinstance(given, Mapping) and "source" in given}
    undeclared -= set(registry.datasets())
    # One pass validates and fills every default (dmlsynth.defaults): the config is complete from here on.
    for error in defaults.fill(_schema(registry.datasets()), config):
        if error.validator == "enum" and error.instance in undeclared:
            continue
        message = error.message
        if error.validator == "enum":
            message = f"{error.instance!r} is not allowed; allowed values: {', '.join(map(str, error.validator_value))}"
        elif error.validator == "anyOf" and error.schema.get("description"):
            message = f"{error.instance!r} is not allowed; expected {error.schema['description']}"
        elif error.validator == "maximum":
            message += " (a sanity bound on sizes, several times the largest any paper uses: check for a typo)"
        elif error.validator == "additionalProperties" and "was unexpected" in message:
            allowed = sorted(error.schema.get("properties", {}))
            message += f"; allowed keys: {', '.join(allowed) if allowed else 'none'}"
        problems.append(f"  - at {_where(error.absolute_path)}: {message}")
    if not problems:
        problems = _semantic_problems(config)
    if problems:
        raise ConfigError(
            f"{source} is not valid:\n" + "\n".join(problems) + "\nFix these keys (see docs/configuration.md)."
        )
    return config


def _non_finite(node: Any, path: tuple = ()) -> list[str]:
    """Every NaN or infinite number of the config (YAML's .nan and .inf, `--config training.lr=nan`): no
    setting takes one, and the schema's bounds let NaN through (every comparison with it is false)."""
    if isinstance(node, Mapping):
        return [p for key, value in node.items() for p in _non_finite(value, (*path, key))]
    if isinstance(node, list):
        return [p for index, value in enumerate(node) for p in _non_finite(value, (*path, index))]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"  - at {_where(path)}: {node} is not a finite number; give a number (e.g. 1e-4, not .nan or .inf)"]
    return []


def _semantic_problems(config: Mapping[str, Any]) -> list[str]:
    """Rules the schema cannot express: method x loss compatibility, validation classes, batch composition."""
    from dmlsynth.data.split import MIN_VALIDATION_CLASSES, split_class_count, training_class_count, validation_class_count

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
    for name, given in config["generation"].items():  # every block filled (dmlsynth.defaults)
        prompts = given["prompts"]
        if prompts["source"] == "captions" and not prompts["captioner"]:
            problems.append(
                f"  - at generation.{name}.prompts: source is captions but no captioner is given; set "
                "captioner to a transformers image-to-text model (e.g. Salesforce/blip-image-captioning-base) "
                "or a local folder, or use source: attributes"
            )
        generator = given["generator"]
        if registry.GENERATORS[generator].trained_here and registry.dataset(name).image_mode != "L":
            problems.append(
                f"  - at generation.{name}.generator: the {generator} generator makes small grayscale images, but "
                f"{name!r} is a photo dataset: use generator: stable-diffusion"
            )
        method = given["fine_tuning"]["method"]
        if method != "none" and generator != "stable-diffusion":
            problems.append(
                f"  - at generation.{name}.fine_tuning.method: {method!r} fine-tunes Stable Diffusion, but the "
                f"generator of {name!r} is {generator!r} (trained on the dataset already): set method: none"
            )
        if method in ("lora", "both") and given["lora"]:
            problems.append(
                f"  - at generation.{name}.lora: a LoRA file is given and fine_tuning.method {method!r} trains one "
                "per class: unset one of them"
            )
    training = config["training"]
    batch, per_class = training["batch_size"], training["m_per_class"]
    per_class_batches = training["batch_sampling"] == "m_per_class"
    if per_class_batches and batch % per_class:
        fewest_classes = min(registry.dataset(name).train_classes for name in config["datasets"])
        suggestion = per_class * min(max(1, batch // per_class), fewest_classes)
        problems.append(
            f"  - at training.batch_size: {batch} is not a multiple of training.m_per_class ({per_class}); a batch "
            f"holds batch_size / m_per_class classes of m_per_class images each: use e.g. batch_size {suggestion}"
        )
    for name in config["datasets"]:
        held_out, training_classes = validation_class_count(config, name), split_class_count(config, name)
        if held_out and not MIN_VALIDATION_CLASSES <= held_out <= training_classes - MIN_VALIDATION_CLASSES:
            problems.append(
                f"  - at dataset_settings.{name}.validation_classes: {held_out} is not 0 and not between "
                f"{MIN_VALIDATION_CLASSES} and {training_classes - MIN_VALIDATION_CLASSES} ({name!r} has "
                f"{training_classes} training classes; validation and training each need at least {MIN_VALIDATION_CLASSES})"
            )
    with_validation = [name for name in config["datasets"] if validation_class_count(config, name)]
    if with_validation and len(with_validation) < len(config["datasets"]):
        without = [name for name in config["datasets"] if name not in with_validation]
        problems.append(
            f"  - at dataset_settings: {', '.join(with_validation)} choose the epoch on validation classes but "
            f"{', '.join(without)} do not; set validation_classes for every configured dataset or for none "
            f"(runs of one workflow report the same kind of epoch)"
        )
    if per_class_batches and not batch % per_class:
        for name in config["datasets"]:
            classes = training_class_count(config, name)
            if batch // per_class > classes:
                problems.append(
                    f"  - at training.batch_size: {batch} at m_per_class={per_class} needs {batch // per_class} "
                    f"training classes in every batch, but {name!r} has {classes}"
                    f"{' after its validation classes' if validation_class_count(config, name) else ''}: use batch_size <= "
                    f"{per_class * classes} or m_per_class >= {-(-batch // classes)}"
                )
    for name in config["datasets"]:
        problems += _cache_problems(config, name)
    problems += _loss_param_problems(config, excluded)
    return problems + _protocol_problems(config) + _no_run_problems(config, excluded) + _class_size_problems(config)


def _no_run_problems(config: Mapping[str, Any], excluded: set[tuple[str, str]]) -> list[str]:
    """A job matrix that ``exclude`` empties trains nothing: said here, not by a job that gets no runs."""
    if any((m, l) not in excluded for m in config["methods"] for l in config["losses"]):
        return []
    return [
        f"  - at exclude: it removes every method x loss pair of methods {list(config['methods'])} and losses "
        f"{list(config['losses'])}, so no run is left; remove entries from exclude, or add a method or loss they do not name"
    ]


def _class_size_problems(config: Mapping[str, Any]) -> list[str]:
    """Every batch takes training.m_per_class images of each of its classes: a class with fewer would be
    repeated within the batch (MPerClassSampler draws with replacement), which pairs an image with itself."""
    from dmlsynth.data.split import smallest_training_class, validation_class_count

    per_class = config["training"]["m_per_class"]
    if config["training"]["batch_sampling"] != "m_per_class":
        return []  # random batches hold whatever the shuffle gives
    problems = []
    for name in config["datasets"]:
        smallest = smallest_training_class(config, name)
        if smallest is not None and per_class > smallest:
            after = " after its validation classes" if validation_class_count(config, name) else ""
            problems.append(
                f"  - at training.m_per_class: {per_class} images of a class in every batch, but the smallest training "
                f"class of {name!r}{after} has {smallest}: its images would repeat within a batch; use m_per_class <= "
                f"{smallest} (and a batch_size that is a multiple of it)"
            )
    return problems


def _loss_param_problems(config: Mapping[str, Any], excluded: set[tuple[str, str]]) -> list[str]:
    """Loss params that cannot train: plain, and under each configured method (its control trains the same)."""
    problems = []
    for loss in config["losses"]:
        plain = registry.loss_param_problems(loss, registry.loss_params(loss, config))
        problems += [f"  - at loss_params.{loss}: {problem}" for problem in plain]
        for method in config["methods"]:
            if not registry.METHODS[method].is_compatible(loss) or (method, loss) in excluded:
                continue
            variant = registry.method_params(registry.METHODS[method], config).get("variant")
            own = registry.loss_param_problems(loss, registry.loss_params(loss, config, method), method, variant)
            problems += [f"  - at method_loss_params.{method}.{loss}: {problem}" for problem in own if problem not in plain]
    return problems


def _cache_problems(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The resized copy (dmlsynth.data.image_cache) is for photos, and must not be smaller than evaluation's resize."""
    settings = registry.dataset_settings(config, dataset)
    short_side, where = settings["cache_short_side"], f"dataset_settings.{dataset}.cache_short_side"
    if not short_side:
        return []
    if registry.dataset(dataset).image_mode != "RGB":
        return [f"  - at {where}: {dataset!r} is grayscale and held in memory; a resized copy is for photos: set it to 0"]
    # The transforms resize the short side to at most this (e.g. image_size * 256/224 before the center crop).
    from dmlsynth.data.preprocessing import Preprocessing

    needed = Preprocessing.of(settings).smallest_source_side(settings["image_size"])
    if short_side < needed:
        return [
            f"  - at {where}: {short_side} is smaller than the {needed} pixels the transforms resize to at image_size "
            f"{settings['image_size']}; use at least {needed}, or 0 to train on the original images"
        ]
    return []


def _protocol_problems(config: Mapping[str, Any]) -> list[str]:
    """The papers' schedules and preprocessing (config/protocols/): settings that contradict each other."""
    from dmlsynth.data.preprocessing import Preprocessing

    problems = []
    training = config["training"]
    epochs = training["epochs"]
    if training["iterations"] is not None:
        if training["iterations"] % epochs:
            problems.append(
                f"  - at training.iterations: {training['iterations']} is not a multiple of training.epochs ({epochs}); "
                f"each epoch makes iterations / epochs steps: use e.g. epochs {_divisor_near(training['iterations'], epochs)}"
            )
        elif training["batches_per_epoch"] not in (None, training["iterations"] // epochs):
            problems.append(
                f"  - at training.batches_per_epoch: {training['batches_per_epoch']} contradicts training.iterations "
                f"({training['iterations']} over {epochs} epochs = {training['iterations'] // epochs} per epoch): set only one of them"
            )
    if training["lr_scheduler"] == "multistep" and not training["lr_milestones"]:
        problems.append("  - at training.lr_milestones: the multistep schedule needs the epochs after which it decays, e.g. [40, 60, 80]")
    late = [m for m in training["lr_milestones"] if m >= epochs]
    if training["lr_scheduler"] == "multistep" and late:
        problems.append(f"  - at training.lr_milestones: {late} are not before the last epoch ({epochs}); they would never apply")
    if training["warmup_epochs"] >= epochs:
        problems.append(f"  - at training.warmup_epochs: {training['warmup_epochs']} warm-up epochs leave none of the {epochs} to train the backbone")
    for name in config["datasets"]:
        settings = registry.dataset_settings(config, name)
        pre = Preprocessing.of(settings)
        if pre.bounding_boxes and not registry.dataset(name).bounding_boxes:
            problems.append(f"  - at dataset_settings.{name}.bounding_boxes: {name!r} has no bounding boxes (cars196 has); set it to false")
        if training["image_decoding"] == "device" and registry.dataset(name).image_mode == "RGB" and not pre.is_default:
            problems.append(
                f"  - at training.image_decoding: device decoding crops with the default transforms only, but "
                f"dataset_settings.{name} changes them; use image_decoding: workers"
            )
        low, high = pre.crop_scale
        if low > high:
            problems.append(f"  - at dataset_settings.{name}.crop_scale: [{low}, {high}] is not a range (low > high)")
    return problems


def _divisor_near(total: int, wanted: int) -> int:
    return min((d for d in range(1, total + 1) if total % d == 0), key=lambda d: abs(d - wanted))


def resolved_training(training: Mapping[str, Any]) -> dict[str, Any]:
    """The (validated) ``training`` block; a length in ``iterations`` fixes ``batches_per_epoch``."""
    resolved = dict(training)
    if resolved["iterations"] is not None:
        resolved["batches_per_epoch"] = int(resolved["iterations"]) // int(resolved["epochs"])
    return resolved


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a params file."""
    config = read_yaml(path, ConfigError, "pass the path of params.yaml")
    return validate(config if config is not None else {}, source=str(path))


def load_layered(base: str | os.PathLike[str], *overlays: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``base`` with each of ``overlays`` over it the way Snakemake merges ``--configfile`` files
    (``snakemake.utils.update_config``: mappings key by key, anything else replaced), then validate:
    the config a ``snakemake --configfile=...`` run of this project gets."""
    from snakemake.utils import update_config

    config = read_yaml(base, ConfigError, "pass the path of params.yaml") or {}
    for overlay in overlays:
        update_config(config, read_yaml(overlay, ConfigError, "pass the path of a config file") or {})
    return validate(config, source=" over ".join(str(p) for p in reversed((base, *overlays))))


NOT_RUN_PARAMS = ("resources", "urls", "md5", "expected")


def run_method(config: Mapping[str, Any], label: str, loss: str) -> tuple[str, str]:
    """``(method, loss_owner)`` of the run named ``label`` in the job matrix: a method trains as itself;
    a control label (``baseline+beta=40``, :func:`dmlsynth.registry.control_label`) is ``baseline``
    trained with the loss params of the configured method it is the control of."""
    if label in registry.METHODS:
        return label, label
    for method in config["methods"]:
        if registry.control_label(config, method, loss) == label:
            return registry.BASELINE, method
    controls = sorted({registry.control_label(config, m, loss) for m in config["methods"]} - {registry.BASELINE})
    raise ConfigError(
        f"{label!r} is neither a method nor the control of a configured method with loss {loss!r}; "
        f"methods: {', '.join(sorted(registry.METHODS))}; controls of this config: {', '.join(controls) or 'none'}"
    )


def run_params(config: Mapping[str, Any], dataset: str, method: str, loss: str, seed: int) -> dict[str, Any]:
    """Everything that determines the numbers of one training run, fully resolved.

    ``method`` is the run's name in the job matrix: a method, or a control label
    (:func:`run_method`). This is what a run records, what its checkpoint is keyed on and what
    Snakemake compares to decide whether a finished run is out of date. ``label`` is the run's row
    in the results table; ``control`` the label of the run it is compared with (None for controls).
    """
    trained, owner = run_method(config, method, loss)
    return {
        "dataset": dataset,
        "method": trained,
        "label": method,
        "control": None if trained == registry.BASELINE else registry.control_label(config, trained, loss),
        "loss": loss,
        "seed": int(seed),
        # Where the data came from (mirror URLs, checksums) and cluster resources don't change the numbers.
        "dataset_settings": {
            k: v for k, v in registry.dataset_settings(config, dataset).items() if k not in NOT_RUN_PARAMS
        },
        "training": resolved_training(config["training"]),
        "loss_params": registry.loss_params(loss, config, owner),
        "method_params": registry.method_params(registry.METHODS[trained], config),
        "evaluation": dict(config["evaluation"]),
    }
