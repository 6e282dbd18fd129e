"""The command line as a user meets it: every subcommand and option explained, ``--version``, ``dmlsynth list``
(from the registry, torch-free), and one way to pass the config (``--config``; check-config's old positional
form still works, with a warning)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from dmlsynth import catalog, registry
from dmlsynth.cli import build_parser, main
from dmlsynth.provenance import PACKAGE_DIR

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "config" / "protocols" / "sgar.yaml"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    """Each subcommand's parser and its line in ``dmlsynth --help``."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    lines = {choice.dest: choice.help for choice in action._choices_actions}
    return {name: (sub, lines.get(name)) for name, sub in action.choices.items()}


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not (a.help or "").strip() or a.help == argparse.SUPPRESS
    ]


def test_every_subcommand_and_every_option_has_a_description():
    parser = build_parser()
    assert parser.description and undocumented(parser) == []
    commands = subcommands(parser)
    assert {"check-config", "track", "prefetch", "dvc-yaml", "list", "train", "table"} <= set(commands)
    for name, (sub, line) in commands.items():
        assert (line or "").strip(), f"`dmlsynth {name}` has no line in dmlsynth --help"
        assert (sub.description or "").strip(), f"`dmlsynth {name} --help` has no description"
        assert undocumented(sub) == [], f"options of `dmlsynth {name}` without help: {undocumented(sub)}"


def test_every_subcommand_that_reads_a_config_takes_it_with_the_config_option():
    for name, (sub, _) in subcommands(build_parser()).items():
        if name in ("list", "plugins", "check-method", "check-loss"):  # the registry and its entries: no config
            continue
        assert "--config" in sub._option_string_actions, f"`dmlsynth {name}` takes no --config"


def test_version_prints_the_installed_distribution_and_the_checkout_commit(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    out = capsys.readouterr().out.strip()
    assert exit.value.code == 0
    assert out.startswith(f"dmlsynth {metadata.version('dmlsynth')} from {PACKAGE_DIR}")
    if PACKAGE_DIR == ROOT / "src" / "dmlsynth" and (ROOT / ".git").exists():  # run from a git checkout
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        assert f"(git {head[:12]}" in out


def test_list_methods_shows_every_method_its_losses_and_its_variants(capsys):
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert listed == list(registry.METHODS)
    for spec in registry.METHODS.values():
        for variant in spec.variants:
            assert f"variant={variant}" in out
    assert {"paper", "official"} <= set(registry.METHODS["iaa"].variants)
    assert "variant=paper (the default): update_every=4" in " ".join(out.split())


def details_of(kind: str, name: str) -> dict[str, str]:
    """The ``label: text`` lines under ``name`` in the listing of ``kind`` (unwrapped)."""
    lines = catalog.render([kind], width=10_000).splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [name] and line.startswith("  "))
    details = {}
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 5):
            break
        label, _, text = line.strip().partition(": ")
        details[label] = text
    return details


def test_the_listing_states_each_entrys_compatibility_from_the_registry():
    symm = details_of("methods", "symm")
    assert symm["losses"].split(", ") == [l for l in registry.LOSSES if registry.METHODS["symm"].is_compatible(l)]
    assert "semihard_triplet" not in symm["losses"] and details_of("methods", "iaa")["losses"] == "every loss"
    assert details_of("losses", "semihard_triplet")["methods"].split(", ") == [
        m for m, spec in registry.METHODS.items() if spec.is_compatible("semihard_triplet")
    ]
    assert details_of("losses", "n_pairs")["forms (loss_params.n_pairs.pairs)"] == "one_per_class (default), units"
    assert details_of("backbones", "small_cnn") == {"default of": "digits", "code": "dmlsynth.models:small_cnn"}
    assert details_of("backbones", "googlenet")["default of"] == "none"
    assert details_of("losses", "triplet")["params"] == "margin=0.1"
    assert details_of("methods", "blender")["trains with generated images"].startswith("the `blender` set")
    assert details_of("methods", "symm")["with n_pairs, it and its control train with"] == "pairs=units, normalize=false"
    assert details_of("methods", "iaa")["off (the base loss alone)"] == "num_synthetic=0"


