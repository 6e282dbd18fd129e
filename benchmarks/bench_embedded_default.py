"""Wall time of the embedded default, end to end, from nothing.

Runs ``snakemake --cores 8 results/table.csv`` with the repository's
params.yaml in a fresh temporary folder (no prepared data, no results, no
MLflow store), then prints the total wall time and what each stage's jobs
cost, summed from the runs' own records.

    python benchmarks/bench_embedded_default.py [--cores 8] [--keep DIR] [--seeds 5] [--target results/comparison.md]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="8")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    parser.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 instead of params.yaml's")
    parser.add_argument("--target", default="results/table.csv", help="e.g. results/comparison.md")
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="dmlsynth-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.seeds is not None:
        params["seeds"] = list(range(args.seeds))
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--cores", args.cores, args.target],
        capture_output=True, text=True,
    )  # fmt: skip
    total = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:])
        raise SystemExit(f"workflow failed ({result.returncode})")

    train_seconds: dict[str, float] = defaultdict(float)
    eval_seconds = 0.0
    runs = 0
    for record_file in sorted((workdir / "results" / "runs").rglob("run.yaml")):
        record = yaml.safe_load(record_file.read_text())
        train_seconds[record["params"]["method"]] += record["wall_seconds"]["train"]
        eval_seconds += json.loads((record_file.parent / "metrics.json").read_text())["eval_seconds"]
        runs += 1
    jobs = result.stdout.count("Finished jobid") + result.stderr.count("Finished jobid")
    print(f"embedded default (params.yaml, seeds {params['seeds']}), --cores {args.cores}, {jobs} jobs, {runs} training runs")
    print(f"end-to-end wall time: {total:.1f} s ({total / 60:.1f} min)")
    print("training time inside the jobs, summed over seeds and losses (s):")
    for method, seconds in sorted(train_seconds.items()):
        print(f"  {method:<22}{seconds:8.1f}")
    print(f"metric computation, all runs (s): {eval_seconds:.1f}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
