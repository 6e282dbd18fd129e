"""The package's shape: no import cycles, long functions as numbered steps over small ones, tests from the registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from dmlsynth import provenance, registry
from tests.conftest import ROOT

SOURCE = ROOT / "src" / "dmlsynth"
LONGEST_FUNCTION = 100  # lines; a longer one is cut into steps (diffusers' pipeline style)


def modules() -> list[str]:
    names = []
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def every_import(module: str) -> set[str]:
    """The dmlsynth modules ``module`` imports anywhere: at module level and inside functions (a function-level
    import that dodges a cycle is still one), and the packages they are in."""
    path = provenance.module_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    known = set(modules())
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            names = [origin, *(f"{origin}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:end]) for end in range(1, len(parts) + 1) if ".".join(parts[:end]) in known)
    return found - {module, "dmlsynth"}


def test_every_import_is_seen_function_level_ones_too():
    # jobs.py imported pipeline inside functions (pipeline imports jobs): a cycle the module-level reading missed.
    assert {"dmlsynth.resolve", "dmlsynth.config"} <= every_import("dmlsynth.jobs") | every_import("dmlsynth.resolve")
    assert "dmlsynth.data.split" in every_import("dmlsynth.config")  # imported inside _semantic_problems


def test_no_module_imports_itself_through_others():
    graph = {m: every_import(m) for m in modules()}
    cycles = []
    for start in graph:  # depth-first from every module: does it come back?
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for nxt in graph.get(module, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen and nxt in graph and not nxt.startswith(start + "."):
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    # A package importing its own submodules is no cycle (importing a submodule runs its package first).
    real = [c for c in cycles if not all(b.startswith(a) or a.startswith(b) for a, b in zip(c.split(" -> "), c.split(" -> ")[1:]))]
    assert not real, "import cycles:\n" + "\n".join(sorted(set(real)))


def test_no_function_is_longer_than_a_screen_of_steps():
    long = []
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "cut these into numbered steps over small functions:\n" + "\n".join(long)


def test_tests_take_their_losses_from_the_registry():
    # A hand-written list of four or more of the registry's losses ("every loss") would miss the next loss;
    # a test about a few named losses lists them.
    names = "|".join(re.escape(name) for name in registry.LOSSES)
    listed = re.compile(rf"\[\s*\"(?:{names})\"(?:\s*,\s*\"(?:{names})\"){{3,}}\s*\]")
    found = [
        f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
        for path in (ROOT / "tests").rglob("test_*.py")
        for text in [path.read_text()]
        for match in listed.finditer(text)
        if "parametrize" in text[max(0, match.start() - 40) : match.start()]
    ]
    assert not found, "parametrize these over the registry (registry.LOSSES, a method's compatible losses):\n" + "\n".join(found)
