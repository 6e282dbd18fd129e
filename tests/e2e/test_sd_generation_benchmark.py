"""The SD generation benchmark's committed CPU rows are what the script measures from scratch."""

from __future__ import annotations

import pandas as pd
import pytest

from dmlsynth import docblocks
from tests.conftest import ROOT
from tests.helpers.reproduction import assert_reproduced, record_cpu

SCRIPT = "benchmarks/bench_sd_generation.py"
# What a re-run on the CPU reproduces exactly (timings do not): the same images, in the same batches.
EXACT = ["config", "variant", "image_set", "k", "images", "image_size", "batch", "batches", "steps", "checksum"]


def load(name):
    return docblocks.load_renderer(ROOT, SCRIPT, name)  # the script's own functions, imported


@pytest.mark.slow
def test_tiny_cpu_rows_are_reproduced_from_scratch(tmp_path):
    measured = load("measure")("tiny-cpu", "cpu", ["default"], tmp_path)
    committed = pd.read_csv(ROOT / load("RESULTS"))
    committed = committed[committed.config == "tiny-cpu"].reset_index(drop=True)
    assert len(committed) == len(measured) == 2
    assert_reproduced(measured, committed, EXACT, record_cpu(committed), what="tiny-cpu")
    assert (measured["seconds_per_image"] > 0).all() and (measured["batches"] == 2).all()


def test_paper_generation_times_say_how_to_measure_until_a_gpu_row_exists():
    render = load("render_paper_generation")
    frame = pd.read_csv(ROOT / load("RESULTS"))
    text = render(frame[frame.config != "sd15"])
    assert "Not measured on a GPU yet" in text and "bench_sd_generation.py --render" in text
    rows = frame[frame.config == "tiny-cpu"].assign(config="sd15", device="NVIDIA H100 80GB HBM3", peak_reserved_gib=14.0)
    rows.loc[rows.image_set == "blender", "seconds_per_image"] = 0.2
    rows.loc[rows.image_set == "plain", "seconds_per_image"] = 0.1
    # 150 + 25 % extra for the filter = 188 images x (3 blended sets x 0.2 s + 0.1 s) = 131.6 s = 2.2 min per class;
    # x 100 classes = 3.7 h; x 98 = 3.6 h.
    assert "| 0.200 / 0.100 | 14.0 GiB | 2.2 min | 3.7 h | 3.6 h |" in render(rows)
