"""benchmarks/measure_blend_operators.py: its per-step part re-run from scratch equals the committed results."""

import pandas as pd
import pytest
import torch

from dmlsynth import docblocks
from tests.conftest import ROOT


@pytest.mark.slow
def test_per_step_gaps_equal_the_committed_results(tmp_path):
    script = docblocks.load_renderer(ROOT, "benchmarks/measure_blend_operators.py", "render").__globals__
    committed = pd.read_csv(script["RESULTS"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the script's thread count: same threads, same numbers on CPU
    try:
        components, prompts, train, settings = script["setup"](tmp_path, ROOT / "params.yaml")
        labels = sorted(int(l) for l in train.label.unique())
        again = pd.DataFrame(script["measure_steps"](components, prompts, labels, settings))
    finally:
        torch.set_num_threads(threads)
    steps = committed[committed.part == "steps"].reset_index(drop=True)
    pd.testing.assert_frame_equal(again[["rule", "step", "gap_mean", "gap_min"]], steps[["rule", "step", "gap_mean", "gap_min"]],
                                  check_dtype=False, rtol=1e-9)
    # What the README says: in the first, layout-deciding steps the per-element operators keep union and
    # intersection far apart, the earlier rule did not.
    first = steps[steps.step <= 3]
    assert first[first.rule == "per_element"].gap_mean.min() > 5 * first[first.rule == "principal_component"].gap_mean.max()
