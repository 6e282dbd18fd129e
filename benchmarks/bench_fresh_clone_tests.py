"""Wall time of the README's test command in a fresh clone (what CI runs: ``.ci/run``).

Clones the repository's committed HEAD into a temporary folder, runs
``.ci/run`` there (new venv, ``pip install -e '.[test]'``, ``pytest``) and
records how long the install and the tests took and what pytest reported.
With ``--write`` the row goes to ``benchmarks/results/fresh_clone_tests.csv``
and the README's sentence about the test command is rendered from it.

    python benchmarks/bench_fresh_clone_tests.py [--keep DIR] [--write]
    python benchmarks/bench_fresh_clone_tests.py --render   # the documents from the recorded row
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/bench_fresh_clone_tests.py"
RESULTS = ROOT / "benchmarks" / "results" / "fresh_clone_tests.csv"
# pytest's last line, e.g. "= 1 failed, 508 passed, 26 skipped, 67 warnings in 1118.56s (0:18:38) ="
SUMMARY = re.compile(r"=+ (?P<counts>.*?) in (?P<seconds>[0-9.]+)s")


def pytest_summary(output: str) -> tuple[dict[str, int], float]:
    """(outcome -> count, seconds) of pytest's final summary line."""
    matches = list(SUMMARY.finditer(output))
    if not matches:
        raise ValueError("no pytest summary line in the output")
    last = matches[-1]
    counts = {}
    for part in last["counts"].split(","):
        number, _, outcome = part.strip().partition(" ")
        counts[outcome] = int(number)
    return counts, float(last["seconds"])


def render(frame: pd.DataFrame) -> str:
    row = frame.iloc[-1]
    install = row.total_seconds - row.pytest_seconds
    return (
        f"In a fresh clone on a {int(row.cpus)}-core machine without a GPU this took "
        f"**{row.total_seconds / 60:.0f} min**: {install / 60:.0f} min to install, {row.pytest_seconds / 60:.0f} min "
        f"for {int(row.passed)} tests ({int(row.skipped)} skipped: the CUDA cases and what needs a plugin or tool not installed; commit {row.commit}, measured {row.date} by "
        f"`{SCRIPT}`).\n"
    )


def render_documents() -> None:
    from dmlsynth import docblocks

    docblocks.write_blocks(ROOT, SCRIPT, RESULTS, {"render": render})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="clone into this (new) folder and keep it")
    parser.add_argument("--write", action="store_true", help="record the row and render the README")
    parser.add_argument("--render", action="store_true", help="only render the documents from the recorded row")
    args = parser.parse_args()
    if args.render:
        render_documents()
        return
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="dmlsynth-clone-")) / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(workdir)], check=True)
    commit = subprocess.run(["git", "-C", str(workdir), "rev-parse", "--short", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    started = time.perf_counter()
    # The suite-size check compares the record with today's suite: the run that writes the record skips it.
    env = {**os.environ, "DMLSYNTH_MEASURING_SUITE": "1"}
    result = subprocess.run([str(workdir / ".ci" / "run")], cwd=workdir, capture_output=True, text=True, env=env)
    total = time.perf_counter() - started
    output = result.stdout + result.stderr
    (workdir / "ci-output.log").write_text(output)  # all of it, for a failure's details
    counts, seconds = pytest_summary(result.stdout)
    summary_at = result.stdout.rfind("short test summary info")
    print(result.stdout[summary_at:] if summary_at >= 0 else result.stdout[-3000:])
    print(f"exit {result.returncode}; {total / 60:.1f} min in all, pytest {seconds / 60:.1f} min: {counts}")
    if result.returncode != 0:
        raise SystemExit("the test command failed in the fresh clone; nothing recorded")
    if args.write:
        row = {
            "commit": commit, "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
            "total_seconds": round(total, 1), "pytest_seconds": seconds,
            **{name: counts.get(name, 0) for name in ("passed", "failed", "skipped", "deselected")},
        }  # fmt: skip
        pd.DataFrame([row]).to_csv(RESULTS, index=False)
        render_documents()
    if not args.keep:
        shutil.rmtree(workdir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
