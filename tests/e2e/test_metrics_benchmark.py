"""benchmarks/bench_metrics.py: its tiny configuration re-run from scratch equals the committed rows."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers.benchmarks import remeasure_tiny, script_globals

SCRIPT = "benchmarks/bench_metrics.py"


def _script():
    return script_globals(SCRIPT)


@pytest.mark.slow
def test_tiny_rows_are_reproduced_from_scratch():
    script = _script()
    measured = remeasure_tiny(SCRIPT, float_format="%.9g")
    # With the same search both sides agree; the difference columns are the differences; the
    # speed-up is the ratio of the two median times of the same run.
    assert (measured["abs_difference_inner_product"] <= script["AGREEMENT"]).all()
    assert ((measured["dmlsynth"] - measured["pml"]).abs() == measured["abs_difference"]).all()
    assert ((measured["dmlsynth"] - measured["pml_inner_product"]).abs() == measured["abs_difference_inner_product"]).all()
    ratio = measured["pml_seconds"] / measured["dmlsynth_seconds"]
    assert ((measured["speedup_pml_over_dmlsynth"] - ratio).abs() < 1e-12).all()
    share = measured["search_seconds"] / measured["dmlsynth_seconds"]
    assert ((measured["search_share_of_dmlsynth"] - share).abs() < 1e-12).all()


def test_committed_default_rows_agree_and_render():
    script = _script()
    frame = pd.read_csv(ROOT / script["RESULTS"])
    default = frame[frame.config == "default"]
    assert set(default.metric) == set(script["PAIRS"])
    assert (default["abs_difference_inner_product"] <= script["AGREEMENT"]).all()
    text = script["render"](frame)
    assert "Largest difference" in text and "NOT within" not in text
    assert f"**{default['speedup_pml_over_dmlsynth'].iloc[0]:.2f}×**" in text


def test_render_says_how_to_measure_when_only_the_tiny_rows_exist():
    script = _script()
    frame = pd.read_csv(ROOT / script["RESULTS"])
    text = script["render"](frame[frame.config == "tiny"])
    assert text.startswith("Not measured yet") and f"{script['SCRIPT']} --write" in text
