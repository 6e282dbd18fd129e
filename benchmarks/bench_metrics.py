"""retrieval_metrics vs pytorch-metric-learning's AccuracyCalculator, side by side.

Clustered, L2-normalised embeddings (``default``: 10,000 x 512, 100 classes, as in the
paper datasets' test splits). Both sides get the same embeddings; runs are interleaved
and the median of several repetitions is reported, so machine load affects both alike.
Records both sides' metrics, their largest absolute difference and the time ratio.
AccuracyCalculator's default search is faiss ``IndexFlatL2``; dmlsynth searches with
``IndexFlatIP`` (docs/methods.md §2). On unit vectors both rank alike, but their float32
scores round differently, so two near-tied neighbours can swap places at a rank
boundary. To separate that from the metrics' definitions, AccuracyCalculator is also
run once (untimed) with the same inner-product search (``FaissKNN(index_init_fn=
faiss.IndexFlatIP)``): with the same search the numbers must agree to 1e-6.

Besides the timings, each row records what a re-run reproduces exactly: the shape,
both sides' metric values and their difference. ``--config tiny`` is what
tests/e2e/test_metrics_benchmark.py re-runs from scratch.

    PYTHONPATH=src python benchmarks/bench_metrics.py --write

Results go to ``benchmarks/results/metrics.csv`` (rows of the other config are kept);
``--write`` renders the BENCHMARKS.md block from it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlsynth import docblocks  # noqa: E402
from dmlsynth.machine import facts_line, machine_facts  # noqa: E402

SCRIPT = "benchmarks/bench_metrics.py"
RESULTS = "benchmarks/results/metrics.csv"
CONFIGS = {
    "default": dict(n=10_000, dim=512, classes=100, repeats=5),
    "tiny": dict(n=1_000, dim=32, classes=10, repeats=3),
}
# dmlsynth's name -> AccuracyCalculator's
PAIRS = {"recall@1": "precision_at_1", "map@r": "mean_average_precision_at_r", "r_precision": "r_precision"}
EXACT = ["config", "n", "dim", "classes", "repeats", "metric", "pml_metric", "dmlsynth", "pml", "abs_difference",
         "pml_inner_product", "abs_difference_inner_product", "search_k"]  # fmt: skip
AGREEMENT = 1e-6


def clustered(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centers = rng.normal(size=(classes, dim))
    x = centers[labels] + rng.normal(scale=3.0, size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def measure(config: str) -> pd.DataFrame:
    """One row per metric: both values, their difference, and the median times of the same run.

    The times are of ``retrieval_metrics``, of ``AccuracyCalculator.get_accuracy`` and of the exact
    faiss search ``retrieval_metrics`` makes (:func:`dmlsynth.metrics.nearest_neighbors`), interleaved.
    """
    import faiss
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import FaissKNN

    from dmlsynth.metrics import nearest_neighbors, retrieval_metrics

    facts = machine_facts()
    setup = CONFIGS[config]
    x, labels = clustered(setup["n"], setup["dim"], setup["classes"])
    calculator = AccuracyCalculator(include=tuple(PAIRS.values()), k="max_bin_count")
    x_t, labels_t = torch.from_numpy(x), torch.from_numpy(labels)
    # The k retrieval_metrics searches with: the largest number of other images of a query's class.
    search_k = max(8, int(np.bincount(labels).max()) - 1)
    ours_times, theirs_times, search_times = [], [], []
    for _ in range(setup["repeats"]):
        start = time.perf_counter()
        nearest_neighbors(x, search_k)
        search_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = retrieval_metrics(x, labels, include_nmi=False)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = calculator.get_accuracy(x_t, labels_t)
        theirs_times.append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(ours_times), statistics.median(theirs_times)
    search_s = statistics.median(search_times)
    same_search = AccuracyCalculator(
        include=tuple(PAIRS.values()), k="max_bin_count", knn_func=FaissKNN(index_init_fn=faiss.IndexFlatIP)
    ).get_accuracy(x_t, labels_t)
    rows = [
        dict(config=config, **{key: setup[key] for key in ("n", "dim", "classes", "repeats")}, metric=mine, pml_metric=pml,
             dmlsynth=float(ours[mine]), pml=float(theirs[pml]), abs_difference=abs(float(ours[mine]) - float(theirs[pml])),
             pml_inner_product=float(same_search[pml]),
             abs_difference_inner_product=abs(float(ours[mine]) - float(same_search[pml])),
             dmlsynth_seconds=ours_s, pml_seconds=theirs_s, speedup_pml_over_dmlsynth=theirs_s / ours_s,
             search_k=search_k, search_seconds=search_s, search_share_of_dmlsynth=search_s / ours_s, **facts)
        for mine, pml in PAIRS.items()
    ]  # fmt: skip
    return pd.DataFrame(rows)


def render(frame: pd.DataFrame) -> str:
    """BENCHMARKS.md: both sides' metrics, their differences and the median times of the default config."""
    frame = frame[frame.config == "default"]
    if frame.empty:
        return "Not measured yet: `PYTHONPATH=src python benchmarks/bench_metrics.py --write` measures the default configuration and writes it here.\n"
    first = frame.iloc[0]
    worst, worst_same = frame["abs_difference"].max(), frame["abs_difference_inner_product"].max()
    lines = [
        f"{int(first['n']):,} × {int(first['dim'])} clustered embeddings, {int(first['classes'])} classes, the same "
        f"L2-normalised embeddings for both, runs interleaved, median of {int(first['repeats'])}; {facts_line(first)}",
        "",
        "| metric | dmlsynth `retrieval_metrics` | pml `AccuracyCalculator` (its default search, `IndexFlatL2`) "
        "| abs. difference | pml with dmlsynth's search (`IndexFlatIP`) | abs. difference |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in frame.iterrows():
        lines.append(
            f"| {row['metric']} / {row['pml_metric']} | {row['dmlsynth']:.6f} | {row['pml']:.6f} | {row['abs_difference']:.3g} "
            f"| {row['pml_inner_product']:.6f} | {row['abs_difference_inner_product']:.3g} |"
        )
    lines += [
        f"| **median seconds** | **{first['dmlsynth_seconds']:.3f}** | **{first['pml_seconds']:.3f}** | "
        f"speed-up **{first['speedup_pml_over_dmlsynth']:.2f}×** | (not timed) | |",
        f"| of which `nearest_neighbors` alone (faiss `IndexFlatIP` search, k = {int(first['search_k'])}, tie ordering) "
        f"| {first['search_seconds']:.3f} ({100 * first['search_share_of_dmlsynth']:.0f} %) | | | | |",
        "",
        f"Largest difference: {worst:.3g} against pml's default search "
        f"({'within' if worst <= AGREEMENT else 'not within'} {AGREEMENT:g}), {worst_same:.3g} with the same search "
        f"({'within' if worst_same <= AGREEMENT else 'NOT within'} {AGREEMENT:g}); "
        "speed-up = `AccuracyCalculator` seconds ÷ `retrieval_metrics` seconds.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--write", action="store_true", help="render the BENCHMARKS.md block from the results")
    args = parser.parse_args()

    frame = measure(args.config)
    print(frame[["metric", "dmlsynth", "pml", "abs_difference", "dmlsynth_seconds", "pml_seconds", "speedup_pml_over_dmlsynth"]].to_string(index=False))
    docblocks.record_rows(args.out, frame, ["config"], float_format="%.9g", order=list(CONFIGS))
    if args.write:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render})


if __name__ == "__main__":
    main()
