"""docs/statistics.md's NMI comparison (benchmarks/bench_nmi_definitions.py) is what the script measures from scratch."""

import importlib.util

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers.reproduction import assert_reproduced, record_cpu


@pytest.mark.slow
def test_nmi_definitions_reproduce_the_committed_numbers(tmp_path):
    from threadpoolctl import threadpool_limits

    spec = importlib.util.spec_from_file_location("bench_nmi_definitions", ROOT / "benchmarks" / "bench_nmi_definitions.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    committed = pd.read_csv(script.RESULTS)
    with threadpool_limits(1):
        rows = pd.DataFrame(script.nmi_definitions("baseline", *script.train_digits("baseline", tmp_path)))
    expected = committed[committed.method == "baseline"].reset_index(drop=True)
    assert list(rows.definition) == list(expected.definition)
    assert_reproduced(rows, expected, ["nmi", "nmi_min", "nmi_max"], record_cpu(committed), rtol=0, atol=0.05, what="baseline")
    # The formula is pml's: given our clustering, pml's NMI is ours.
    assert rows.nmi.iloc[-1] == pytest.approx(rows.nmi.iloc[0], abs=1e-12)
