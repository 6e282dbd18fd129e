"""The embedded default, end to end, from nothing: its wall time and its results.

Runs ``snakemake --cores all`` with the repository's params.yaml in a fresh
temporary folder (no prepared data, no results, no MLflow store) — what the
README's first command does after installing — then prints the total wall
time and what each rule's jobs cost: their wall seconds and peak memory from
the workflow's own ``benchmark:`` files (``logs/benchmarks/``), training and
metric seconds from the runs' records.

With ``--write`` it keeps what the run produced in ``benchmarks/results/``
and renders the README's blocks from it:

- ``embedded_default_runs.csv``: one row per training run (metrics.json,
  params hash, training seconds) — ``tests/e2e/test_embedded_default_numbers.py``
  re-trains some of these runs from scratch and requires the same numbers;
- ``embedded_default_table.csv``: the run's ``results/table.csv``, verbatim;
- ``embedded_default_time.csv``: wall time, jobs, what each stage cost, machine;
- ``embedded_default_generation.csv``: the run's ``results/generation.csv``, verbatim.

    python benchmarks/bench_embedded_default.py [--cores all] [--keep DIR] [--seeds N] [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from dmlsynth import docblocks
from dmlsynth.machine import machine_facts

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/bench_embedded_default.py"
RESULTS = ROOT / "benchmarks" / "results"
RUNS_CSV = RESULTS / "embedded_default_runs.csv"
TABLE_CSV = RESULTS / "embedded_default_table.csv"
TIME_CSV = RESULTS / "embedded_default_time.csv"
GENERATION_CSV = RESULTS / "embedded_default_generation.csv"
RUN_METRICS = ["recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"]


def run_workflow(workdir: Path, params: dict, cores: str, target: str | None) -> tuple[float, int]:
    """Snakemake on ``params`` in ``workdir`` (``target`` None: the default target, as the README runs it):
    (wall seconds, jobs finished)."""
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
         "--cores", cores, *([target] if target else [])],
        capture_output=True, text=True,
    )  # fmt: skip
    total = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:])
        raise SystemExit(f"workflow failed ({result.returncode})")
    return total, result.stdout.count("Finished jobid") + result.stderr.count("Finished jobid")


def collect_runs(results: Path) -> pd.DataFrame:
    """One row per training run of a results folder: what it is, its metrics and its cost."""
    rows = []
    for record_file in sorted((results / "runs").rglob("run.yaml")):
        record = yaml.safe_load(record_file.read_text())
        metrics = json.loads((record_file.parent / "metrics.json").read_text())
        params = record["params"]
        # The run's name (its table row): a method, or a control such as baseline+beta=40.
        row = {"dataset": params["dataset"], "method": params["label"], "control": params["control"] or "", "loss": params["loss"], "seed": params["seed"]}
        row.update(params_hash=record["params_hash"], train_seconds=round(record["wall_seconds"]["train"], 1))
        row.update(cpu_isa=record.get("cpu_isa", "native"))
        row.update(eval_seconds=round(metrics["eval_seconds"], 2))
        row.update({name: metrics[name] for name in RUN_METRICS})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["dataset", "method", "loss", "seed"]).reset_index(drop=True)


def rule_costs(benchmarks: Path) -> pd.DataFrame:
    """Per rule, from the workflow's ``benchmark:`` files: jobs, wall seconds summed, the largest peak RSS."""
    rows = []
    for tsv in sorted(benchmarks.rglob("*.tsv")):
        measured = pd.read_csv(tsv, sep="\t")
        rows.append({"rule": tsv.relative_to(benchmarks).parts[0].removesuffix(".tsv"), "s": float(measured["s"].iloc[-1]),
                     "max_rss": pd.to_numeric(measured["max_rss"], errors="coerce").iloc[-1]})  # fmt: skip
    if not rows:
        raise SystemExit(f"no benchmark files under {benchmarks}: the rules' benchmark: directives wrote nothing")
    frame = pd.DataFrame(rows)
    return frame.groupby("rule").agg(jobs=("s", "size"), seconds=("s", "sum"), peak_mb=("max_rss", "max")).reset_index()


