"""Checking numbers measured again against a record, on the record's CPU or on another one.

Same params and seed give the same numbers on CPUs of one signature (:func:`dmlsynth.machine.cpu_signature`:
the model and the vector instructions torch's kernels use). On another CPU float reductions take other
kernels: a trained model, a sampled image or a mean differs in its last digits and a training drifts
further from there. So a record made on this CPU must be reproduced exactly; a record made elsewhere (or
one that predates the signature) only approximately: exact for what no float decides (counts, names,
labels), within a tolerance for floats, and not at all for hashes of float outputs (``*checksum``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmlsynth.machine import cpu_signature


def recorded_here(recorded_cpu) -> bool:
    """Whether a record's ``cpu`` fact is this machine's signature (an old record has none)."""
    return isinstance(recorded_cpu, str) and recorded_cpu == cpu_signature()


def record_cpu(frame: pd.DataFrame):
    """The ``cpu`` fact of a record's rows (None when it has none, or not one for all rows)."""
    if "cpu" not in frame.columns or frame["cpu"].nunique(dropna=False) != 1:
        return None
    return frame["cpu"].iloc[0]


def assert_reproduced(measured: pd.DataFrame, recorded: pd.DataFrame, columns, recorded_cpu, *, rtol: float = 0.05,
                      atol: float = 0.0, what: str = "") -> None:  # fmt: skip
    """``measured[columns]`` equals ``recorded[columns]``: exactly when the record was made on this CPU,
    else approximately (see the module's docstring)."""
    measured, recorded = measured.reset_index(drop=True), recorded.reset_index(drop=True)
    assert len(measured) == len(recorded), f"{what}: {len(measured)} rows measured, {len(recorded)} recorded"
    if recorded_here(recorded_cpu):
        pd.testing.assert_frame_equal(measured[list(columns)], recorded[list(columns)], check_dtype=False)
        return
    where = f"recorded on {recorded_cpu or 'a CPU it does not name'}, measured on {cpu_signature()}"
    for column in columns:
        if column.endswith("checksum"):
            continue  # a hash of float outputs: equal only on the record's CPU
        got, expected = measured[column], recorded[column]
        if pd.api.types.is_float_dtype(expected) or pd.api.types.is_float_dtype(got):
            assert np.allclose(got.astype(float), expected.astype(float), rtol=rtol, atol=atol, equal_nan=True), (
                f"{what} {column}: {got.tolist()} now, {expected.tolist()} recorded ({where}; rtol {rtol}, atol {atol})"
            )
        else:
            assert got.astype(str).tolist() == expected.astype(str).tolist(), f"{what} {column} ({where})"
