"""Checking numbers measured again against a record, on the record's CPU or on another one.

A record made with the CPU libraries pinned to one instruction set (``reproducibility.cpu_isa: avx2``, the
workflow's default; :mod:`dmlsynth.cpu_isa`) is reproduced exactly on any CPU that has it, and the check
is skipped, saying why, on one that does not (:func:`exact_check`).

A record made with each library's own kernels (``native``, or a benchmark measured in-process) reproduces
exactly only on CPUs of its signature (:func:`dmlsynth.machine.cpu_signature`: the model and the vector
instructions torch's kernels use). On another CPU float reductions take other kernels: a trained model, a
sampled image or a mean differs in its last digits and a training drifts further from there. So such a
record made on this CPU must be reproduced exactly; made elsewhere (or predating the signature) only
approximately: exact for what no float decides (counts, names, labels), within a tolerance for floats, and
not at all for hashes of float outputs (``*checksum``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dmlsynth import cpu_isa
from dmlsynth.machine import cpu_signature


def exact_check(recorded_isa) -> str | None:
    """For a record made at a pinned instruction set: None where this CPU runs that level (the numbers must be
    the record's digit for digit), else why the check cannot be made here (for ``pytest.skip``)."""
    if recorded_isa not in cpu_isa.VARIABLES or not cpu_isa.VARIABLES[recorded_isa]:
        return f"the record names no pinned instruction set ({recorded_isa!r}): measure it again pinned"
    missing = cpu_isa.missing_flags(recorded_isa)
    if missing:
        return f"this CPU lacks {', '.join(missing)}: the record's pinned level ({recorded_isa}) cannot run here"
    return None


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
