"""Train every method on the embedded default (digits) over seeds; R@1 / MAP@R per method and loss.

Uses params.yaml's training settings and the real training loop
(:func:`dmlsynth.training.loop.train_run`) and metrics (:func:`dmlsynth.metrics.retrieval_metrics`),
outside Snakemake, to compare the methods on one machine in one go. One row per run goes to
``benchmarks/results/methods_digits.csv``; ``--write-docs`` renders docs/methods.md's table from it
(:func:`render`, through :mod:`dmlsynth.docblocks`):

    PYTHONPATH=src python benchmarks/run_methods_digits.py --out /tmp/digits-methods --seeds 0 1 2 3 4 \
        --configurations baseline symm iaa iaa_official sgar
    PYTHONPATH=src python benchmarks/run_methods_digits.py --out /tmp/digits-methods --seeds 0 1 2 3 4 \
        --configurations baseline symm --losses n_pairs --append
    PYTHONPATH=src python benchmarks/run_methods_digits.py --out /tmp/digits-methods --seeds 0 1 2 3 4 \
        --configurations iaa_official_equal_spread --append --write-docs

A *configuration* is a method with some of its params set (``iaa_official``: IAA with
``variant: official``); runs of one loss and seed are paired with ``baseline``'s, and the table
gives the paired difference's Student-t interval (:func:`dmlsynth.stats.t_interval`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/run_methods_digits.py"
RESULTS = ROOT / "benchmarks" / "results" / "methods_digits.csv"
COLUMNS = ["configuration", "method", "method_params", "loss", "seed", "recall@1", "map@r", "seconds"]
# configuration -> (method, method_params and method_loss_params over params.yaml's, the losses it runs
# with (None: every compatible one)). IAA's official code has Multi-Similarity and contrastive only.
CONFIGURATIONS = {
    "baseline": ("baseline", {}, {}, None),
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


def measure(
    out: Path,
    configurations: list[str],
    losses: list[str],
    seeds: list[int],
    params_file: Path,
    results: Path,
    keep: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Train every run; the CSV ``results`` (``keep``'s rows, then this measurement's) is rewritten
    after each run, so a cut measurement keeps its runs."""
    from dmlsynth import registry
    from dmlsynth.config import run_params, validate
    from dmlsynth.data.prepare import prepare_dataset
    from dmlsynth.metrics import retrieval_metrics
    from dmlsynth.io import atomic_write_text
    from dmlsynth.training.loop import train_run

    results.parent.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(params_file.read_text())
    base["paths"] = {"data": str(out / "data"), "results": str(out / "results"), "logs": str(out / "logs")}
    rows = []
    for loss in losses:
        for name in configurations:
            method, overrides, loss_overrides, only = CONFIGURATIONS[name]
            if not registry.METHODS[method].is_compatible(loss) or (only is not None and loss not in only):
                continue
            config = dict(base, methods=[method], losses=[loss])
            given = (base.get("method_params") or {}).get(method) or {}
            config["method_params"] = {**(base.get("method_params") or {}), method: {**given, **overrides}}
            given_losses = (base.get("method_loss_params") or {}).get(method) or {}
            config["method_loss_params"] = {
                **(base.get("method_loss_params") or {}),
                method: {key: {**(given_losses.get(key) or {}), **value} for key, value in {**given_losses, **loss_overrides}.items()},
            }
            config = validate(config)
            manifest = Path(config["paths"]["data"]) / "digits" / "manifest.csv"
            if not manifest.exists():
                manifest = prepare_dataset(config, "digits")
            for seed in seeds:
                params = run_params(config, "digits", method, loss, seed)
                started = time.perf_counter()
                result = train_run(params, manifest, out / "results" / name / loss / str(seed), progress=False)
                metrics = retrieval_metrics(result["embeddings"].numpy(), result["labels"].numpy(), ks=(1,))
                rows.append({
                    "configuration": name, "method": method,
                    "method_params": json.dumps({**overrides, **({"losses": loss_overrides} if loss_overrides else {})}, sort_keys=True),
                    "loss": loss, "seed": seed, "recall@1": metrics["recall@1"], "map@r": metrics["map@r"],
                    "seconds": round(time.perf_counter() - started, 1),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
                measured = pd.DataFrame(rows, columns=COLUMNS)
                atomic_write_text(results, (measured if keep is None else pd.concat([keep, measured])).to_csv(index=False))
    return pd.DataFrame(rows, columns=COLUMNS)


def render(frame: pd.DataFrame) -> str:
    """Two markdown tables: R@1 / MAP@R (%, mean ± std over seeds), and R@1's paired difference with baseline."""
    from dmlsynth.stats import holm, t_interval

    losses = [loss for loss in LOSSES if loss in set(frame["loss"])]
    configurations = [name for name in CONFIGURATIONS if name in set(frame["configuration"])]
    seeds = sorted(set(frame["seed"]))
    header = "| configuration | " + " | ".join(f"`{loss}`" for loss in losses) + " |\n|---|" + "---|" * len(losses) + "\n"

    def cell(name: str, loss: str) -> str:
        runs = frame[(frame.configuration == name) & (frame.loss == loss)]
        if runs.empty:
            return "—"
        r1, mapr = runs["recall@1"].to_numpy() * 100, runs["map@r"].to_numpy() * 100
        return f"{r1.mean():.1f} ± {r1.std(ddof=1):.1f} / {mapr.mean():.1f} ± {mapr.std(ddof=1):.1f}"

    def interval(name: str, loss: str):
        runs = frame[(frame.configuration == name) & (frame.loss == loss)].set_index("seed")["recall@1"]
        base = frame[(frame.configuration == "baseline") & (frame.loss == loss)].set_index("seed")["recall@1"]
        paired = (runs - base).dropna() * 100
        return None if paired.empty else t_interval(paired.to_numpy())

    def differences(name: str) -> list[str]:
        intervals = [interval(name, loss) for loss in losses]
        tested = [i for i in intervals if i is not None]
        adjusted = iter(holm([i.p for i in tested]) if tested else [])
        cells = []
        for i in intervals:
            if i is None:
                cells.append("—")
                continue
            mark = (" *" if i.p < 0.05 else "") + (" †" if next(adjusted) < 0.05 else "")
            cells.append(f"{i.estimate:+.1f} [{i.low:+.1f}, {i.high:+.1f}]{mark}")
        return cells

    text = f"R@1 / MAP@R in % (mean ± std over {len(seeds)} seeds: {', '.join(map(str, seeds))}):\n\n" + header
    text += "".join(f"| `{name}` | " + " | ".join(cell(name, loss) for loss in losses) + " |\n" for name in configurations)
    text += (
        "\nR@1 minus baseline's, paired by seed (mean [95 % t-interval]; * p < 0.05; † p < 0.05 after Holm's "
        "adjustment over the configuration's losses):\n\n" + header
    )
    text += "".join(
        f"| `{name}` | " + " | ".join(differences(name)) + " |\n" for name in configurations if name != "baseline"
    )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the data and the runs")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--losses", nargs="+", default=["multi_similarity", "contrastive", "triplet", "proxy_anchor"])
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
        source = str(args.results.resolve().relative_to(ROOT))
        if docblocks.render_into(ROOT, SCRIPT, source, {"render": render(pd.read_csv(args.results))}):
            raise SystemExit("no document has a block for this script (docs/methods.md had one); place its markers first")


if __name__ == "__main__":
    main()
