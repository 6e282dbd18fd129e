"""One home for every default: the schema's ``default:`` entries and the registry entries' own, filled in one
pass at validation (:mod:`dmlsynth.defaults`; the tree of them: :func:`dmlsynth.config.config_defaults`).

A shipped config states a value only where it differs from that home: a restated default would keep
its old value when the registry's changes, and the config and the home would disagree silently. A
config merged over params.yaml (config/paper.yaml, config/protocols/*.yaml) may state a default where
params.yaml sets something else: that value is the override.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import registry
from tests.conftest import ROOT

SHIPPED = ["params.yaml", "config/paper.yaml", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config" / "protocols").glob("*.yaml"))]


def restated(given: dict, defaults: dict, path: tuple = ()) -> dict[str, object]:
    """Every key of ``given`` whose value is its default (nested blocks walked key by key)."""
    found = {}
    for key, value in (given or {}).items():
        if not isinstance(defaults, dict) or key not in defaults:
            continue
        default = defaults[key]
        if isinstance(value, dict) and isinstance(default, dict):
            found.update(restated(value, default, (*path, key)))
        elif value == default:
            found[".".join((*path, key))] = value
    return found


def flat(mapping: dict, path: tuple = ()) -> dict[str, object]:
    out = {}
    for key, value in (mapping or {}).items():
        if isinstance(value, dict):
            out.update(flat(value, (*path, key)))
        else:
            out[".".join((*path, key))] = value
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_config_states_only_what_differs_from_the_registry(name):
    given = yaml.safe_load((ROOT / name).read_text())
    found = restated(given, cfg.config_defaults(given.get("datasets") or []))
    if name != "params.yaml":  # an override of what params.yaml (which it is merged over) sets is no restatement
        base = flat(yaml.safe_load((ROOT / "params.yaml").read_text()))
        found = {key: value for key, value in found.items() if key not in base or base[key] == value}
    assert not found, f"{name} restates registry defaults (leave them out; docs/configuration.md lists them): {found}"


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_config_resolves_over_the_registry(name):
    # Whatever a config leaves out resolves to the registry's value (the home is used, not bypassed).
    config = cfg.load(ROOT / name)
    assert cfg.run_params(config, config["datasets"][0], "baseline", config["losses"][0], 0)["evaluation"]["batch_size"] == (
        (config.get("evaluation") or {}).get("batch_size", cfg.config_defaults()["evaluation"]["batch_size"])
    )


def test_changing_a_registry_default_changes_the_shipped_run(monkeypatch):
    # The embedded default's Multi-Similarity beta comes from the registry: a new default reaches its runs.
    before = cfg.run_params(cfg.load(ROOT / "params.yaml"), "digits", "baseline", "multi_similarity", 0)["loss_params"]["beta"]
    spec = registry.LOSSES["multi_similarity"]
    monkeypatch.setitem(registry.LOSSES, "multi_similarity", registry.LossSpec(spec.name, spec.pair_based, {**spec.defaults, "beta": 45.0}, spec.description, spec.negative_pairs))
    after = cfg.run_params(cfg.load(ROOT / "params.yaml"), "digits", "baseline", "multi_similarity", 0)["loss_params"]["beta"]
    assert before == 50.0 and after == 45.0
    assert "beta" not in (yaml.safe_load((ROOT / "params.yaml").read_text()).get("loss_params") or {}).get("multi_similarity", {})


# The one filling pass (dmlsynth.defaults, at validation) ---------------------------------------------------


def test_validation_fills_every_block_once_and_a_restated_default_changes_nothing():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    config = cfg.validate(params)
    assert config["evaluation"] == {"ks": [1, 2, 4, 8], "batch_size": 256}  # the schema's default: entries
    assert config["dataset_settings"]["digits"]["backbone"] == registry.dataset("digits").default_backbone
    assert config["generation"]["cub200"]["generator"] == registry.dataset("cub200").default_generator
    assert config["generation"]["digits"]["filter"]["scorer"] == "auto"  # a nested block created, then filled
    assert config["loss_params"]["potential_field"] == dict(registry.LOSSES["potential_field"].defaults)
    assert cfg.validate(config) == config  # filling a filled config changes nothing
    restated = {**params, "evaluation": {"batch_size": 256}, "training": {**params["training"], "lr_scheduler": "cosine"}}
    assert cfg.validate(restated) == config


def test_a_given_value_wins_over_its_default_and_defaults_are_not_shared():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    config = cfg.validate({**params, "evaluation": {"ks": [1]}, "generation": {"digits": {"filter": {"extra": 0.5}}}})
    assert config["evaluation"] == {"ks": [1], "batch_size": 256}
    assert config["generation"]["digits"]["filter"]["extra"] == 0.5 and config["generation"]["digits"]["filter"]["scorer"] == "auto"
    config["generation"]["cub200"]["textual_inversion"]["token"] = "file"  # a filled mutable default is a copy
    assert cfg.validate(params)["generation"]["cub200"]["textual_inversion"] == {}
    assert cfg.validate(params)["generation"]["cars196"]["textual_inversion"] == {}


@pytest.mark.parametrize("method", [m for m, spec in registry.METHODS.items() if spec.variants])
def test_a_method_variant_fills_its_own_defaults_before_the_method_s(method):
    spec = registry.METHODS[method]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for variant, values in spec.variants.items():
        expected = {**spec.defaults, **values, "variant": variant}  # the spec's layers, transcribed here
        filled = cfg.filled({**params, "method_params": {method: {"variant": variant}}})["method_params"][method]
        assert filled == expected == spec.resolve({"variant": variant})
        key = next(iter(values), None)
        if key is not None:  # a key the config sets wins over its variant's value
            given = {"variant": variant, key: spec.defaults.get(key, values[key])}
            assert cfg.filled({**params, "method_params": {method: given}})["method_params"][method][key] == given[key]


def test_no_defaults_table_or_merge_outside_the_filling_pass():
    """The defaults live in the schema and on the registry entries; no module keeps a table of them or merges
    one over a config block (the 17 merge sites this replaced: `{**registry.X_DEFAULTS, **config[...]}`)."""
    import re

    tables, merges = [], []
    for path in sorted((ROOT / "src" / "dmlsynth").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        # A declared dataset's defaults by image mode become its DatasetSpec's (the spec's own, as for any dataset).
        tables += [f"{name}: {m}" for m in re.findall(r"^([A-Z_]*DEFAULTS)\s*[:=]", text, re.M) if m != "MODE_DEFAULTS"]
        merges += [f"{name}: {m}" for m in re.findall(r"\{\*\*[\w.]*(?:DEFAULTS|defaults)\b[^}]*", text)]
    assert not tables and not merges, (tables, merges)


def test_a_block_wanted_alone_is_filled_by_the_same_pass():
    from dmlsynth import defaults

    given = {"uri": "sqlite:///elsewhere.db"}
    assert defaults.block("tracking", given) == {**cfg.config_defaults()["tracking"], "uri": "sqlite:///elsewhere.db"}
    assert given == {"uri": "sqlite:///elsewhere.db"}  # the caller's mapping is not filled in place
