"""docs/methods.md's digits methods table (benchmarks/run_methods_digits.py) is what the script measures from scratch."""

import importlib.util

import pandas as pd
import pytest

from tests.conftest import ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("run_methods_digits", ROOT / "benchmarks" / "run_methods_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.slow
@pytest.mark.parametrize("configuration,loss", [("sgar", "multi_similarity"), ("iaa_official", "contrastive")])
def test_a_run_reproduces_the_committed_row(tmp_path, configuration, loss):
    script = load_script()
    committed = pd.read_csv(script.RESULTS)
    rows = script.measure(tmp_path, [configuration], [loss], [0], ROOT / "params.yaml", tmp_path / "rows.csv")
    expected = committed[(committed.configuration == configuration) & (committed.loss == loss) & (committed.seed == 0)]
    assert len(rows) == len(expected) == 1
    for column in ("recall@1", "map@r"):
        assert rows[column].iloc[0] == pytest.approx(expected[column].iloc[0], abs=1e-12), column
    assert rows["method_params"].iloc[0] == expected["method_params"].iloc[0]


def test_render_pairs_every_configuration_with_baseline_by_seed():
    script = load_script()
    frame = pd.DataFrame(
        [
            {"configuration": c, "method": c, "method_params": "{}", "loss": "triplet", "seed": s, "recall@1": r, "map@r": 0.3, "seconds": 1.0}
            for c, values in {"baseline": [0.90, 0.92, 0.94], "sgar": [0.91, 0.93, 0.95]}.items()
            for s, r in zip([0, 1, 2], values)
        ]
    )
    text = script.render(frame)
    assert "| `baseline` | 92.0 ± 2.0 / 30.0 ± 0.0 |" in text
    # Every paired difference is +1.0: zero spread, a zero-width interval, p = 0.
    assert "| `sgar` | +1.0 [+1.0, +1.0] * † |" in text
