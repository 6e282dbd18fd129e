"""Generated number blocks in README.md and BENCHMARKS.md equal their scripts' rendering of the committed results."""

import pytest

from dmlsynth import docblocks
from tests.conftest import ROOT

DOCUMENTS = ["README.md", "BENCHMARKS.md", "docs/methods.md"]
FOUND = [(doc, block) for doc in DOCUMENTS for block in docblocks.blocks((ROOT / doc).read_text())]


@pytest.mark.parametrize("document,block", FOUND, ids=[f"{d}:{b.source}" for d, b in FOUND])
def test_generated_block_is_what_its_script_renders(document, block):
    assert (ROOT / block.script).is_file(), f"{document}: block names a missing script {block.script}"
    assert (ROOT / block.source).is_file(), f"{document}: block names a missing results file {block.source}"
    assert block.body == docblocks.render(ROOT, block), (
        f"{document}: the block from {block.source} is stale or was edited by hand; "
        f"re-render it with {block.script}"
    )


def test_replace_block_rewrites_only_between_its_markers(tmp_path):
    script = tmp_path / "make.py"
    script.write_text("def render(frame):\n    return f'rows: {len(frame)}\\n'\n")
    (tmp_path / "r.csv").write_text("a\n1\n2\n")
    begin = docblocks.BEGIN.format(script="make.py", function="render", source="r.csv")
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{begin}\nold\n{docblocks.END}\noutro\n")
    assert docblocks.replace_block(doc, "make.py", "render", "r.csv", "rows: 2")
    text = doc.read_text()
    assert text == f"intro\n{begin}\nrows: 2\n{docblocks.END}\noutro\n"
    [block] = docblocks.blocks(text)
    assert block.body == docblocks.render(tmp_path, block) == "rows: 2\n"
    assert not docblocks.replace_block(doc, "other.py", "render", "r.csv", "x")
