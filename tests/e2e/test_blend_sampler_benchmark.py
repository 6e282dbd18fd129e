"""benchmarks/bench_blend_sampler.py: its tiny configuration re-run from scratch equals the committed row."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers.benchmarks import remeasure_tiny, script_globals

SCRIPT = "benchmarks/bench_blend_sampler.py"


def _script():
    return script_globals(SCRIPT)


@pytest.mark.slow
def test_tiny_row_is_reproduced_from_scratch():
    measured = remeasure_tiny(SCRIPT, threads=1)
    row = measured.iloc[0]
    # Same work in every timed run, and the operators really change the images.
    assert row["max_abs_difference_between_repeats"] == 0
    assert row["max_abs_difference_blended_vs_plain"] > 0
    # The ratio and rates are those of the step times measured in the same run.
    assert row["ratio_blended_to_plain"] == pytest.approx(row["blended_ms_per_step"] / row["plain_ms_per_step"], rel=1e-12)
    for variant in ("plain", "blended"):
        seconds_per_call = row[f"{variant}_ms_per_step"] * row["steps"] / 1000
        assert row[f"{variant}_images_per_s"] == pytest.approx(row["batch"] / seconds_per_call, rel=1e-12)
    assert row["operators_share_of_plain_step"] == pytest.approx(row["operators_ms"] / row["plain_ms_per_step"], rel=1e-12)


def test_render_shows_the_measured_setups_but_not_the_tiny_one():
    script = _script()
    frame = pd.read_csv(ROOT / script["RESULTS"])
    text = script["render"](frame)
    assert "**tiny**" not in text
    for _, row in frame[frame.config != "tiny"].iterrows():
        assert f"**{row['config']}** on {row['device']}" in text
        assert f"**{row['ratio_blended_to_plain']:.3f}×**" in text


def test_render_says_how_to_measure_when_only_the_tiny_rows_exist():
    script = _script()
    frame = pd.read_csv(ROOT / script["RESULTS"])
    text = script["render"](frame[frame.config == "tiny"])
    assert text.startswith("Not measured yet") and f"{script['SCRIPT']} --write" in text
