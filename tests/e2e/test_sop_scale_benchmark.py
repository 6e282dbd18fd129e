"""benchmarks/bench_sop_scale.py: its tiny configuration re-run from scratch equals the committed rows, and the
committed SOP-size rows are what BENCHMARKS.md shows."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers.benchmarks import remeasure_tiny, script_globals

SCRIPT = "benchmarks/bench_sop_scale.py"


@pytest.mark.slow
def test_tiny_rows_are_reproduced_from_scratch():
    measured = remeasure_tiny(SCRIPT, devices=("cpu",))
    setup = script_globals(SCRIPT)["CONFIGS"]["tiny"]
    sampler = measured[(measured.part == "sampler")].iloc[0]
    assert sampler["value"] == setup["train_images"] // setup["batch"] * setup["batch"]
    generation = measured[measured.part == "generation"]
    assert generation["value"].iloc[0] == 3 * setup["train_classes"]


def test_committed_sop_rows_are_sop_sized_and_render():
    script = script_globals(SCRIPT)
    frame = pd.read_csv(ROOT / script["RESULTS"])
    sop = frame[frame.config == "sop"]
    retrieval = sop[(sop.part == "retrieval") & (sop.device == "cpu")]
    assert set(retrieval.n) == {60_502} and set(retrieval.dim) == {512}
    assert {"recall@1", "recall@10", "recall@100", "recall@1000"} <= set(retrieval.detail)
    assert set(sop[sop.part == "bootstrap"].n) == {60_502}
    assert set(sop[sop.part == "sampler"].classes) == {11_318}
    text = script["render"](frame)
    assert "60,502 × 512" in text and "| generation | arithmetic |" in text
    tiny_only = script["render"](frame[frame.config == "tiny"])
    assert tiny_only.startswith("Not measured yet") and SCRIPT in tiny_only
