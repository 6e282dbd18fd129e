"""Checking a benchmark script's committed tiny rows against a re-run from scratch."""

from __future__ import annotations

import io

import pandas as pd
import torch

from dmlsynth import docblocks
from tests.conftest import ROOT
from tests.helpers.reproduction import assert_reproduced, record_cpu


def script_globals(script: str) -> dict:
    """The module globals of a benchmark script (imported without running its main)."""
    return docblocks.load_renderer(ROOT, script, "render").__globals__


def remeasure_tiny(script: str, float_format: str = "%.6g", **measure_args) -> pd.DataFrame:
    """Run the script's ``measure("tiny")`` and require its ``EXACT`` columns to equal the committed
    tiny rows (read back at the precision the script writes) — exactly on the CPU that recorded them,
    approximately on another (:mod:`tests.helpers.reproduction`); returns the measured rows."""
    globals_ = script_globals(script)
    threads = torch.get_num_threads()
    try:
        measured = globals_["measure"]("tiny", **measure_args)
    finally:
        torch.set_num_threads(threads)  # a script sets its own thread count
    committed = pd.read_csv(ROOT / globals_["RESULTS"])
    committed = committed[committed.config == "tiny"].reset_index(drop=True)
    again = pd.read_csv(io.StringIO(measured.to_csv(index=False, float_format=float_format)))
    assert_reproduced(again, committed, globals_["EXACT"], record_cpu(committed), what=f"{script} tiny")
    return measured
