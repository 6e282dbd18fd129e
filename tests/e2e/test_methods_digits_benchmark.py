"""docs/methods.md's digits methods table (benchmarks/bench_methods_digits.py) is what the script measures from scratch."""

import importlib.util

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers.reproduction import assert_reproduced, record_cpu


def load_script():
    spec = importlib.util.spec_from_file_location("bench_methods_digits", ROOT / "benchmarks" / "bench_methods_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.slow
@pytest.mark.parametrize("configuration,loss", [("sgar", "multi_similarity"), ("iaa_official", "contrastive")])
def test_a_run_reproduces_the_committed_rows_its_own_and_its_controls(tmp_path, configuration, loss):
    script = load_script()
    committed = pd.read_csv(script.RESULTS)
    rows = script.measure(tmp_path, [configuration], [loss], [0], ROOT / "params.yaml", tmp_path / "rows.csv")
    (control,) = set(rows.control[rows.configuration == configuration])
    # iaa_official's contrastive runs use the official batch_sum reduction: so does their control.
    assert control == {"sgar": "baseline", "iaa_official": "baseline+reduction=batch_sum"}[configuration]
    assert sorted(rows.configuration) == sorted([configuration, control])
    for name in (configuration, control):
        got = rows[rows.configuration == name]
        expected = committed[(committed.configuration == name) & (committed.loss == loss) & (committed.seed == 0)]
        assert len(got) == len(expected) == 1, name
        # Exactly on the CPU that recorded the row; on another within 5 points (tests.helpers.reproduction).
        assert_reproduced(got, expected, ["recall@1", "map@r"], record_cpu(expected), rtol=0, atol=0.05, what=name)
        assert got["method_params"].iloc[0] == expected["method_params"].iloc[0]


def _frame(values: dict[tuple[str, str], list[float]]):
    return pd.DataFrame(
        [
            {"configuration": c, "method": c, "method_params": "{}", "control": control, "loss": "triplet", "seed": s,
             "recall@1": r, "map@r": 0.3, "seconds": 1.0}  # fmt: skip
            for (c, control), rs in values.items()
            for s, r in zip([0, 1, 2], rs)
        ]
    )


def test_render_pairs_every_configuration_with_its_own_control_by_seed():
    script = load_script()
    frame = _frame({
        ("baseline", ""): [0.90, 0.92, 0.94], ("baseline+margin=0.1", ""): [0.80, 0.82, 0.84],
        ("sgar", "baseline"): [0.91, 0.93, 0.95], ("iaa", "baseline+margin=0.1"): [0.81, 0.83, 0.85],
    })  # fmt: skip
    text = script.render(frame)
    assert "| `baseline` | 92.0 ± 2.0 / 30.0 ± 0.0 |" in text
    assert "| `baseline+margin=0.1` | 82.0 ± 2.0 / 30.0 ± 0.0 |" in text
    # Every paired difference is +1.0 against the run's own control (against baseline IAA's would be −9):
    # zero spread, a zero-width interval, p = 0.
    assert "| `sgar` | +1.0 [+1.0, +1.0] * † |" in text
    assert "| `iaa` | +1.0 [+1.0, +1.0] * † vs `baseline+margin=0.1` |" in text
