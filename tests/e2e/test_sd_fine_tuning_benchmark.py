"""The fine-tuning benchmark: its committed CPU row is what the script measures from scratch; its block in docs/generation.md."""

from __future__ import annotations

import pandas as pd
import pytest

from dmlsynth import docblocks
from tests.conftest import ROOT
from tests.helpers.reproduction import assert_reproduced, record_cpu

SCRIPT = "benchmarks/bench_sd_fine_tuning.py"
# What a re-run on the CPU reproduces exactly (timings do not): the same training, the same LoRA file.
EXACT = ["config", "method", "rank", "batch_size", "resolution", "images", "steps", "lora_checksum"]


def load(name):
    return docblocks.load_renderer(ROOT, SCRIPT, name)  # the script's own functions, imported


@pytest.mark.slow
def test_tiny_cpu_row_is_reproduced_from_scratch(tmp_path):
    pytest.importorskip("peft")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script runs on the CPU
    try:
        measured = load("measure")("tiny-cpu", "cpu", tmp_path)
    finally:
        torch.set_num_threads(threads)
    committed = pd.read_csv(ROOT / load("RESULTS"))
    committed = committed[committed.config == "tiny-cpu"].reset_index(drop=True)
    assert len(committed) == len(measured) == 1
    assert_reproduced(measured, committed, [*EXACT, "final_loss"], record_cpu(committed), what="tiny-cpu")
    assert measured["seconds_per_step"].iloc[0] > 0


def test_paper_fine_tuning_times_say_how_to_measure_until_a_gpu_row_exists():
    render = load("render_paper_fine_tuning")
    frame = pd.read_csv(ROOT / load("RESULTS"))
    text = render(frame[frame.config != "sd15"])
    assert "Not measured on a GPU yet" in text and "bench_sd_fine_tuning.py --render" in text
    rows = frame[frame.config == "tiny-cpu"].assign(
        config="sd15", device="NVIDIA H100 80GB HBM3", resolution=512, seconds_per_step=0.3, peak_reserved_gib=21.0
    )
    # 400 steps x 0.3 s = 2 min per class; x 80 CUB classes = 2.7 h; x 78 Cars classes = 2.6 h.
    assert "| NVIDIA H100 80GB HBM3 (" in render(rows)
    assert "| 0.300 | 21.0 GiB | 2.0 min | 2.7 h | 2.6 h |" in render(rows)
    assert "one class (400 steps) | CUB (80 classes) | Cars (78 classes)" in render(rows)
