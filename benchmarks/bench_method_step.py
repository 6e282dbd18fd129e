"""Time of one training step (backbone forward + method loss + backward) per method vs ``baseline``.

Every method gets the same batch, the same backbone weights and the same
base loss; methods are timed round-robin (so load from other processes hits
all of them alike) and the median over the timed steps is reported, with the
ratio to ``baseline`` measured in the same run. Two backbones show how the
overhead scales: the embedded default's ``small_cnn`` on a digits batch
(80 x 1 x 8 x 8, 64-d) and a torchvision ResNet-18 on 80 x 3 x 64 x 64
images (512-d), where the backbone dominates as it does on real datasets.
IAA is timed after its warm-up (statistics estimated, synthesis on).

Besides the timings, each row records what a re-run reproduces exactly on
the CPU: the batch shape, the number of timed steps and the loss of each
method's first step. ``--config tiny`` is the small configuration that
tests/e2e/test_method_step_benchmark.py re-runs from scratch.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_method_step.py --write
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_method_step.py --config tiny --write

Results go to ``benchmarks/results/method_step.csv`` (rows of the other
config are kept); ``--write`` renders the BENCHMARKS.md block from it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dmlsynth import registry  # noqa: E402
from dmlsynth.losses import build_loss  # noqa: E402
from dmlsynth import docblocks  # noqa: E402
from dmlsynth.machine import facts_line, machine_facts  # noqa: E402
from dmlsynth.methods.base import MethodContext  # noqa: E402
from dmlsynth.models import EmbeddingNet, small_cnn  # noqa: E402
from dmlsynth.config import filled

SCRIPT = "benchmarks/bench_method_step.py"
RESULTS = "benchmarks/results/method_step.csv"
METHODS = ["baseline", "symm", "iaa", "sgar"]
CLASSES, PER_CLASS = 5, 16
WARM_UP_ROUNDS = 2
GOAL = 1.10  # issue #5: a method's step at most 1.10 x the baseline's
ALL_LOSSES = ["multi_similarity", "contrastive", "triplet", "proxy_anchor"]
# backbone -> (input shape of one image, embedding dimension)
BACKBONES = {"small_cnn": ((1, 8, 8), 64), "resnet18": ((3, 64, 64), 512)}
CONFIGS = {
    "default": dict(steps={"small_cnn": 150, "resnet18": 10}, losses=ALL_LOSSES),
    "tiny": dict(steps={"small_cnn": 3}, losses=["multi_similarity", "triplet"]),
}
EXACT = ["config", "backbone", "batch", "embedding_dim", "loss", "method", "timed_steps", "first_loss"]


def resnet18(embedding_dim: int) -> EmbeddingNet:
    from torchvision.models import resnet18 as tv_resnet18

    trunk = tv_resnet18(weights=None)
    trunk.fc = nn.Identity()
    return EmbeddingNet(trunk, nn.Linear(512, embedding_dim))


def make_backbone(name: str, embedding_dim: int) -> EmbeddingNet:
    return small_cnn(embedding_dim) if name == "small_cnn" else resnet18(embedding_dim)


def build_methods(loss: str, dim: int, model: EmbeddingNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, nn.Module]:
    def embed_training_set(**_):
        with torch.no_grad():
            return model(images), labels

    methods = {}
    for name in METHODS:
        spec = registry.METHODS[name]
        if not spec.is_compatible(loss):
            continue
        torch.manual_seed(0)
        context = MethodContext(
            CLASSES, dim, 10, torch.Generator().manual_seed(0), embed_training_set, torch.device("cpu"), model.embedding
        )
        # Each method on the loss params its runs use (e.g. symm's unit form of n_pairs and angular).
        base_loss = build_loss(loss, registry.loss_params(loss, filled({}), name), CLASSES, dim)
        method = registry.load_object(spec.module)(base_loss, spec.resolve(), context)
        method.on_epoch_start(1)  # past IAA's warm-up: statistics estimated, synthesis on (not timed)
        methods[name] = method
    return methods


def time_steps(model: nn.Module, methods: dict[str, nn.Module], images, labels, steps: int) -> tuple[dict, dict]:
    """(median seconds per step, loss of the first step) per method, timed round-robin."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    first_loss: dict[str, float] = {}
    for rep in range(steps + WARM_UP_ROUNDS):
        for name, method in methods.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            features = model.trunk(images)  # as the training loop: SGAR synthesises in these features
            loss = method(model.embedding(features), labels, features=features)
            loss.backward()
            elapsed = time.perf_counter() - start
            first_loss.setdefault(name, float(loss.detach()))
            if rep >= WARM_UP_ROUNDS:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}, first_loss


