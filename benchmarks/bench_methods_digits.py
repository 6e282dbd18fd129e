"""Every method on the embedded default (digits) with each loss over seeds, each compared with its control.

Runs the workflow itself — ``snakemake results/table.csv`` on params.yaml with one configuration's method
and losses, in a folder of its own — so the runs are the ones a user gets: the same job matrix, the
controls the workflow trains beside a method (``baseline`` with the method's loss params,
:func:`dmlsynth.registry.control_label`) and the like-for-like checks of the table. One row per run
goes to ``benchmarks/results/methods_digits.csv``; ``--write-docs`` renders docs/methods.md's table from
it (:func:`render`, through :mod:`dmlsynth.docblocks`):

    python benchmarks/bench_methods_digits.py --out /tmp/digits-methods --write-docs

A *configuration* is a method with some of its params set (``iaa_official``: IAA with
``variant: official``); its runs are paired by seed with its control's, and the table gives the
paired difference's Student-t interval (:func:`dmlsynth.stats.t_interval`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/bench_methods_digits.py"
RESULTS = ROOT / "benchmarks" / "results" / "methods_digits.csv"
# configuration: a method's name, or a control's run name (baseline, baseline+beta=40, ...); control: the
# run name its runs are compared with ("" for a control).
COLUMNS = ["configuration", "method", "method_params", "control", "loss", "seed", "recall@1", "map@r", "seconds", "cpu"]
# configuration -> (method, method_params and method_loss_params over params.yaml's, the losses it runs
# with (None: every compatible one)). IAA's official code has Multi-Similarity and contrastive only.
CONFIGURATIONS = {
    "symm": ("symm", {}, {}, None),
    "iaa": ("iaa", {}, {}, None),
    "iaa_official": (
        "iaa", {"variant": "official"}, {"contrastive": {"reduction": "batch_sum"}}, ("multi_similarity", "contrastive")
    ),
    # Which official switch costs IAA on digits: the official rule with the paper's equal copy spreads.
    "iaa_official_equal_spread": ("iaa", {"variant": "official", "copy_spread": "equal"}, {}, ("multi_similarity",)),
    "sgar": ("sgar", {}, {}, None),
}
LOSSES = ["multi_similarity", "contrastive", "triplet", "proxy_anchor", "n_pairs", "angular"]


def configuration_params(base: dict, name: str, losses: list[str], seeds: list[int]) -> dict | None:
    """params.yaml with one configuration's method, params and the losses it runs with (None: no loss)."""
    from dmlsynth import registry

    method, overrides, loss_overrides, only = CONFIGURATIONS[name]
    losses = [l for l in losses if registry.METHODS[method].is_compatible(l) and (only is None or l in only)]
    if not losses:
        return None
    params = dict(base, methods=[method], losses=losses, seeds=list(seeds), tracking={"enabled": False})
    given = (base.get("method_params") or {}).get(method) or {}
    params["method_params"] = {**(base.get("method_params") or {}), method: {**given, **overrides}}
    given_losses = (base.get("method_loss_params") or {}).get(method) or {}
    params["method_loss_params"] = {
        **(base.get("method_loss_params") or {}),
        method: {key: {**(given_losses.get(key) or {}), **value} for key, value in {**given_losses, **loss_overrides}.items()},
    }
    return params


