"""benchmarks/bench_protocol_costs.py: the committed protocol table is what the configs give, and GPU-hours come only
from GPU measurements."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.e2e.test_protocols import EXPECTED_JOBS
from tests.helpers.benchmarks import script_globals

SCRIPT = "benchmarks/bench_protocol_costs.py"


@pytest.fixture(scope="module")
def script():
    return script_globals(SCRIPT)


def test_committed_table_is_what_the_configs_give(script):
    measured = script["measure"]()
    again = pd.read_csv(io.StringIO(measured.to_csv(index=False, float_format="%.6g")))
    committed = pd.read_csv(ROOT / script["RESULTS"])
    pd.testing.assert_frame_equal(again, committed, check_dtype=False)
    jobs = dict(zip(committed.config, committed.train_jobs))
    assert jobs == {path: counts["train"] for path, counts in EXPECTED_JOBS.items()}
    generation = dict(zip(committed.config, committed.generation_jobs))
    assert generation["config/protocols/blender.yaml"] == 3 * (100 + 98)
    assert generation["config/protocols/iaa.yaml"] == 0


def test_gpu_hours_come_from_gpu_rows_only(script, tmp_path, monkeypatch):
    committed = pd.read_csv(ROOT / script["RESULTS"])
    assert committed["gpu_hours_training"].isna().all()  # no GPU row in training_throughput.csv yet
    assert "not measured" in script["render"](committed)
    throughput = tmp_path / "throughput.csv"
    pd.DataFrame(
        {"device": ["cuda:0 (H100)", "cpu"], "backbone": ["googlenet", "googlenet"], "measure": ["full", "full"], "images_per_s": [1000.0, 5.0]}
    ).to_csv(throughput, index=False)
    monkeypatch.setitem(script, "THROUGHPUT", throughput)
    frame = script["measure"]().set_index("protocol")
    assert frame.loc["symm", "gpu_hours_training"] == pytest.approx(frame.loc["symm", "images_trained"] / 1000 / 3600)
    assert pd.isna(frame.loc["sgar", "gpu_hours_training"])  # bn_inception was not measured
