"""Train every method on the embedded default (digits) over seeds and print R@1 / MAP@R mean ± std.

Uses params.yaml's training settings and the real training loop
(:func:`dmlsynth.training.loop.train_run`) and metrics (:func:`dmlsynth.metrics.retrieval_metrics`),
outside Snakemake, to compare the methods on one machine in one go:

    PYTHONPATH=src python benchmarks/run_methods_digits.py --out /tmp/digits-methods \
        --methods baseline symm iaa sgar --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from dmlsynth.config import run_params, validate
from dmlsynth.data.prepare import prepare_dataset
from dmlsynth.metrics import retrieval_metrics
from dmlsynth.training.loop import train_run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["baseline", "symm", "iaa", "sgar"])
    parser.add_argument("--losses", nargs="+", default=["multi_similarity"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()

    config = yaml.safe_load(args.params.read_text())
    config["paths"] = {"data": str(args.out / "data"), "results": str(args.out / "results"), "logs": str(args.out / "logs")}
    config["methods"], config["losses"] = args.methods, args.losses
    config = validate(config)
    manifest = Path(config["paths"]["data"]) / "digits" / "manifest.csv"
    if not manifest.exists():
        manifest = prepare_dataset(config, "digits")
    rows = []
    for loss in args.losses:
        for method in args.methods:
            for seed in args.seeds:
                run_dir = args.out / "results" / method / loss / str(seed)
                params = run_params(config, "digits", method, loss, seed)
                result = train_run(params, manifest, run_dir, progress=False)
                metrics = retrieval_metrics(result["embeddings"].numpy(), result["labels"].numpy(), ks=(1, 2, 4, 8))
                rows.append({"method": method, "loss": loss, "seed": seed, **metrics})
                print(json.dumps(rows[-1]), flush=True)
    print("\nmethod | loss | R@1 (mean ± std) | MAP@R (mean ± std) | seeds")
    for loss in args.losses:
        for method in args.methods:
            sel = [r for r in rows if r["method"] == method and r["loss"] == loss]
            r1 = np.array([r["recall@1"] for r in sel]) * 100
            mapr = np.array([r["map@r"] for r in sel]) * 100
            print(f"{method} | {loss} | {r1.mean():.2f} ± {r1.std(ddof=1) if len(r1) > 1 else 0:.2f} | "
                  f"{mapr.mean():.2f} ± {mapr.std(ddof=1) if len(mapr) > 1 else 0:.2f} | {len(sel)}")


if __name__ == "__main__":
    main()
