"""Why dmlsynth's NMI differs from pytorch-metric-learning's on the same embeddings.

Trains the embedded default's runs (digits, multi_similarity, seed 0, params.yaml's training
settings, 1 thread) for the given methods, then computes NMI of their test embeddings in
several ways:

- ``dmlsynth``: :func:`dmlsynth.metrics.nmi` — scikit-learn k-means++, best of 10 starts,
  on the L2-normalised embeddings (k-means seed 0; min and max over seeds 0-9);
- ``pml default``: ``AccuracyCalculator(include=("NMI",))`` on the embeddings as stored
  (un-normalised): faiss k-means, one random start, 20 iterations, faiss' seed 1234;
- ``pml, normalised``: the same on the L2-normalised embeddings;
- ``one start``: faiss k-means with one random start on the normalised embeddings, min and max
  over seeds 0-9 (the spread one start has);
- ``pml, our clustering``: ``AccuracyCalculator`` given :func:`dmlsynth.metrics.kmeans_clusters`
  as its ``kmeans_func`` — equal to ``dmlsynth`` (the formula is the same; only the clustering differs).

Writes ``benchmarks/results/nmi_definitions.csv`` and re-renders its block in docs/statistics.md::

    PYTHONPATH=src python benchmarks/bench_nmi_definitions.py [--methods baseline symm]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "nmi_definitions.csv"
SCRIPT = "benchmarks/bench_nmi_definitions.py"
SEEDS = range(10)


def train_digits(method: str, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test embeddings and labels of the embedded default's run of ``method`` (multi_similarity, seed 0)."""
    from dmlsynth.config import run_params, validate
    from dmlsynth.data.prepare import prepare_dataset
    from dmlsynth.training.loop import train_run

    config = yaml.safe_load((ROOT / "params.yaml").read_text())
    config["paths"] = {"data": str(workdir / "data"), "results": str(workdir / "results"), "logs": str(workdir / "logs")}
    config = validate(config)
    manifest = workdir / "data" / "digits" / "manifest.csv"
    if not manifest.exists():
        manifest = Path(prepare_dataset(config, "digits"))
    result = train_run(run_params(config, "digits", method, "multi_similarity", 0), manifest, workdir / method, threads=1, progress=False)
    return result["embeddings"].numpy(), result["labels"].numpy()


def nmi_definitions(method: str, embeddings: np.ndarray, labels: np.ndarray) -> list[dict]:
    """One row per way of computing NMI (see the module docstring)."""
    import faiss
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from sklearn.metrics import normalized_mutual_info_score

    from dmlsynth.metrics import kmeans_clusters, nmi

    faiss.omp_set_num_threads(1)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    normalised = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = len(np.unique(labels))

    def pml(data: np.ndarray, kmeans_func=None) -> float:
        calculator = AccuracyCalculator(include=("NMI",), kmeans_func=kmeans_func, device=torch.device("cpu"))
        return float(calculator.get_accuracy(torch.from_numpy(data), torch.from_numpy(labels))["NMI"])

    def one_start(seed: int) -> float:
        kmeans = faiss.Kmeans(normalised.shape[1], k, niter=20, seed=seed)
        kmeans.train(normalised)
        return float(normalized_mutual_info_score(labels, kmeans.index.search(normalised, 1)[1][:, 0]))

    ours = [nmi(normalised, labels, seed=s) for s in SEEDS]
    single = [one_start(s) for s in SEEDS]
    ours_in_pml = pml(normalised, lambda q, n: torch.from_numpy(kmeans_clusters(q.numpy(), n)))
    rows = [
        ("dmlsynth (k-means++, best of 10, normalised)", ours[0], min(ours), max(ours)),
        ("pml default (faiss, 1 start, as stored)", pml(x), np.nan, np.nan),
        ("pml, normalised embeddings", pml(normalised), np.nan, np.nan),
        ("faiss, 1 start, normalised (seeds 0-9)", single[0], min(single), max(single)),
        ("pml given dmlsynth's clustering", ours_in_pml, np.nan, np.nan),
    ]
    return [{"method": method, "definition": d, "nmi": v, "nmi_min": lo, "nmi_max": hi} for d, v, lo, hi in rows]


def measure(methods: list[str]) -> pd.DataFrame:
    with tempfile.TemporaryDirectory(prefix="dmlsynth-nmi-") as tmp:
        rows = []
        for method in methods:
            rows += nmi_definitions(method, *train_digits(method, Path(tmp)))
    return pd.DataFrame(rows)


def render(frame: pd.DataFrame) -> str:
    """docs/statistics.md's table: NMI per way of computing it, one column per method."""
    methods = list(dict.fromkeys(frame["method"]))
    lines = ["| NMI computed by | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for definition, part in frame.groupby("definition", sort=False):
        cells = []
        for method in methods:
            row = part[part["method"] == method].iloc[0]
            spread = "" if pd.isna(row["nmi_min"]) else f" ({row['nmi_min']:.3f}–{row['nmi_max']:.3f})"
            cells.append(f"{row['nmi']:.3f}{spread}")
        lines.append(f"| {definition} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from threadpoolctl import threadpool_limits

    from dmlsynth import docblocks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["baseline", "symm"])
    args = parser.parse_args()
    with threadpool_limits(1):
        frame = measure(args.methods)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    docblocks.atomic_write_text(RESULTS, frame.to_csv(index=False))
    print(render(frame))
    docblocks.write_blocks(ROOT, SCRIPT, RESULTS, {"render": render})


if __name__ == "__main__":
    main()
