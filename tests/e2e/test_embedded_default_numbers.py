"""The README's embedded-default numbers are what a fresh run of params.yaml gives.

``benchmarks/bench_embedded_default.py --write`` recorded every run of the
default in ``benchmarks/results/embedded_default_runs.csv`` and its table in
``embedded_default_table.csv`` (rendered into the README). Here runs of that
record are trained again from scratch with the repository's params.yaml and
must give the same numbers, digit for digit, on any CPU that has the
instruction set the record was pinned to (``reproducibility.cpu_isa``); a
code change that moves them fails until the record (and so the README) is
measured again.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import docblocks, resolve
from dmlsynth.layout import Layout
from tests.conftest import ROOT
from tests.helpers.reproduction import exact_check
from tests.helpers.workflow import snakemake

SCRIPT = "benchmarks/bench_embedded_default.py"
RUNS = pd.read_csv(ROOT / "benchmarks" / "results" / "embedded_default_runs.csv")
TABLE = pd.read_csv(ROOT / "benchmarks" / "results" / "embedded_default_table.csv")
TIME = pd.read_csv(ROOT / "benchmarks" / "results" / "embedded_default_time.csv")  # the machine's facts, the cpu
METRICS = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"]
# The feature-space methods (no image generation: seconds each); generation's cost is the record's.
RETRAINED = [("baseline", 0), ("symm", 0), ("iaa", 0), ("sgar", 0), ("baseline+beta=40", 0)]


def test_the_record_is_of_the_current_default():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Every run the workflow trains: the configured methods and the controls they are compared with.
    expected = resolve.runs(cfg.validate(params))
    assert sorted(RUNS.method.unique()) == sorted({run["method"] for run in expected})
    assert set(params["methods"]) < set(RUNS.method)
    assert sorted(RUNS.seed.unique()) == sorted(params["seeds"])
    assert sorted(RUNS.loss.unique()) == sorted(params["losses"])
    assert len(RUNS) == len(expected)
    assert (TABLE.seeds == len(params["seeds"])).all()
    # Each method's row names the control it was compared with, and that control is a row of its own.
    for _, row in TABLE[TABLE.control.notna()].iterrows():
        assert row.control in set(TABLE.method), row.method


def test_the_table_record_aggregates_the_run_record():
    # The recorded table's means are the recorded runs' means: both come from the same fresh run.
    for _, row in TABLE.iterrows():
        runs = RUNS[(RUNS.method == row.method) & (RUNS.loss == row.loss)]
        for metric in METRICS:
            # table.csv holds the metrics in % (a run's metrics.json: in [0, 1]), 6 decimals
            assert 100 * runs[metric].mean() == pytest.approx(row[f"{metric}_mean"], abs=1e-4), (row.method, metric)
        hashes = sorted(str(row.params_hashes).split(";"))
        assert hashes == sorted(runs.params_hash), row.method


@pytest.mark.slow
def test_a_fresh_run_of_params_yaml_gives_the_recorded_numbers(tmp_path):
    why_not = exact_check(TIME["cpu_isa"].iloc[0] if "cpu_isa" in TIME else None)
    if why_not:
        pytest.skip(f"{why_not} ({SCRIPT} --write measures it again)")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tracking"] = {"enabled": False}  # not part of a run's params; keeps the test off MLflow
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    layout = Layout.of(params)
    targets = [layout.run(params["datasets"][0], m, params["losses"][0], s).metrics for m, s in RETRAINED]
    # The record was measured on the CPU; "device: auto" would take a GPU here.
    snakemake(tmp_path, *targets, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=1800)
    for (method, seed), target in zip(RETRAINED, targets):
        record = RUNS[(RUNS.method == method) & (RUNS.seed == seed)].iloc[0]
        metrics = json.loads((tmp_path / target).read_text())
        run = yaml.safe_load((tmp_path / target).with_name("run.yaml").read_text())
        assert run["params_hash"] == record.params_hash, f"{method} seed {seed}: params changed since the record"
        assert run["cpu_isa"] == TIME["cpu_isa"].iloc[0], f"{method} seed {seed}: not run at the record's instruction set"
        # Digit for digit, whichever CPU made the record (both pinned to one instruction set).
        measured = {name: metrics[name] for name in METRICS}
        assert measured == {name: float(record[name]) for name in METRICS}, (
            f"{method} seed {seed}: {measured} now, recorded on {TIME['cpu'].iloc[0]} "
            f"({TIME.get('cpu_model', TIME['cpu']).iloc[0]}); measure again with {SCRIPT} --write"
        )


def test_the_record_says_its_instruction_set_and_cpu():
    # The re-measured record names the pinned level and the CPU model; the README shows both.
    if "cpu_isa" not in TIME:
        pytest.skip(f"the record predates reproducibility.cpu_isa: {SCRIPT} --write measures it again")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert TIME["cpu_isa"].iloc[0] == cfg.validate(params)["reproducibility"]["cpu_isa"]
    assert isinstance(TIME["cpu_model"].iloc[0], str) and TIME["cpu_model"].iloc[0]
    assert f"pinned to {TIME['cpu_isa'].iloc[0].upper()}" in (ROOT / "README.md").read_text()


def test_the_readme_renders_the_record():
    text = (ROOT / "README.md").read_text()
    sources = {(b.script, b.function, b.source) for b in docblocks.blocks(text)}
    assert (SCRIPT, "render", "benchmarks/results/embedded_default_table.csv") in sources
    assert (SCRIPT, "render_time", "benchmarks/results/embedded_default_time.csv") in sources


def test_the_recorded_quick_start_fits_five_minutes_on_two_cores():
    # Issue #22: the README's first command, measured from nothing on the 2-core machine, within 5 minutes.
    # A change that makes the default slower fails here once it is measured again (--write).
    time = TIME.iloc[0]
    assert int(time.cpus) == 2 and time.cores_flag == "all"
    assert time.wall_seconds <= 300, f"the quick start took {time.wall_seconds:.0f} s (> 5 min): make it faster or change the default"
    assert int(time.jobs) > 0 and int(time.runs) == len(RUNS)
