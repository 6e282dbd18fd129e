"""The README states facts the code defines; these tests keep them true."""

import re

from dmlsynth import registry


def test_compatibility_table_matches_the_registry(repo_root):
    readme = (repo_root / "README.md").read_text()
    match = re.search(r"<!-- compatibility-table:[^>]*-->\n(.*?)<!-- end compatibility-table -->", readme, re.S)
    assert match, "README lost its compatibility table markers"
    assert match.group(1) == registry.compatibility_table(), (
        "README compatibility table is stale; paste dmlsynth.registry.compatibility_table()"
    )


def test_quick_start_commands_are_what_ci_runs(repo_root):
    readme = (repo_root / "README.md").read_text()
    ci = (repo_root / ".ci" / "run").read_text()
    test_command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"
    assert test_command in readme and test_command in ci
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/snakemake --cores 8 results/table.csv" in readme
