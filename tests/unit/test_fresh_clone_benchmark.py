"""The fresh-clone benchmark reads pytest's summary line right (what the README's sentence is built from)."""

import pandas as pd
import pytest

from dmlsynth import docblocks
from tests.conftest import ROOT

SCRIPT = "benchmarks/bench_fresh_clone_tests.py"


def test_pytest_summary_counts_and_seconds():
    summary = docblocks.load_renderer(ROOT, SCRIPT, "pytest_summary")
    output = "collected\n....\n===== 1 failed, 508 passed, 26 skipped, 67 warnings in 1118.56s (0:18:38) =====\n"
    counts, seconds = summary(output)
    assert counts == {"failed": 1, "passed": 508, "skipped": 26, "warnings": 67}
    assert seconds == pytest.approx(1118.56)
    with pytest.raises(ValueError, match="no pytest summary"):
        summary("Traceback: pip failed\n")


def test_render_uses_the_last_row():
    render = docblocks.load_renderer(ROOT, SCRIPT, "render")
    frame = pd.DataFrame(
        [
            dict(commit="a", date="2026-01-01", cpus=2, total_seconds=600.0, pytest_seconds=420.0, passed=10, skipped=1),
            dict(commit="b", date="2026-01-02", cpus=2, total_seconds=1500.0, pytest_seconds=1200.0, passed=500, skipped=26),
        ]
    )
    text = render(frame)
    assert "**25 min**" in text and "5 min to install" in text and "20 min" in text and "500 tests" in text
