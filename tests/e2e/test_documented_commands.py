"""Every `snakemake` command README.md and docs/cluster.md show runs as written: each is dry-run (-n)
in a copy of the project's configs and profiles, with the repository's Snakefile. A command whose
executor or storage plugin is not installed here (Kubernetes) is skipped, naming it; `--report` (it needs
finished outputs) is parsed the way Snakemake parses it (its argument parser, then its --config entries)."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PAGES = ("README.md", "docs/cluster.md")
# Plugins a command's options need, by the option's value.
PLUGINS = {("--executor", "slurm"): "snakemake_executor_plugin_slurm", ("--executor", "kubernetes"): "snakemake_executor_plugin_kubernetes",
           ("--default-storage-provider", "s3"): "snakemake_storage_plugin_s3"}  # fmt: skip
# Files a command names that the reader writes first (README.md, "Changing what runs").
READER_FILES = {"my-settings.yaml": "seeds: [0]\n"}


def documented_commands(text: str) -> list[list[str]]:
    """The `snakemake` commands of a page's ```bash blocks, as argument lists (continuations joined,
    comments dropped, `a && b` split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                command, words = words[:cut], words[cut + 1 :]
                if command and Path(command[0]).name == "snakemake":
                    commands.append(command[1:])
    return commands


def _commands() -> list[tuple[str, list[str]]]:
    return [(page, c) for page in PAGES for c in documented_commands((ROOT / page).read_text())]


def _cases():
    return [pytest.param(page, args, id=f"{page}: snakemake {shlex.join(args)}"[:100]) for page, args in _commands()]


def test_the_pages_show_the_commands_this_test_runs():
    commands = [shlex.join(c) for _, c in _commands()]
    # The cluster page's SLURM command, the one a user meets first (target before --config).
    assert any(c.startswith("--profile profiles/slurm") and "results/table.csv --config" in c for c in commands), commands
    assert len(commands) >= 8, commands


def _missing_plugins(args: list[str]) -> list[str]:
    pairs = set(zip(args, args[1:]))
    return [module for key, module in PLUGINS.items() if key in pairs and importlib.util.find_spec(module) is None]


def _entries_of_uninstalled_plugins(args: list[str]) -> list[str]:
    """The methods and datasets a --configfile names that no installed package provides (a dmlsynth plugin
    the page installs first, as README's `pip install -e examples/...`)."""
    import yaml

    from dmlsynth import registry

    files = [value for key, value in zip(args, args[1:]) if key == "--configfile"]
    missing = []
    for name in files:
        config = yaml.safe_load((ROOT / name).read_text()) or {}
        declared = {d for d, settings in (config.get("dataset_settings") or {}).items() if "source" in (settings or {})}
        missing += [m for m in config.get("methods", []) if m not in registry.METHODS]
        missing += [d for d in config.get("datasets", []) if d not in registry.DATASETS and d not in declared]
    return missing


@pytest.mark.parametrize("page, args", _cases())
def test_a_documented_command_runs_as_written(page, args, tmp_path):
    from snakemake.cli import get_argument_parser, parse_config

    # Snakemake's own reading first: the options, then every --config entry (a target after --config is
    # taken for an entry and refused: "Config entries have to be defined as name=value pairs").
    missing = _missing_plugins(args)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed here")
    parsed = get_argument_parser().parse_args(args)
    parse_config(parsed.config)
    if parsed.report:
        return
    uninstalled = _entries_of_uninstalled_plugins(args)
    if uninstalled:  # tests/e2e/test_plugin_workflow.py installs the example plugin and runs this command
        pytest.skip(f"names {', '.join(uninstalled)} of a plugin not installed here (test_plugin_workflow.py runs it)")
    for folder in ("config", "profiles", "examples"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "params.yaml", tmp_path)
    for name, content in READER_FILES.items():
        (tmp_path / name).write_text(content)
    # The test's options first: the command's own words follow in their documented order.
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "-n", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, f"{page}: snakemake {shlex.join(args)}\n{result.stdout}\n{result.stderr}"