def test_the_listing_says_what_each_dataset_needs():
    digits, cub = details_of("datasets", "digits"), details_of("datasets", "cub200")
    assert digits["classes"] == "10 (5 train, 5 test)" and details_of("datasets", "cars196")["classes"] == "196 (98 train, 98 test)"
    assert digits["images"] == "grayscale, 8 px input; backbone small_cnn, embedding 64 by default"
    assert digits["generator of the BLenDeR methods"] == f"embedded: {registry.GENERATORS['embedded'].description}"
    assert cub["generator of the BLenDeR methods"].startswith("stable-diffusion: ")
    assert "training reads a resized JPEG copy (short side 256 px; dmlsynth cache-images)" in cub
    assert not any("short side" in label for label in digits) and digits["code"] == "dmlsynth.data.digits:prepare"
    assert any(label.startswith("bounding boxes") for label in details_of("datasets", "cars196"))
    assert not any(label.startswith("bounding boxes") for label in cub)


def test_the_listing_wraps_without_losing_or_misplacing_a_word():
    wide, narrow = catalog.render(width=10_000), catalog.render(width=60)
    assert narrow.split() == wide.split()
    assert [block.split(" (")[0] for block in wide.split("\n\n")] == list(catalog.KINDS)  # one block a kind
    for kind in catalog.KINDS:
        assert catalog.render([kind]).startswith(f"{kind} (")  # its heading says where params.yaml names it
        column = max(map(len, catalog.tables()[kind])) + 2
        for line in catalog.render([kind], width=60).splitlines()[1:]:
            indent = len(line) - len(line.lstrip())
            if indent == 2:
                assert line.split()[0] in catalog.tables()[kind]  # an entry's first line
            else:  # its description's next lines, its details and theirs: each a step further in
                assert indent in (column + 2, column + 4, column + 6), line
            assert len(line) <= 60 or " " not in line.strip(), line


def test_an_entry_added_to_the_registry_is_listed_with_its_variants(monkeypatch):
    # What a plugin loader will do: add specs to the registry's tables. Nothing else needs to change.
    plugin = registry.MethodSpec(
        name="plugin_method", module="someone.else:Method", description="a method from another package",
        compatible_losses=frozenset({"triplet"}), defaults={"variant": "fast", "rate": 0.5, "limit": None},
        variants={"fast": {"steps": 1, "exact": True}, "slow": {}},
    )  # fmt: skip
    monkeypatch.setitem(registry.METHODS, plugin.name, plugin)
    loss = registry.LossSpec("plugin_loss", True, {"m": 1.0}, "a loss from elsewhere")
    monkeypatch.setitem(registry.LOSSES, loss.name, loss)
    details = details_of("methods", "plugin_method")
    assert details["losses"] == "triplet" and details["params"] == "rate=0.5, limit=none"
    assert details["variant=fast (the default)"] == "steps=1, exact=true" and details["variant=slow"] == "none"
    assert details["code"] == "someone.else:Method"
    assert "plugin_method" not in details_of("losses", "plugin_loss")["methods"].split(", ")
    dataset = dataclasses.replace(registry.DATASETS["digits"], name="plugin_data", default_generator="their_generator")
    monkeypatch.setitem(registry.DATASETS, dataset.name, dataset)
    assert details_of("datasets", "plugin_data")["generator of the BLenDeR methods"] == "their_generator"


def run_cli(*args: str, code: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-c", code or "from dmlsynth.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip


def test_list_starts_without_torch():
    check = (
        "import sys; from dmlsynth.cli import main; main(['list']); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'pandas', 'mlflow', 'snakemake'}); "
        "assert not heavy, heavy"
    )
    result = run_cli(code=check)
    assert result.returncode == 0, result.stderr
    assert "  iaa " in result.stdout and "  digits " in result.stdout


def test_check_config_takes_config_and_still_the_positional_form_with_a_warning():
    given = run_cli("check-config", "--config", str(PROTOCOL))
    assert given.returncode == 0 and given.stdout.startswith(f"{PROTOCOL}: valid") and "deprecated" not in given.stderr
    old = run_cli("check-config", str(PROTOCOL))
    assert old.returncode == 0 and old.stdout == given.stdout
    assert "deprecated" in old.stderr and f"check-config --config {PROTOCOL}" in old.stderr
    both = run_cli("check-config", "--config", str(PROTOCOL), "params.yaml")
    assert both.returncode == 2 and "two params files" in both.stderr and not both.stdout


def test_the_command_line_and_the_listing_are_no_part_of_a_jobs_code(config):
    # The command line parses the record; editing it, or the listing it prints, must re-run nothing.
    from dmlsynth import config as cfg
    from dmlsynth import jobs, provenance

    job = jobs.Jobs(cfg.validate(config)).train("digits", "baseline", "multi_similarity", 0)
    hashed = provenance.hashed_modules(job.code_modules)
    assert "dmlsynth.catalog" not in hashed and "dmlsynth.cli" not in hashed and "dmlsynth.training.loop" in hashed
