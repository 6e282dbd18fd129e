"""The README's recorded timings cannot go stale silently.

The test command's record (``benchmarks/results/fresh_clone_tests.csv``) counts the tests it ran: it
must be within 10 % of the tests collected today. The quick start's record
(``benchmarks/results/embedded_default_time.csv``) must have been measured on a commit that has the
last change to what the workflow's jobs run (the Snakefile, its rules, ``params.yaml``, the schema and
every module a job imports). Each failure says which script re-measures the record.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from dmlsynth import provenance, registry
from dmlsynth.cli import JOB_COMMANDS
from tests.conftest import ROOT

FRESH_CLONE_CSV = ROOT / "benchmarks" / "results" / "fresh_clone_tests.csv"
QUICK_START_CSV = ROOT / "benchmarks" / "results" / "embedded_default_time.csv"
# Set by benchmarks/bench_fresh_clone_tests.py for the run it measures (that run writes the record).
MEASURING = "DMLSYNTH_MEASURING_SUITE"
TOLERANCE = 0.10  # the recorded suite size may differ from today's by this fraction
WORKFLOW_FILES = ("Snakefile", "rules", "params.yaml", "src/dmlsynth/schema")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def job_files() -> list[str]:
    """What the workflow's jobs run: the workflow's files and the source of every module a job imports
    (its command, and the methods and backbones the registry names: what their code digests hash)."""
    modules = ["dmlsynth.cli", *(f"dmlsynth.commands.{spec.rule}" for spec in JOB_COMMANDS)]
    modules += [registry.module_of(spec.module) for spec in registry.METHODS.values()]
    modules += [registry.module_of(spec.build) for spec in registry.BACKBONES.values()]
    sources = [path.relative_to(ROOT).as_posix() for path in provenance.source_files(modules)]
    return sorted({*sources, *WORKFLOW_FILES})


def record_commit(frame: pd.DataFrame, csv) -> str:
    """The commit a record was measured on: its ``commit`` column, else the commit that wrote the file."""
    commit = frame.iloc[-1].get("commit")
    if isinstance(commit, str) and commit:
        return commit
    return git("log", "-1", "--format=%H", "--", csv.relative_to(ROOT).as_posix())


def stale_quick_start(record: str, files: list[str]) -> str | None:
    """Why a record measured on commit ``record`` is older than the last change to ``files``; None if it is not."""
    last = git("log", "-1", "--format=%H", "--", *files)
    if not last:
        return None
    has_it = subprocess.run(["git", "merge-base", "--is-ancestor", last, record], cwd=ROOT).returncode == 0
    if has_it:
        return None
    changed = git("diff", "--name-only", last + "~1", last, "--", *files).split()
    return (
        f"the quick start was measured on commit {record[:9]}, before commit {last[:9]} changed what the jobs run "
        f"({', '.join(changed[:5])}); re-measure it: PYTHONPATH=src python benchmarks/bench_embedded_default.py --write"
    )


def suite_size_problem(recorded: int, collected: int) -> str | None:
    if abs(recorded - collected) <= TOLERANCE * collected:
        return None
    return (
        f"the README's test-suite record counts {recorded} tests, today {collected} are collected (more than "
        f"{TOLERANCE:.0%} apart); re-measure it: PYTHONPATH=src python benchmarks/bench_fresh_clone_tests.py --write"
    )


def recorded_tests(row: pd.Series) -> int:
    return int(sum(row.get(outcome, 0) for outcome in ("passed", "failed", "skipped", "deselected")))


def collected_tests(session: pytest.Session) -> int:
    """Today's number of tests, as ``pytest --collect-only -q`` counts it: this session's when it collected
    the whole suite, else a collection of its own."""
    every_file = {path.resolve() for path in (ROOT / "tests").rglob("test_*.py")}
    collected_files = {item.path.resolve() for item in session.items}
    options = session.config.option
    if collected_files == every_file and not options.keyword and not options.markexpr:
        return len(session.items)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    found = re.search(r"^(\d+) tests? collected", result.stdout, re.MULTILINE)
    assert found, f"pytest --collect-only did not count the tests:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return int(found[1])


def test_the_recorded_suite_size_is_todays(request):
    if os.environ.get(MEASURING):  # the record this run writes cannot be checked by the run that measures it
        pytest.skip(f"{MEASURING} is set: this run is bench_fresh_clone_tests.py measuring the suite")
    row = pd.read_csv(FRESH_CLONE_CSV).iloc[-1]
    problem = suite_size_problem(recorded_tests(row), collected_tests(request.session))
    assert problem is None, problem


def test_the_quick_start_was_measured_after_the_last_change_to_the_jobs():
    frame = pd.read_csv(QUICK_START_CSV)
    problem = stale_quick_start(record_commit(frame, QUICK_START_CSV), job_files())
    assert problem is None, problem


def test_a_suite_size_more_than_ten_percent_off_fails():
    assert suite_size_problem(643, 1124) is not None and "bench_fresh_clone_tests.py --write" in suite_size_problem(643, 1124)
    assert suite_size_problem(1030, 1124) is None  # 8 % off
    assert suite_size_problem(1250, 1124) is not None  # 11 % off
    assert recorded_tests(pd.Series({"passed": 600, "failed": 1, "skipped": 30, "deselected": 2})) == 633


def test_a_record_older_than_a_change_to_the_jobs_is_stale():
    files = job_files()
    last = git("log", "-1", "--format=%H", "--", *files)
    assert stale_quick_start(last, files) is None  # measured on the commit of the last change
    assert stale_quick_start(git("rev-parse", "HEAD"), files) is None  # or later
    before = git("rev-parse", last + "~1")
    problem = stale_quick_start(before, files)
    assert problem is not None and last[:9] in problem and "bench_embedded_default.py --write" in problem


def test_the_jobs_files_hold_what_each_job_runs():
    files = set(job_files())
    for expected in ("rules", "Snakefile", "params.yaml", "src/dmlsynth/training/loop.py", "src/dmlsynth/evaluation.py",
                     "src/dmlsynth/generation/embedded.py", "src/dmlsynth/methods/iaa.py", "src/dmlsynth/models.py"):  # fmt: skip
        assert expected in files, expected
    assert "src/dmlsynth/table.py" in files  # the table job's