def measure(config: str, threads: int = 1) -> pd.DataFrame:
    """One row per (backbone, loss, method) of ``config``; the machine facts are taken first."""
    torch.set_num_threads(threads)
    facts = machine_facts()
    setup = CONFIGS[config]
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    rows = []
    for backbone, steps in setup["steps"].items():
        shape, dim = BACKBONES[backbone]
        torch.manual_seed(0)
        model = make_backbone(backbone, dim)
        model.train()
        images = torch.randn(len(labels), *shape, generator=torch.Generator().manual_seed(1))
        for loss in setup["losses"]:
            methods = build_methods(loss, dim, model, images, labels)
            medians, first_loss = time_steps(model, methods, images, labels, steps)
            for name, seconds in medians.items():
                rows.append(
                    dict(config=config, backbone=backbone, batch="x".join(map(str, images.shape)), embedding_dim=dim,
                         loss=loss, method=name, timed_steps=steps, first_loss=first_loss[name],
                         step_ms=seconds * 1000, baseline_ms=medians["baseline"] * 1000,
                         ratio_to_baseline=seconds / medians["baseline"], **facts)
                )  # fmt: skip
                print(f"{backbone} | {loss} | {name} | {seconds * 1000:.1f} ms | {rows[-1]['ratio_to_baseline']:.3f}", flush=True)
    return pd.DataFrame(rows)


def render(frame: pd.DataFrame) -> str:
    """BENCHMARKS.md: baseline ms and each method's ratio to it, per backbone and loss."""
    frame = frame[frame.config == "default"]
    if frame.empty:
        return "Not measured yet: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_method_step.py --write` measures the default configuration and writes it here.\n"
    methods = [m for m in METHODS if m != "baseline" and m in set(frame.method)]
    lines = [
        f"Measured {facts_line(frame.iloc[0])}; median over the timed steps, ratio to `baseline` of the same run.",
        "",
        "| backbone | batch, embedding | loss | timed steps | baseline ms | " + " | ".join(methods) + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(methods),
    ]
    for (backbone, loss), part in frame.groupby(["backbone", "loss"], sort=False):
        ratios = part.set_index("method")["ratio_to_baseline"]
        first = part.iloc[0]
        cells = [f"{ratios[m]:.3f}" if m in ratios else "—" for m in methods]
        lines.append(
            f"| {backbone} | {first['batch']}, {int(first['embedding_dim'])}-d | {loss} | {int(first['timed_steps'])} | "
            f"{first['baseline_ms']:.1f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "(`—`: the method does not work with that loss and is rejected at config validation.)", ""]
    for backbone, part in frame[frame.method != "baseline"].groupby("backbone", sort=False):
        above = part[part.ratio_to_baseline > GOAL]
        if above.empty:
            lines.append(f"- {backbone}: every method within the goal (≤ {GOAL:.2f}×).")
        else:
            listed = ", ".join(f"{r.method} + {r.loss} ({r.ratio_to_baseline:.3f}×)" for r in above.itertuples())
            lines.append(f"- {backbone}: above the goal (≤ {GOAL:.2f}×): {listed}; the others within it.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--write", action="store_true", help="render the BENCHMARKS.md block from the results")
    args = parser.parse_args()

    frame = measure(args.config, args.threads)
    docblocks.record_rows(args.out, frame, ["config"], float_format="%.6g", order=list(CONFIGS))
    if args.write:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render})


if __name__ == "__main__":
    main()
