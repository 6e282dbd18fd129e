"""Every error dmlsynth raises for its user has one base, which the command line reports without a traceback."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import dmlsynth
from dmlsynth.errors import DmlsynthError


def package_modules():
    for info in pkgutil.walk_packages(dmlsynth.__path__, "dmlsynth."):
        if info.name.endswith("__main__"):
            continue
        yield importlib.import_module(info.name)


def test_every_error_class_of_the_package_is_a_dmlsynth_error():
    errors = {
        f"{cls.__module__}.{cls.__qualname__}": cls
        for module in package_modules()
        for _, cls in inspect.getmembers(module, inspect.isclass)
        # (a private one, such as download's _Retryable, never leaves its module)
        if issubclass(cls, BaseException) and cls.__module__.startswith("dmlsynth.") and not cls.__name__.startswith("_")
    }
    assert len(errors) >= 15, sorted(errors)  # the package's own, found
    assert {name for name, cls in errors.items() if not issubclass(cls, DmlsynthError)} == set()


def test_the_command_line_reports_one_without_a_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("datasets: [nope]\n")
    result = subprocess.run([sys.executable, "-m", "dmlsynth", "check-config", "--config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2 and "dmlsynth check-config: error:" in result.stderr
    assert "Traceback" not in result.stderr
