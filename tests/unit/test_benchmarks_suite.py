"""benchmarks/ is one suite with one naming scheme: ``bench_<name>.py`` writes ``results/<name>*.csv``,
names itself in ``SCRIPT`` (the marker of the blocks it renders), and each results file has one owner."""

from __future__ import annotations

import ast

import pytest

from dmlsynth import docblocks
from tests.conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py"))


def _constant(path, name):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def test_every_script_follows_the_naming_scheme():
    assert SCRIPTS
    assert [p.name for p in SCRIPTS if not p.name.startswith("bench_")] == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_a_script_names_itself_says_what_it_measures_and_runs_as_a_command(script):
    tree = ast.parse(script.read_text())
    assert ast.get_docstring(tree), f"{script.name}: a docstring saying what it measures and how to run it"
    assert _constant(script, "SCRIPT") == f"benchmarks/{script.name}"
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    assert 'if __name__ == "__main__":' in script.read_text()


@pytest.mark.parametrize("csv", sorted((BENCHMARKS / "results").glob("*.csv")), ids=lambda p: p.name)
def test_every_results_file_has_one_owner_of_its_name(csv):
    owners = [p for p in SCRIPTS if csv.name.startswith(p.stem.removeprefix("bench_")) and csv.name in p.read_text()]
    assert len(owners) == 1, f"{csv.name}: owned by {[p.name for p in owners]} (bench_<name>.py writes <name>*.csv)"


def test_every_rendered_block_comes_from_a_script_of_the_suite_and_its_own_results():
    documents = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    for document in documents:
        for block in docblocks.blocks(document.read_text()):
            if not block.script.startswith("benchmarks/"):
                continue
            name = block.script.removeprefix("benchmarks/bench_").removesuffix(".py")
            assert (ROOT / block.script).is_file(), f"{document.name}: {block.script}"
            assert block.source.startswith(f"benchmarks/results/{name}"), f"{document.name}: {block.source}"
