"""Time of one training step (backbone forward + method loss + backward) per method vs ``baseline``.

Every method gets the same batch, the same backbone weights and the same
base loss; methods are timed round-robin (so load from other processes hits
all of them alike) and the median over repetitions is reported, with the
ratio to ``baseline`` measured in the same run. Two backbones show how the
overhead scales: the embedded default's ``small_cnn`` on a digits batch
(80 x 1 x 8 x 8, 64-d) and a torchvision ResNet-18 on 80 x 3 x 64 x 64
images (512-d), where the backbone dominates as it does on real datasets.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_method_step.py [--reps 15] [--small-reps 150] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dmlsynth import registry
from dmlsynth.losses import build_loss
from dmlsynth.methods.base import MethodContext
from dmlsynth.models import EmbeddingNet, small_cnn

METHODS = ["baseline", "symm", "iaa", "sgar"]
CLASSES, PER_CLASS = 5, 16


def resnet18(embedding_dim: int) -> EmbeddingNet:
    from torchvision.models import resnet18 as tv_resnet18

    trunk = tv_resnet18(weights=None)
    trunk.fc = nn.Identity()
    return EmbeddingNet(trunk, nn.Linear(512, embedding_dim))


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
        method = registry.load_object(spec.module)(build_loss(loss, {}, CLASSES, dim), spec.resolve(), context)
        method.on_epoch_start(1)  # past IAA's warm-up: statistics estimated, synthesis on (not timed)
        methods[name] = method
    return methods


def time_steps(model: nn.Module, methods: dict[str, nn.Module], images, labels, reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    for rep in range(reps + 2):  # two warm-up rounds
        for name, method in methods.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            features = model.trunk(images)
            loss = method(model.embedding(features), labels, features=features)
            loss.backward()
            elapsed = time.perf_counter() - start
            if rep >= 2:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="timed steps per method on resnet18")
    parser.add_argument("--small-reps", type=int, default=150, help="timed steps per method on small_cnn (cheap, noisier)")
    parser.add_argument("--backbones", nargs="+", default=["small_cnn", "resnet18"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--losses", nargs="+", default=["multi_similarity", "contrastive", "triplet", "proxy_anchor"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    setups = [
        ("small_cnn", "small_cnn, digits batch 80x1x8x8, 64-d", lambda: small_cnn(64), (1, 8, 8), 64, args.small_reps),
        ("resnet18", "resnet18, batch 80x3x64x64, 512-d", lambda: resnet18(512), (3, 64, 64), 512, args.reps),
    ]
    print(f"torch {torch.__version__}, {args.threads} thread(s), median over timed steps, batch {len(labels)}")
    print("backbone | loss | method | step ms | ratio to baseline | timed steps")
    for key, title, make, shape, dim, reps in setups:
        if key not in args.backbones:
            continue
        torch.manual_seed(0)
        model = make()
        model.train()
        images = torch.randn(len(labels), *shape, generator=torch.Generator().manual_seed(1))
        for loss in args.losses:
            methods = build_methods(loss, dim, model, images, labels)
            medians = time_steps(model, methods, images, labels, reps)
            for name, seconds in medians.items():
                print(f"{title} | {loss} | {name} | {seconds * 1000:.1f} | {seconds / medians['baseline']:.3f} | {reps}", flush=True)


if __name__ == "__main__":
    main()