def run_workflow(workdir: Path, params: dict) -> None:
    """``snakemake results/table.csv`` on ``params`` in ``workdir``, on the CPU (the numbers are the CPU's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
               "--cores", "all", "results/table.csv"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:])
        raise SystemExit(f"the workflow failed in {workdir} ({result.returncode})")


def collect(workdir: Path, name: str, method_params: str) -> list[dict]:
    """One row per run of a finished workflow: the configuration's runs and its controls'."""
    rows = []
    for record_file in sorted((workdir / "results" / "runs").rglob("run.yaml")):
        record = yaml.safe_load(record_file.read_text())
        metrics = json.loads((record_file.parent / "metrics.json").read_text())
        params = record["params"]
        control = params.get("control") or ""
        rows.append({
            "configuration": name if control else params["label"], "method": params["label"],
            "method_params": method_params if control else "{}", "control": control, "loss": params["loss"],
            "seed": int(params["seed"]), "recall@1": metrics["recall@1"], "map@r": metrics["map@r"],
            "seconds": round(float(record["wall_seconds"]["train"]), 1),
            # The numbers are this CPU's (dmlsynth.machine.cpu_signature): equal on another only approximately.
            "cpu": (record.get("environment") or {}).get("cpu", ""),
        })  # fmt: skip
    return rows


def measure(
    out: Path,
    configurations: list[str],
    losses: list[str],
    seeds: list[int],
    params_file: Path,
    results: Path,
    keep: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Run each configuration's workflow; the CSV ``results`` (``keep``'s rows, then this measurement's) is
    rewritten after each configuration, so a cut measurement keeps what it finished. A control trained
    by several configurations' workflows (the same params, the same numbers) is kept once."""
    from dmlsynth.io import atomic_write_text

    results.parent.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(params_file.read_text())
    base["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    rows: list[dict] = []
    for name in configurations:
        params = configuration_params(base, name, losses, seeds)
        if params is None:
            continue
        _, overrides, loss_overrides, _ = CONFIGURATIONS[name]
        method_params = json.dumps({**overrides, **({"losses": loss_overrides} if loss_overrides else {})}, sort_keys=True)
        run_workflow(out / name, params)
        rows += collect(out / name, name, method_params)
        measured = _once(pd.DataFrame(rows, columns=COLUMNS))
        print(measured[measured.configuration == name].to_string(index=False), flush=True)
        # This measurement's runs first: a kept run it measured again is replaced.
        kept = measured if keep is None else pd.concat([measured, keep]).drop_duplicates(["configuration", "loss", "seed"])
        atomic_write_text(results, kept.to_csv(index=False))
    return _once(pd.DataFrame(rows, columns=COLUMNS)).reset_index(drop=True)


def _once(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run once; a control that two workflows trained must have given the same numbers in both."""
    key = ["configuration", "loss", "seed"]
    spread = frame.groupby(key)[["recall@1", "map@r"]].nunique()
    if (spread > 1).any(axis=None):
        raise SystemExit(f"a control gave different numbers in two workflows:\n{spread[(spread > 1).any(axis=1)]}")
    return frame.drop_duplicates(key)


def render(frame: pd.DataFrame) -> str:
    """Two markdown tables: R@1 / MAP@R (%, mean ± std over seeds) of every configuration and control, and
    R@1's paired difference with the control each configuration was trained beside."""
    from dmlsynth.stats import holm, t_interval

    frame = frame.assign(control=frame["control"].fillna(""))
    losses = [loss for loss in LOSSES if loss in set(frame["loss"])]
    methods = [name for name in CONFIGURATIONS if name in set(frame["configuration"])]
    controls = sorted(set(frame.configuration[frame.control == ""]), key=lambda c: (c != "baseline", c))
    seeds = sorted(set(frame["seed"]))
    header = "| configuration | " + " | ".join(f"`{loss}`" for loss in losses) + " |\n|---|" + "---|" * len(losses) + "\n"

    def cell(name: str, loss: str) -> str:
        runs = frame[(frame.configuration == name) & (frame.loss == loss)]
        if runs.empty:
            return "—"
        r1, mapr = runs["recall@1"].to_numpy() * 100, runs["map@r"].to_numpy() * 100
        return f"{r1.mean():.1f} ± {r1.std(ddof=1):.1f} / {mapr.mean():.1f} ± {mapr.std(ddof=1):.1f}"

    def interval(name: str, loss: str):
        runs = frame[(frame.configuration == name) & (frame.loss == loss)]
        if runs.empty:
            return None, ""
        (control,) = set(runs.control)
        base = frame[(frame.configuration == control) & (frame.loss == loss)].set_index("seed")["recall@1"]
        paired = (runs.set_index("seed")["recall@1"] - base).dropna() * 100
        return (None if paired.empty else t_interval(paired.to_numpy())), control

    def differences(name: str) -> list[str]:
        intervals = [interval(name, loss) for loss in losses]
        tested = [i for i, _ in intervals if i is not None]
        adjusted = iter(holm([i.p for i in tested]) if tested else [])
        cells = []
        for i, control in intervals:
            if i is None:
                cells.append("—")
                continue
            mark = (" *" if i.p < 0.05 else "") + (" †" if next(adjusted) < 0.05 else "")
            versus = "" if control == "baseline" else f" vs `{control}`"
            cells.append(f"{i.estimate:+.1f} [{i.low:+.1f}, {i.high:+.1f}]{mark}{versus}")
        return cells

    text = f"R@1 / MAP@R in % (mean ± std over {len(seeds)} seeds: {', '.join(map(str, seeds))}):\n\n" + header
    text += "".join(f"| `{name}` | " + " | ".join(cell(name, loss) for loss in losses) + " |\n" for name in controls + methods)
    text += (
        "\nR@1 minus its control's, paired by seed (mean [95 % t-interval]; * p < 0.05; † p < 0.05 after Holm's "
        "adjustment over the configuration's losses). The control is `baseline` unless named: `baseline` with "
        "the loss params the method's runs use (the workflow trains it beside the method):\n\n" + header
    )
    text += "".join(f"| `{name}` | " + " | ".join(differences(name)) + " |\n" for name in methods)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the workflows (one per configuration)")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--losses", nargs="+", default=["multi_similarity", "contrastive", "triplet", "proxy_anchor", "n_pairs"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the CSV to write")
    parser.add_argument("--write-docs", action="store_true", help="render the docs/methods.md block from the results")
    parser.add_argument("--render-only", action="store_true", help="train nothing: render the existing results")
    parser.add_argument("--append", action="store_true", help="keep the results' other runs (e.g. more losses)")
    args = parser.parse_args()

    from dmlsynth import docblocks

    if not args.render_only:
        keep = None
        if args.append and args.results.exists():
            # The runs measured before that this measurement does not repeat.
            keep = pd.read_csv(args.results)
            again = keep.configuration.isin(args.configurations) & keep.loss.isin(args.losses) & keep.seed.isin(args.seeds)
            keep = keep[~again]
        measure(args.out, args.configurations, args.losses, args.seeds, args.params, args.results, keep)
    frame = pd.read_csv(args.results)
    print(render(frame))
    if args.write_docs:
        docblocks.write_blocks(ROOT, SCRIPT, args.results, {"render": render})


if __name__ == "__main__":
    main()