def stage_costs(runs: pd.DataFrame, generation_csv: Path) -> dict:
    """Seconds each stage took inside its jobs: training per method (summed over seeds), metrics, generation."""
    costs = {f"train_seconds.{method}": round(seconds, 1) for method, seconds in runs.groupby("method").train_seconds.sum().items()}
    costs["eval_seconds"] = round(runs.eval_seconds.sum(), 1)
    if generation_csv.is_file():
        generation = pd.read_csv(generation_csv)
        everything = generation[generation.operator.isin(["all", "cfg"]) | (generation.image_set == generation.operator)]
        costs["generator_train_seconds"] = round(float(generation.generator_train_seconds.max()), 1)
        costs["generated_images"] = int(everything.images.sum())
        costs["generation_seconds"] = round(float((everything.images * everything.seconds_per_image).sum()), 1)
    return costs


def render_cost(frame: pd.DataFrame) -> str:
    """The BENCHMARKS block: what the default costs end to end and per stage."""
    row = frame.iloc[0]
    methods = sorted(c.split(".", 1)[1] for c in frame.columns if c.startswith("train_seconds."))
    training = ", ".join(f"{m} {row[f'train_seconds.{m}']:.0f} s" for m in methods)
    lines = [
        f"{int(row.methods)} methods and {_controls(row)} × {int(row.seeds)} seeds, `--cores {row.cores_flag}`; "
        f"{row.date}, {int(row.cpus)} CPUs, torch {row.torch}, {row.load}",
        "",
        "| | |",
        "|---|---|",
        f"| jobs | {int(row.jobs)} ({int(row.runs)} training runs) |",
        f"| **end-to-end wall time** | **{row.wall_seconds:.0f} s ({row.wall_seconds / 60:.1f} min)** |",
    ]
    if "generator_train_seconds" in frame.columns and row.generator_train_seconds == row.generator_train_seconds:
        lines += [
            f"| embedded generator training | {row.generator_train_seconds:.0f} s (beside the feature-space runs) |",
            f"| image generation, {int(row.generated_images)} images | {row.generation_seconds:.0f} s in all "
            f"({row.generation_seconds / row.generated_images:.2f} s per image) |",
        ]
    lines += [
        f"| training, summed over the seeds | {training} |",
        f"| metric computation, all {int(row.runs)} runs | {row.eval_seconds:.0f} s |",
    ]
    rules = [c.split(".", 1)[1] for c in frame.columns if c.startswith("rule_seconds.")]
    if rules:  # the workflow's benchmark: files: whole jobs, process start-up and imports included
        lines += ["", "Per rule, from the jobs' `benchmark:` files (whole jobs: start-up and imports included):", "",
                  "| rule | jobs | wall seconds, summed | largest peak memory |", "|---|---|---|---|"]  # fmt: skip
        for rule in sorted(rules, key=lambda r: -row[f"rule_seconds.{r}"]):
            lines.append(f"| `{rule}` | {int(row[f'rule_jobs.{rule}'])} | {row[f'rule_seconds.{rule}']:.0f} s | "
                         f"{row[f'rule_peak_mb.{rule}']:.0f} MB |")  # fmt: skip
    return "\n".join(lines) + "\n"


