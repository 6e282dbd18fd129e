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
