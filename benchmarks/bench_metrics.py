"""retrieval_metrics vs pytorch-metric-learning's AccuracyCalculator, side by side.

10,000 x 512 clustered embeddings, 100 classes (as in the paper datasets'
test splits). Both sides get the same L2-normalised embeddings; runs are
interleaved and the median of several repetitions is reported, so machine
load affects both alike. Prints the metrics of both (they must agree to
1e-6) and the time ratio.

    python benchmarks/bench_metrics.py [--n 10000] [--dim 512] [--classes 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from dmlsynth.metrics import retrieval_metrics


def clustered(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centers = rng.normal(size=(classes, dim))
    x = centers[labels] + rng.normal(scale=3.0, size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    x, labels = clustered(args.n, args.dim, args.classes)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count"
    )
    x_t, labels_t = torch.from_numpy(x), torch.from_numpy(labels)

    ours_times, theirs_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = retrieval_metrics(x, labels, include_nmi=False)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = calculator.get_accuracy(x_t, labels_t)
        theirs_times.append(time.perf_counter() - start)

    pairs = [
        ("recall@1", "precision_at_1"),
        ("map@r", "mean_average_precision_at_r"),
        ("r_precision", "r_precision"),
    ]
    print(f"embeddings: {args.n} x {args.dim}, {args.classes} classes, {args.repeats} interleaved repeats")
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'metric':<14}{'dmlsynth':>12}{'pml':>12}{'|diff|':>12}")
    worst = 0.0
    for mine, pml in pairs:
        diff = abs(ours[mine] - theirs[pml])
        worst = max(worst, diff)
        print(f"{mine:<14}{ours[mine]:>12.6f}{theirs[pml]:>12.6f}{diff:>12.2e}")
    ours_median, theirs_median = statistics.median(ours_times), statistics.median(theirs_times)
    print(f"median seconds: dmlsynth {ours_median:.3f}  AccuracyCalculator {theirs_median:.3f}")
    print(f"speed-up (AccuracyCalculator / dmlsynth): {theirs_median / ours_median:.2f}x")
    print("same numbers (<= 1e-6):", "yes" if worst <= 1e-6 else f"NO (worst {worst:.2e})")


if __name__ == "__main__":
    main()
