"""The price of one instruction set for the numbers: a training step pinned to AVX2 vs the CPU's own kernels.

``reproducibility.cpu_isa: avx2`` (the default) caps PyTorch, oneDNN, MKL and OpenBLAS at AVX2 so that the
same params and seed give the same digits on every x86-64 CPU of the last decade (dmlsynth.cpu_isa);
``native`` lets them use the machine's best (AVX-512 where there is one). This script times one training
step (backbone forward, the baseline's multi-similarity loss, backward, Adam step) under each level, each
in a process of its own (the variables are read when the libraries load), alternating the levels over
rounds so that load from other processes hits both alike; the median over the timed steps is reported with
the ratio pinned / native. Two backbones: the embedded default's ``small_cnn`` on a digits batch
(80 x 1 x 8 x 8, 64-d) and a torchvision ResNet-18 on 80 x 3 x 64 x 64 images (512-d).

Each row also records torch's dispatch under the level and the parameters' sum after the timed steps (hex):
on a CPU with AVX-512 the two levels give other bits, on an AVX2-only CPU the same.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_cpu_isa.py --write

Results go to ``benchmarks/results/cpu_isa.csv`` (rows of another CPU are kept); ``--write`` renders the
BENCHMARKS.md block from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SCRIPT = "benchmarks/bench_cpu_isa.py"
RESULTS = "benchmarks/results/cpu_isa.csv"
LEVELS = ("avx2", "native")
CLASSES, PER_CLASS = 5, 16
BACKBONES = {"small_cnn": ((1, 8, 8), 64, 100), "resnet18": ((3, 64, 64), 512, 8)}  # shape, dim, timed steps
WARM_UP = 2
ROUNDS = 3


def child(backbone: str, steps: int) -> dict:
    """In a process whose environment holds the level: ``steps`` timed training steps after a warm-up."""
    import torch
    from torch import nn

    from dmlsynth import registry
    from dmlsynth.config import filled
    from dmlsynth.losses import build_loss
    from dmlsynth.models import EmbeddingNet, small_cnn

    torch.set_num_threads(1)
    shape, dim, _ = BACKBONES[backbone]
    torch.manual_seed(0)
    if backbone == "small_cnn":
        model = small_cnn(dim)
    else:
        from torchvision.models import resnet18

        trunk = resnet18(weights=None)
        trunk.fc = nn.Identity()
        model = EmbeddingNet(trunk, nn.Linear(512, dim))
    model.train()
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    images = torch.randn(len(labels), *shape, generator=torch.Generator().manual_seed(1))
    loss_fn = build_loss("multi_similarity", registry.loss_params("multi_similarity", filled({}), "baseline"), CLASSES, dim)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for step in range(WARM_UP + steps):
        start = time.perf_counter()
        loss = loss_fn(model(images), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step >= WARM_UP:
            times.append(time.perf_counter() - start)
    total = float(sum(p.detach().double().sum() for p in model.parameters()))
    return {"times": times, "dispatch": torch.backends.cpu.get_cpu_capability(), "params_sum": total.hex()}


def run_level(level: str, backbone: str, steps: int) -> dict:
    from dmlsynth import cpu_isa

    variables = {n for v in cpu_isa.VARIABLES.values() for n in v}
    env = {k: v for k, v in os.environ.items() if k not in variables}
    env.update(cpu_isa.environment(level))
    env["PYTHONPATH"] = str(ROOT / "src")
    command = [sys.executable, __file__, "--child", backbone, "--steps", str(steps)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure() -> "pd.DataFrame":
    import pandas as pd

    from dmlsynth.machine import machine_facts

    facts = machine_facts()
    rows = []
    for backbone, (shape, dim, steps) in BACKBONES.items():
        times = {level: [] for level in LEVELS}
        seen = {}
        for _ in range(ROUNDS):
            for level in LEVELS:
                out = run_level(level, backbone, steps)
                times[level] += out["times"]
                seen[level] = out
        medians = {level: statistics.median(times[level]) for level in LEVELS}
        for level in LEVELS:
            rows.append(
                dict(backbone=backbone, batch=f"{CLASSES * PER_CLASS}x{'x'.join(map(str, shape))}", embedding_dim=dim,
                     level=level, dispatch=seen[level]["dispatch"], timed_steps=len(times[level]),
                     step_ms=1000 * medians[level], ratio_to_native=medians[level] / medians["native"],
                     params_sum=seen[level]["params_sum"], **facts)
            )  # fmt: skip
            print(f"{backbone} | {level} ({seen[level]['dispatch']}) | {1000 * medians[level]:.2f} ms", flush=True)
    return pd.DataFrame(rows)


def render(frame) -> str:
    """BENCHMARKS.md: per CPU and backbone, the step time under each level and the ratio pinned / native."""
    from dmlsynth.machine import facts_line

    lines = []
    for cpu, part in frame.groupby("cpu", sort=False):
        lines += [
            f"{cpu}: measured {facts_line(part.iloc[0])}; median over {int(part.iloc[0]['timed_steps'])} or more timed "
            "steps, the levels alternated in processes of their own.",
            "",
            "| backbone | batch, embedding | native dispatch | native ms | avx2 ms | avx2 / native | same bits |",
            "|---|---|---|---:|---:|---:|---|",
        ]
        for backbone, rows in part.groupby("backbone", sort=False):
            by = rows.set_index("level")
            lines.append(
                f"| {backbone} | {by.loc['native', 'batch']}, {int(by.loc['native', 'embedding_dim'])}-d "
                f"| {by.loc['native', 'dispatch']} | {by.loc['native', 'step_ms']:.2f} | {by.loc['avx2', 'step_ms']:.2f} "
                f"| {by.loc['avx2', 'ratio_to_native']:.2f} | {'yes' if by.loc['avx2', 'params_sum'] == by.loc['native', 'params_sum'] else 'no'} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=sorted(BACKBONES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / RESULTS)
    parser.add_argument("--write", action="store_true", help="render the BENCHMARKS.md block from the results")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    from dmlsynth import docblocks

    frame = measure()
    docblocks.record_rows(args.out, frame, ["cpu"], float_format="%.6g")
    if args.write:
        docblocks.write_blocks(ROOT, SCRIPT, args.out, {"render": render})


if __name__ == "__main__":
    main()
