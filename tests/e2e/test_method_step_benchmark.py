"""benchmarks/bench_method_step.py: its tiny configuration re-run from scratch equals the committed rows."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers.benchmarks import remeasure_tiny, script_globals

SCRIPT = "benchmarks/bench_method_step.py"


def _script():
    return script_globals(SCRIPT)


@pytest.mark.slow
def test_tiny_rows_are_reproduced_from_scratch():
    measured = remeasure_tiny(SCRIPT, threads=1)
    # Every method ran, and each ratio is its step time over the baseline's of the same run.
    assert (measured["step_ms"] > 0).all()
    for _, part in measured.groupby(["backbone", "loss"]):
        baseline = part.loc[part.method == "baseline", "step_ms"].iloc[0]
        assert (part["baseline_ms"] == baseline).all()
        assert ((part["ratio_to_baseline"] - part["step_ms"] / baseline).abs() < 1e-12).all()


def test_render_shows_every_loss_and_marks_incompatible_methods():
    script = _script()
    frame = pd.read_csv(ROOT / script["RESULTS"])
    default = frame[frame.config == "default"]
    text = script["render"](frame)
    # One table row per (backbone, loss) of the default config, none of the tiny one.
    assert text.count("\n| small_cnn |") + text.count("\n| resnet18 |") == len(default.groupby(["backbone", "loss"]))
    # symm is incompatible with proxy_anchor: no row, a dash in the table.
    assert not ((default.method == "symm") & (default.loss == "proxy_anchor")).any()
    assert all("—" in line for line in text.splitlines() if "| proxy_anchor |" in line)
    assert "machine shared" in text or "machine idle" in text


def test_render_says_how_to_measure_when_only_the_tiny_rows_exist():
    script = _script()
    frame = pd.read_csv(ROOT / script["RESULTS"])
    text = script["render"](frame[frame.config == "tiny"])
    assert text.startswith("Not measured yet") and f"{script['SCRIPT']} --write" in text
