"""Measured numbers in README.md, BENCHMARKS.md and the pages of docs/ are generated, never typed.

A script in ``benchmarks/`` measures, writes its raw numbers to a CSV file
in ``benchmarks/results/`` and renders a markdown block from that file into
the documents between two markers that say where the block comes from::

    <!-- BEGIN generated: benchmarks/bench_methods_digits.py:render from benchmarks/results/methods_digits.csv -->
    | method | ... |
    <!-- END generated -->

``tests/unit/test_docblocks.py`` finds every block in the documents,
renders it again from its CSV with the named function and fails if the text
differs; each script's own slow test re-runs part of its measurement from
scratch and compares it with the CSV. So a number in the documents is
always what the committed script produced from the committed results. A block
whose source is not a CSV gets the source's path instead of its rows (the
reference of every config key, rendered from the schema and the registry by
``src/dmlsynth/config_reference.py``).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from dmlsynth.errors import DmlsynthError
from dmlsynth.io import atomic_write_text

BEGIN = "<!-- BEGIN generated: {script}:{function} from {source} -->"
END = "<!-- END generated -->"
_BLOCK = re.compile(
    r"<!-- BEGIN generated: (?P<script>\S+?):(?P<function>\w+) from (?P<source>\S+) -->\n(?P<body>.*?)<!-- END generated -->",
    re.S,
)


@dataclass(frozen=True)
class Block:
    script: str  # repository-relative path of the script that renders it
    function: str  # its function: render(pandas.DataFrame) -> markdown text
    source: str  # repository-relative path of the CSV it renders
    body: str


class DocblockError(DmlsynthError):
    """A generated block that cannot be rendered or placed."""


def blocks(text: str) -> list[Block]:
    """Every generated block of a markdown text."""
    return [Block(m["script"], m["function"], m["source"], m["body"]) for m in _BLOCK.finditer(text)]


def load_renderer(root: Path, script: str, function: str) -> Callable:
    """The render function of ``script`` (a file path, imported without running its main)."""
    path = root / script
    spec = importlib.util.spec_from_file_location(f"_docblock_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


def render(root: Path, block: Block) -> str:
    """The block's text as its function renders it now: from the CSV's rows, or from the path of a source that is
    not a CSV (``src/dmlsynth/config_reference.py`` renders the schema and the registry's defaults)."""
    import pandas as pd

    source = root / block.source
    renderer = load_renderer(root, block.script, block.function)
    body = renderer(pd.read_csv(source)) if source.suffix == ".csv" else renderer(source)
    return body if body.endswith("\n") else body + "\n"


def replace_block(document: Path, script: str, function: str, source: str, body: str) -> bool:
    """Put ``body`` between the markers of (script, function, source) in ``document``.

    Returns False (and changes nothing) when the document has no such block;
    the markers are placed by hand once, where the block belongs.
    """
    document = Path(document)
    text = document.read_text()
    begin = BEGIN.format(script=script, function=function, source=source)
    start = text.find(begin)
    if start < 0:
        return False
    end = text.index(END, start)
    body = body if body.endswith("\n") else body + "\n"
    atomic_write_text(document, text[: start + len(begin)] + "\n" + body + text[end:])
    return True


# The documents whose generated blocks tests/unit/test_docblocks.py checks: the README, BENCHMARKS.md and every
# topic page (tests/unit/test_readme.py checks that this lists every page of docs/).
DOCUMENTS = (
    "README.md",
    "BENCHMARKS.md",
    "docs/methods.md",
    "docs/generation.md",
    "docs/statistics.md",
    "docs/configuration.md",
    "docs/extending.md",
    "docs/outputs.md",
    "docs/tracking.md",
    "docs/protocols.md",
    "docs/cluster.md",
    "docs/development.md",
)


def render_into(root: Path, script: str, source: str, rendered: dict[str, str]) -> list[str]:
    """Put each ``function -> text`` of ``rendered`` into every block of :data:`DOCUMENTS` that names
    (script, function, source); returns the functions no document has a block for."""
    placed = {
        function
        for document in DOCUMENTS
        if (Path(root) / document).is_file()
        for function, text in rendered.items()
        if replace_block(Path(root) / document, script, function, source, text)
    }
    return [function for function in rendered if function not in placed]


def write_blocks(root: Path, script: str, results: str | Path, renderers: Mapping[str, Callable]) -> None:
    """A benchmark's ``--write``: every block of ``script`` that renders from the CSV ``results``, rendered
    by ``renderers`` (``function name -> render(frame)``) from the file as written (read back, so a block
    shows exactly what the CSV holds). A render function without a block in any document is an error."""
    import pandas as pd

    root = Path(root)
    results = Path(results) if Path(results).is_absolute() else root / results
    source = results.resolve().relative_to(root.resolve()).as_posix()
    frame = pd.read_csv(results)
    missing = render_into(root, script, source, {name: render(frame) for name, render in renderers.items()})
    if missing:
        markers = ", ".join(f"<!-- BEGIN generated: {script}:{name} from {source} -->" for name in missing)
        raise DocblockError(f"no document has a block for {markers}; place its markers (and END) where it belongs")


def record_rows(path: Path, frame, replaces: Sequence[str], float_format: str = "%.6g", order: Sequence[str] = ()):
    """Write a measurement's rows into its results CSV: earlier rows with the same values of the
    ``replaces`` columns as the new rows are replaced, all others kept (other configurations, devices);
    rows sorted by ``config`` in ``order`` when given. Returns what was written."""
    import pandas as pd

    path = Path(path)
    if path.exists():
        old = pd.read_csv(path)
        same = pd.Series(True, index=old.index)
        for column in replaces:
            same &= old[column] == frame[column].iloc[0]
        frame = pd.concat([old[~same], frame], ignore_index=True)
    if order:
        frame = frame.sort_values("config", kind="stable", key=lambda c: c.map(list(order).index)).reset_index(drop=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, frame.to_csv(index=False, float_format=float_format))
    return frame
