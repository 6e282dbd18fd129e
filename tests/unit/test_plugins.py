"""Plugins by entry points (dmlsynth.plugins): what an installed package adds, and each way it can be broken."""

from __future__ import annotations

import uuid

import pytest

from dmlsynth import plugins, provenance, registry
from tests.helpers.plugins import write_distribution

SPEC = """from dmlsynth.registry import MethodSpec, LossSpec
METHOD = MethodSpec(name="{name}", module="{package}.method:Mine", description="a plugin method",
                    defaults={{"strength": 1}}, off_params={{"strength": 0}})
NOT_A_SPEC = {{"name": "{name}"}}
"""


def tables():
    return {"datasets": dict(registry.DATASETS), "losses": dict(registry.LOSSES), "methods": dict(registry.METHODS)}


TYPES = {"datasets": registry.DatasetSpec, "losses": registry.LossSpec, "methods": registry.MethodSpec}


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty record of installed plugins, and a unique package name (modules stay imported)."""
    monkeypatch.setattr(plugins, "INSTALLED", {})
    return f"plug_{uuid.uuid4().hex[:8]}"


def install_one(monkeypatch, tmp_path, package, entry, target, dist="my-plugin"):
    write_distribution(
        tmp_path / dist, dist, {"dmlsynth.methods": {entry: f"{package}.specs:{target}"}},
        {f"{package}.specs": SPEC.format(name=entry, package=package), f"{package}.method": "class Mine: pass\n"},
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path / dist))
    found = tables()
    plugins.install(found, TYPES)
    return found


def test_a_plugin_method_joins_the_registry_with_its_distribution(monkeypatch, tmp_path, fresh):
    found = install_one(monkeypatch, tmp_path, fresh, "mine", "METHOD")
    assert found["methods"]["mine"].module == f"{fresh}.method:Mine"
    assert set(found["methods"]) == set(registry.METHODS) | {"mine"}
    assert plugins.versions({"methods": "mine", "losses": "triplet"}) == {"method.mine": "my-plugin 1.2.3"}
    assert "my-plugin 1.2.3" in plugins.render() and "mine" in plugins.render()


def test_an_import_error_names_the_distribution_and_the_fix(monkeypatch, tmp_path, fresh):
    write_distribution(tmp_path / "d", "broken-plugin", {"dmlsynth.methods": {"mine": f"{fresh}.specs:METHOD"}},
                       {f"{fresh}.specs": "import no_such_module_here\n"})  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path / "d"))
    with pytest.raises(plugins.PluginError) as error:
        plugins.install(tables(), TYPES)
    message = str(error.value)
    assert "broken-plugin 1.2.3" in message and "importing it failed" in message and "no_such_module_here" in message
    assert "pip uninstall broken-plugin" in message


def test_a_wrong_spec_type_is_refused(monkeypatch, tmp_path, fresh):
    with pytest.raises(plugins.PluginError, match="names a dict, not a dmlsynth.registry.MethodSpec"):
        install_one(monkeypatch, tmp_path, fresh, "mine", "NOT_A_SPEC")


def test_a_plugin_may_not_replace_a_built_in_entry(monkeypatch, tmp_path, fresh):
    with pytest.raises(plugins.PluginError, match="'baseline' is built into dmlsynth"):
        install_one(monkeypatch, tmp_path, fresh, "baseline", "METHOD")


def test_two_plugins_with_one_name_are_a_clash(monkeypatch, tmp_path, fresh):
    for dist, package in (("first-plugin", fresh), ("second-plugin", fresh + "b")):
        write_distribution(tmp_path / dist, dist, {"dmlsynth.methods": {"mine": f"{package}.specs:METHOD"}},
                           {f"{package}.specs": SPEC.format(name="mine", package=package)})  # fmt: skip
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    with pytest.raises(plugins.PluginError, match="already adds method 'mine': rename one of them"):
        plugins.install(tables(), TYPES)


def test_the_entry_point_name_is_the_spec_name(monkeypatch, tmp_path, fresh):
    write_distribution(tmp_path / "d", "odd-plugin", {"dmlsynth.methods": {"other": f"{fresh}.specs:METHOD"}},
                       {f"{fresh}.specs": SPEC.format(name="mine", package=fresh)})  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path / "d"))
    with pytest.raises(plugins.PluginError, match="differs from its spec's name 'mine'"):
        plugins.install(tables(), TYPES)


def test_editing_a_source_plugin_changes_only_the_digests_that_name_it(monkeypatch, tmp_path, fresh):
    install_one(monkeypatch, tmp_path, fresh, "mine", "METHOD")
    own = [provenance.TRAINING_MODULE]
    with_plugin = own + [f"{fresh}.method"]
    before, before_own = provenance.code_digest(with_plugin), provenance.code_digest(own)
    (tmp_path / "my-plugin" / fresh / "method.py").write_text("class Mine: pass  # edited\n")
    assert provenance.code_digest(with_plugin) != before
    assert provenance.code_digest(own) == before_own
    # A sibling module counts too: the method may import it.
    (tmp_path / "my-plugin" / fresh / "helpers.py").write_text("X = 1\n")
    assert provenance.code_digest(with_plugin) not in (before, provenance.code_digest(own))


def test_a_plugin_installed_from_a_wheel_counts_by_its_version(monkeypatch, tmp_path, fresh):
    site = tmp_path / "lib" / "site-packages"
    write_distribution(site, "wheel-plugin", {"dmlsynth.methods": {}}, {f"{fresh}.method": "class Mine: pass\n"}, version="2.0")
    monkeypatch.syspath_prepend(str(site))
    assert plugins.code_fingerprint(f"{fresh}.method") == "plugin wheel-plugin==2.0"


def test_a_built_in_loss_keeps_its_identity_without_a_builder():
    spec = registry.LOSSES["triplet"]
    assert '"build"' not in provenance.stable_repr(spec) and '"params_schema"' not in provenance.stable_repr(spec)
    assert '"build"' in provenance.stable_repr(registry.LossSpec("x", True, {}, "a plugin loss", build="p.m:build"))


def test_no_plugin_module_is_in_a_digest_of_the_package_alone():
    assert "dmlsynth.plugins" not in {f.stem for f in provenance.source_files([provenance.TRAINING_MODULE])}


def test_a_broken_plugin_stops_every_command_with_its_message_and_no_traceback(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    write_distribution(tmp_path, "broken-plugin", {"dmlsynth.methods": {"mine": "broken_pkg_cli.specs:METHOD"}},
                       {"broken_pkg_cli.specs": "import no_such_module_here\n"})  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")])}
    for command in (["plugins"], ["list", "methods"]):
        result = subprocess.run([sys.executable, "-m", "dmlsynth", *command], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "broken-plugin 1.2.3" in result.stderr and "pip uninstall broken-plugin" in result.stderr
