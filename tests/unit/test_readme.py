"""The README and the pages of docs/ state facts the code defines; these tests keep them true.

The README is the front page (short, with a table of contents); every topic page in docs/ is linked
from it, has its generated blocks checked (dmlsynth.docblocks.DOCUMENTS) and its links resolve.
"""

import re
import subprocess
from pathlib import Path

import pytest

from dmlsynth import docblocks, registry
from tests.conftest import ROOT

PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))


def tracked_files() -> list[str]:
    """The repository's files (git's list; without git, every file outside hidden and ignored-by-convention
    folders)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", "results", "node_modules", "__pycache__"}
        listed = [
            p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
            if p.is_file() and not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts)
        ]  # fmt: skip
    return sorted(f for f in listed if (ROOT / f).is_file())


TRACKED = tracked_files()
# Every document whose relative links and anchors must resolve: every markdown file of the repository.
LINKED = [f for f in TRACKED if f.endswith(".md")]
# A reference the repository does not ship (a private notes file): what the code relies on is stated in
# docs/methods.md or the docstring itself. Spelled in two parts so this file does not mention it either.
UNSHIPPED = ["METHODS" + ".md"]
README_LINES = 350

RUN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/snakemake --cores all"
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"


def _outside_code(text: str) -> list[str]:
    """The lines of a markdown text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading numbered (-1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _outside_code(text):
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(text: str) -> list[str]:
    """Every link target of a markdown text outside code (inline code spans removed)."""
    found = []
    for line in _outside_code(text):
        line = re.sub(r"`[^`]*`", "", line)
        found += re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", line)
    return found


def test_the_anchor_rule_is_githubs():
    text = "# Method × loss compatibility\n## `results/summary.md` and `summary.csv`\n## 8. Published (Recall@1, %)\n## Usage\n## Usage\n"
    assert anchors(text) == {"method--loss-compatibility", "resultssummarymd-and-summarycsv", "8-published-recall1-", "usage", "usage-1"}


@pytest.mark.parametrize("document", LINKED)
def test_every_relative_link_and_anchor_resolves(document):
    text = (ROOT / document).read_text()
    broken = []
    for target in links(text):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / document).parent / path if path else ROOT / document
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{document} has broken links:\n" + "\n".join(broken)


def test_the_documents_are_checked_for_links():
    assert {"README.md", "ARCHITECTURE.md", "BENCHMARKS.md", *PAGES} <= set(LINKED)


def test_no_file_refers_to_a_file_the_repository_does_not_ship():
    found = []
    for name in TRACKED:
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary files
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{name}:{number}: {missing}" for missing in UNSHIPPED if missing in line]
    assert not found, "references to files the repository does not have (state the fact where it is used):\n" + "\n".join(found)


def test_the_readme_is_a_front_page_with_a_table_of_contents():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_LINES, "the README is the front page: move a topic into docs/"
    contents = text.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"\]\(#([^)]+)\)", contents)
    sections = [a for a in anchors(text) if a != "contents"]
    level_two = {
        re.sub(r"[^\w\- ]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in _outside_code(text) if line.startswith("## ") and line != "## Contents"
    }  # fmt: skip
    assert level_two <= set(listed) <= set(sections), "the table of contents lists every section, and only sections"


def test_every_topic_page_is_linked_from_the_readme_and_checked_for_generated_blocks():
    readme_links = {target.partition("#")[0] for target in links((ROOT / "README.md").read_text())}
    assert set(PAGES) <= readme_links, f"pages the README does not link: {sorted(set(PAGES) - readme_links)}"
    assert set(PAGES) <= set(docblocks.DOCUMENTS), "add the page to dmlsynth.docblocks.DOCUMENTS"
    assert all((ROOT / document).is_file() for document in docblocks.DOCUMENTS)


def test_compatibility_table_matches_the_registry(repo_root):
    page = (repo_root / "docs" / "configuration.md").read_text()
    match = re.search(r"<!-- compatibility-table:[^>]*-->\n(.*?)<!-- end compatibility-table -->", page, re.S)
    assert match, "docs/configuration.md lost its compatibility table markers"
    assert match.group(1) == registry.compatibility_table(), (
        "docs/configuration.md's compatibility table is stale; paste dmlsynth.registry.compatibility_table()"
    )


def test_quick_start_commands_are_what_ci_runs(repo_root):
    readme = (repo_root / "README.md").read_text()
    ci = (repo_root / ".ci" / "run").read_text()
    assert TEST_COMMAND in readme and TEST_COMMAND in ci
    # The default target: the summary, the table and the comparison report.
    assert RUN_COMMAND + "\n" in readme

