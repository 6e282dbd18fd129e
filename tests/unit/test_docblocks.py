"""Generated number blocks in README.md and BENCHMARKS.md equal their scripts' rendering of the committed results."""

import pytest

from dmlsynth import docblocks
from tests.conftest import ROOT

DOCUMENTS = docblocks.DOCUMENTS
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


def test_record_rows_replaces_only_the_same_setup(tmp_path):
    import pandas as pd

    path = tmp_path / "results" / "bench.csv"
    first = pd.DataFrame({"config": ["tiny", "tiny"], "device": ["cpu", "cpu"], "seconds": [1.0, 2.0]})
    docblocks.record_rows(path, first, ["config", "device"])
    gpu = pd.DataFrame({"config": ["tiny"], "device": ["cuda"], "seconds": [0.5]})
    docblocks.record_rows(path, gpu, ["config", "device"])  # another device: both kept
    again = pd.DataFrame({"config": ["tiny"], "device": ["cpu"], "seconds": [3.0]})
    written = docblocks.record_rows(path, again, ["config", "device"])  # the cpu rows replaced
    assert written.to_dict("list") == {"config": ["tiny", "tiny"], "device": ["cuda", "cpu"], "seconds": [0.5, 3.0]}
    assert pd.read_csv(path).equals(written)
    ordered = docblocks.record_rows(path, pd.DataFrame({"config": ["big"], "device": ["cpu"], "seconds": [9.0]}),
                                    ["config", "device"], order=["big", "tiny"])  # fmt: skip
    assert list(ordered.config) == ["big", "tiny", "tiny"]


def test_render_into_fills_every_document_and_names_missing_blocks(tmp_path):
    begin = docblocks.BEGIN.format(script="s.py", function="render", source="r.csv")
    for document in ("README.md", "BENCHMARKS.md"):
        (tmp_path / document).write_text(f"# {document}\n{begin}\nold\n{docblocks.END}\n")
    missing = docblocks.render_into(tmp_path, "s.py", "r.csv", {"render": "new", "render_other": "x"})
    assert missing == ["render_other"]
    for document in ("README.md", "BENCHMARKS.md"):
        assert f"{begin}\nnew\n{docblocks.END}" in (tmp_path / document).read_text()


def test_write_blocks_renders_what_the_csv_holds_and_refuses_a_block_without_markers(tmp_path):
    begin = docblocks.BEGIN.format(script="s.py", function="render", source="results/r.csv")
    (tmp_path / "README.md").write_text(f"{begin}\nold\n{docblocks.END}\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.csv").write_text("config,value\na,1.5\n")
    docblocks.write_blocks(tmp_path, "s.py", tmp_path / "results" / "r.csv", {"render": lambda f: f"value {f.value.sum()}\n"})
    assert f"{begin}\nvalue 1.5\n{docblocks.END}" in (tmp_path / "README.md").read_text()
    with pytest.raises(docblocks.DocblockError, match=r"s.py:render_other from results/r.csv"):
        docblocks.write_blocks(tmp_path, "s.py", "results/r.csv", {"render_other": lambda f: "x\n"})


def test_the_configuration_reference_lists_every_default_of_the_registry():
    """docs/configuration.md's reference block: each key a config may leave out, with the default it resolves to."""
    from dmlsynth import registry
    from dmlsynth.config import config_defaults
    from dmlsynth.config_reference import SOURCE, render

    text = render(ROOT / SOURCE)
    defaults = config_defaults(list(registry.DATASETS))
    for block in ("training", "statistics", "tracking", "evaluation"):
        for key, value in defaults[block].items():
            if not isinstance(value, dict):
                row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
                assert row is not None, f"{block}.{key} missing"
    for loss, params in defaults["loss_params"].items():
        for key, value in params.items():
            assert f"| `{loss}.{key}` | `" in text, f"loss_params.{loss}.{key} missing"
    training = {line.split(" | ")[0][3:-1]: line.split(" | ")[1] for line in text.split("#### `training`")[1].split("####")[0].splitlines() if line.startswith("| `")}
    assert training["lr_scheduler"] == f"`{defaults['training']['lr_scheduler']}`"
    assert training["epochs"] == "—"  # params.yaml sets it: no default
    assert [b.script for b in docblocks.blocks((ROOT / "docs" / "configuration.md").read_text())] == ["src/dmlsynth/config_reference.py"]
