"""The suite's order on the xdist workers: the longest modules first, each module in one piece."""

from __future__ import annotations

import tomllib
from types import SimpleNamespace

from tests.conftest import LONGEST_MODULES, ROOT, module_order


def _item(nodeid: str, slow: bool = False):
    return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: object() if slow and name == "slow" else None)


def test_the_listed_modules_exist():
    # A renamed or removed module would silently lose its place at the front.
    missing = [module for module in LONGEST_MODULES if not (ROOT / module).is_file()]
    assert not missing, f"tests/conftest.py's LONGEST_MODULES names modules that are not there: {missing}"
    assert list(LONGEST_MODULES.values()) == sorted(LONGEST_MODULES.values(), reverse=True)


def test_longest_modules_first_then_workflow_modules_then_the_rest_each_in_one_piece():
    longest, second = list(LONGEST_MODULES)[:2]
    items = [
        _item("tests/unit/test_a.py::test_1"),
        _item("tests/e2e/test_new_workflow.py::test_quick"),
        _item("tests/e2e/test_new_workflow.py::test_runs[x]", slow=True),
        _item(f"{second}::test_1"),
        _item(f"{longest}::test_2"),
        _item(f"{longest}::test_1"),
        _item("tests/unit/test_a.py::test_2"),
    ]
    order = [item.nodeid for item in module_order(items)]
    assert order == [
        f"{longest}::test_2", f"{longest}::test_1", f"{second}::test_1",
        "tests/e2e/test_new_workflow.py::test_quick", "tests/e2e/test_new_workflow.py::test_runs[x]",
        "tests/unit/test_a.py::test_1", "tests/unit/test_a.py::test_2",
    ]  # fmt: skip


def test_xdist_keeps_the_order():
    # Without --no-loadscope-reorder xdist sends the modules with the most tests first, whatever the order.
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "--no-loadscope-reorder" in addopts and addopts[addopts.index("--dist") + 1] == "loadscope"
