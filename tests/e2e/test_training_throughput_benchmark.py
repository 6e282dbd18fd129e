"""The training-throughput benchmark's committed CPU rows are what the script measures from scratch."""

from __future__ import annotations

import pandas as pd
import pytest

from dmlsynth import docblocks
from tests.conftest import ROOT
from tests.helpers.reproduction import assert_reproduced, record_cpu

SCRIPT = "benchmarks/bench_training_throughput.py"
# What a re-run on the CPU reproduces (exactly on the recording CPU; timings do not).
EXACT = ["variant", "measure", "source", "decoding", "images", "batch_size", "image_size", "workers", "source_kb", "copy_kb", "first_loss"]


@pytest.mark.slow
def test_tiny_cpu_rows_are_reproduced_from_scratch(tmp_path):
    measure = docblocks.load_renderer(ROOT, SCRIPT, "measure")  # the script's own functions, imported
    measured = measure("tiny-cpu", "cpu", docblocks.load_renderer(ROOT, SCRIPT, "VARIANTS"), tmp_path, threads=1)
    committed = pd.read_csv(ROOT / docblocks.load_renderer(ROOT, SCRIPT, "RESULTS"))
    committed = committed[committed.config == "tiny-cpu"].reset_index(drop=True)
    assert len(committed) == len(measured)
    # Written with float_format %.6g: compare at that precision.
    again = pd.read_csv(pd.io.common.StringIO(measured.to_csv(index=False, float_format="%.6g")))
    assert_reproduced(again, committed, EXACT, record_cpu(committed), what="tiny-cpu")
    # The ratios are the rates over the model-only bound measured in the same run.
    bound = again.loc[again.measure == "model_only", "images_per_s"].iloc[0]
    assert (again["images_per_s"] > 0).all()
    # Both columns carry 6 significant digits: they agree to a relative 1e-4 (a ratio of 19 differs in its 4th decimal).
    expected = again["images_per_s"] / bound
    assert ((again["ratio_to_model_only"] - expected).abs() <= 1e-4 * expected.abs().clip(lower=1)).all()


def test_paper_times_say_how_to_measure_until_a_gpu_row_exists():
    render = docblocks.load_renderer(ROOT, SCRIPT, "render_paper_times")
    frame = pd.read_csv(ROOT / "benchmarks" / "results" / "training_throughput.csv")
    text = render(frame[frame.config != "paper"])
    assert "Not measured on a GPU yet" in text and "bench_training_throughput.py --render" in text
    row = frame[(frame.measure == "full") & (frame.variant == "copy:workers")].iloc[[0]].assign(
        config="paper", device="NVIDIA H100 80GB HBM3", images_per_s=2400.0
    )
    # 60 epochs x 5,760 CUB images at 2,400 images/s = 2.4 min; Cars 60 x 8,040 = 3.35 min.
    assert "| 2,400 | 2.4 min | 3.4 min | 1.1 GPU h |" in render(row)