def render_generation(frame: pd.DataFrame) -> str:
    """The BENCHMARKS block: the default's generated image sets, from its results/generation.csv."""
    lines = [
        "| image set | operator | images | fidelity (chance) | diversity (generated / real) | union vs intersection separation (p) |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in frame.iterrows():
        separation = (
            f"{row.union_intersection_separation:.4f} ({row.union_intersection_pvalue:.3f})"
            if row.union_intersection_separation == row.union_intersection_separation else "—"
        )  # fmt: skip
        lines.append(
            f"| {row.image_set} | {row.operator} | {int(row.images)} | {row.fidelity:.3f} ({row.chance:.2f}) | "
            f"{row.diversity:.3f} | {separation} |"
        )
    real = frame.real_accuracy.iloc[0]
    lines += ["", f"(The fidelity classifier's own cross-validated accuracy on real images: {real:.3f}.)"]
    return "\n".join(lines) + "\n"


# table.csv holds the metrics in % and their differences in percentage points (docs/outputs.md).
def _percent(value: float) -> str:
    return f"{value:.1f}"


def _signed(value: float) -> str:
    text = f"{value:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text.replace("-", "−")


def render(table: pd.DataFrame) -> str:
    """The README block: every row of the default, R@1 and MAP@R, paired differences to each row's control."""
    seeds = int(table.seeds.max())
    # A record of the table with family-wise intervals shows them (they agree with the verdict); older ones the t CI.
    adjusted = "recall@1_delta_adj_low" in table
    bounds = ("delta_adj_low", "delta_adj_high") if adjusted else ("delta_ci_low", "delta_ci_high")
    interval = "Holm-level CI" if adjusted else "95 % CI"
    lines = [
        f"| method | compared with | R@1 (%) | Δ R@1, {interval} over seeds | p (Holm) | MAP@R (%) | Δ MAP@R, {interval} | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    controls = table.control.fillna("")
    order = list(table.method[controls != ""]) + list(table.method[controls == ""])  # the methods, then the controls
    for method in order:
        row = table[table.method == method].iloc[0]
        control = "" if row.control != row.control else str(row.control)
        cells = [f"`{method}`", f"`{control}`" if control else "(a control)"]
        for metric in ("recall@1", "map@r"):
            cells.append(f"{_percent(row[f'{metric}_mean'])} ± {_percent(row[f'{metric}_std'])}")
            if not control:
                cells += ["—", "—"]
                continue
            delta = (
                f"{_signed(row[f'{metric}_delta'])} "
                f"[{_signed(row[f'{metric}_{bounds[0]}'])}, {_signed(row[f'{metric}_{bounds[1]}'])}]"
            )
            significant = row[f"{metric}_significant"] == "yes"
            cells += [f"**{delta}**" if significant else delta, f"{row[f'{metric}_p_holm']:.2g}"]
        lines.append("| " + " | ".join(cells) + " |")
    loss = table.loss.iloc[0]
    lines += [
        "",
        f"({seeds} seeds, {loss} loss, mean ± standard deviation over seeds; bold: significant at 0.05 "
        "after Holm correction over the methods; each method is compared with its control, the same runs with the "
        "synthesis off and the method's loss params; from `results/table.csv` of a fresh run"
        + (f"; CPU libraries pinned to {str(table.cpu_isa.iloc[0]).upper()}" if "cpu_isa" in table and table.cpu_isa.iloc[0] == table.cpu_isa.iloc[0] else "")
        + ".)",
    ]
    return "\n".join(lines) + "\n"


def _paired_std(row: pd.Series, metric: str) -> float:
    """The standard deviation of a row's paired differences over seeds (points): the record's, or from the
    half-width of its 95 % t interval (a record from before the column: half-width = t_{0.975, n-1} s / sqrt(n))."""
    from scipy import stats as scipy_stats

    if f"{metric}_delta_std" in row and row[f"{metric}_delta_std"] == row[f"{metric}_delta_std"]:
        return float(row[f"{metric}_delta_std"])
    n = int(row.pairs)
    half = (row[f"{metric}_delta_ci_high"] - row[f"{metric}_delta_ci_low"]) / 2
    return float(half * n**0.5 / scipy_stats.t.ppf(0.975, n - 1))


def render_power(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """The README's sentence on what the default can detect: per method, R@1's minimal detectable difference at
    80 % power and α / m (dmlsynth.stats; m: the methods compared) and the seeds that would detect its Δ."""
    from dmlsynth import stats

    compared = table[table.control.notna() & (table.pairs >= 2)]
    if compared.empty:
        return "Not measured yet: the record has no method compared over two or more seeds.\n"
    level = alpha / len(compared)
    parts = []
    for _, row in compared.iterrows():
        sd, n = _paired_std(row, "recall@1"), int(row.pairs)
        mdd = stats.minimal_detectable_difference(sd, n, level)
        needed = stats.seeds_needed(row["recall@1_delta"], sd, level)
        seeds = "more than 1000" if needed == float("inf") else f"{int(needed)}" if needed == needed else "n/a"
        parts.append(f"`{row.method}` {mdd:.1f} points (its Δ {_signed(row['recall@1_delta'])} would need {seeds} seeds)")
    n = int(compared.pairs.max())
    return (
        f"With {n} seeds and {len(compared)} methods compared (α = {alpha:g} after Holm, so {level:.3g} for the first), "
        f"the default detects with {100 * stats.POWER:g} % power only R@1 differences of at least: " + "; ".join(parts)
        + ". Smaller differences can be real and still come out *not significant*: the table calls them underpowered.\n"
    )


def _controls(row: pd.Series) -> str:
    count = int(row.controls) if "controls" in row and row.controls == row.controls else 0
    return f"{count} control{'s' if count != 1 else ''} of their own"


def render_time(frame: pd.DataFrame) -> str:
    """The README's quick-start sentence on what the first command costs."""
    row = frame.iloc[0]
    pinned = (
        f", CPU libraries pinned to {str(row.cpu_isa).upper()} on an {row.cpu_model}" if "cpu_isa" in frame and row.cpu_isa == row.cpu_isa else ""
    )
    return (
        f"The workflow part took **{row.wall_seconds / 60:.1f} min** on a {int(row.cpus)}-core machine without a GPU{pinned} "
        f"({int(row.jobs)} jobs, {int(row.runs)} training runs: {int(row.methods)} methods and {_controls(row)} × {int(row.seeds)} seeds; "
        f"{row.load}; {_measured_at(row)}measured {row.date} by `{SCRIPT}`).\n"
    )


def _measured_at(row: pd.Series) -> str:
    """The commit the record was measured on (tests/unit/test_records_current.py compares it with the last
    change to the workflow's jobs); older records have none."""
    commit = row.get("commit")
    return f"commit {commit}, " if isinstance(commit, str) and commit else ""


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def cpu_isa_of(params: dict) -> str:
    from dmlsynth import config

    return str(config.validate(params)["reproducibility"]["cpu_isa"])


def cpu_model() -> str:
    """The CPU's model name as lscpu and /proc/cpuinfo give it."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="all", help="as the README's quick start")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    parser.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 instead of params.yaml's")
    parser.add_argument("--target", default=None, help="e.g. results/table.csv (default: the workflow's, as the README runs it)")
    parser.add_argument("--write", action="store_true", help="keep the results in benchmarks/results and render the README")
    args = parser.parse_args()
    if args.write and (args.seeds is not None or args.target is not None):
        parser.error("--write records the default exactly as params.yaml runs it: no --seeds, no --target")

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="dmlsynth-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.seeds is not None:
        params["seeds"] = list(range(args.seeds))
    facts = machine_facts()  # before the run: the load is other processes', not ours
    commit = head_commit()  # the code measured: a commit made during the run is not it
    total, jobs = run_workflow(workdir, params, args.cores, args.target)

    runs = collect_runs(workdir / "results")
    print(f"embedded default (params.yaml, seeds {params['seeds']}), --cores {args.cores}, {jobs} jobs, {len(runs)} training runs")
    print(f"end-to-end wall time: {total:.1f} s ({total / 60:.1f} min)")
    print("training time inside the jobs, summed over seeds and losses (s):")
    for method, seconds in runs.groupby("method").train_seconds.sum().items():
        print(f"  {method:<22}{seconds:8.1f}")
    print(f"metric computation, all runs (s): {runs.eval_seconds.sum():.1f}")
    rules = rule_costs(workdir / "logs" / "benchmarks")
    print("per rule, from the jobs' benchmark: files:")
    print(rules.to_string(index=False))

    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        # Every digit of each float (shortest round-trip repr): the re-run check compares them exactly.
        runs.to_csv(RUNS_CSV, index=False)
        shutil.copyfile(workdir / "results" / "table.csv", TABLE_CSV)
        timing = pd.DataFrame([{
            "commit": commit, "wall_seconds": round(total, 1), "jobs": jobs, "runs": len(runs), "methods": len(params["methods"]),
            "controls": runs.method.nunique() - len(params["methods"]),
            "seeds": len(params["seeds"]), "cores_flag": args.cores, "machine": platform.machine(), **facts,
            # The instruction set every job was pinned to, and the CPU model (lscpu's) that ran it.
            "cpu_isa": cpu_isa_of(params), "cpu_model": cpu_model(),
            **stage_costs(runs, workdir / "results" / "generation.csv"),
            **{f"rule_{name}.{r.rule}": round(float(r[name]), 1) for _, r in rules.iterrows() for name in ("jobs", "seconds", "peak_mb")},
        }])  # fmt: skip
        shutil.copyfile(workdir / "results" / "generation.csv", GENERATION_CSV)
        timing.to_csv(TIME_CSV, index=False)
        docblocks.write_blocks(ROOT, SCRIPT, TABLE_CSV, {"render": render, "render_power": render_power})
        docblocks.write_blocks(ROOT, SCRIPT, TIME_CSV, {"render_time": render_time, "render_cost": render_cost})
        docblocks.write_blocks(ROOT, SCRIPT, GENERATION_CSV, {"render_generation": render_generation})
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
