"""What exists: the datasets, backbones, base losses and methods dmlsynth knows.

Every table maps a name (as written in params.yaml) to a spec whose code is
named by an import path and loaded only when used. Config validation and
Snakemake's DAG building read these tables without importing torch.

A new dataset, backbone, loss or method is added here and nowhere else: the
config schema, the Snakemake job matrix and the README's compatibility table
are all derived from these tables.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Mapping


def load_object(path: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    prepare: str  # "module:function"; prepare(settings, out_dir, raw_dir, log) -> manifest path
    num_classes: int
    train_classes: int
    image_mode: str  # "L" (grayscale) or "RGB"
    default_backbone: str
    default_embedding_dim: int
    default_image_size: int
    description: str
    # What prepare() leaves in {paths.data}/{name}/ (versioned by DVC).
    outputs: tuple[str, ...] = ("manifest.csv", "images")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: str  # "module:function"; build(embedding_dim, pretrained, in_channels) -> nn.Module
    description: str


@dataclass(frozen=True)
class LossSpec:
    name: str
    pair_based: bool  # operates on pairs of embeddings (vs proxies)
    defaults: Mapping[str, Any]
    description: str


@dataclass(frozen=True)
class MethodSpec:
    name: str
    module: str  # "module:Class"; Class(base_loss, params, context) is an nn.Module
    description: str
    # Base losses the method makes sense with; None means every loss.
    compatible_losses: frozenset[str] | None = None
    # JSON schema (properties) and defaults of the method's own params.
    params_schema: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Name of the generated image set mixed into training (data-level methods),
    # None for methods that work on embeddings only.
    synthetic_images: str | None = None

    def is_compatible(self, loss: str) -> bool:
        return self.compatible_losses is None or loss in self.compatible_losses


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="digits",
            prepare="dmlsynth.data.digits:prepare",
            num_classes=10,
            train_classes=5,
            image_mode="L",
            default_backbone="small_cnn",
            default_embedding_dim=64,
            default_image_size=8,
            description="UCI handwritten digits shipped inside scikit-learn (1,797 8x8 images); 0-4 train, 5-9 test",
        ),
        DatasetSpec(
            name="cub200",
            prepare="dmlsynth.data.cub:prepare",
            num_classes=200,
            train_classes=100,
            image_mode="RGB",
            default_backbone="resnet50",
            default_embedding_dim=512,
            default_image_size=224,
            description="CUB-200-2011 birds (11,788 images, downloaded from Caltech); classes 1-100 train, 101-200 test",
            outputs=("manifest.csv", "extracted", "class_attributes.csv"),
        ),
        DatasetSpec(
            name="cars196",
            prepare="dmlsynth.data.cars:prepare",
            num_classes=196,
            train_classes=98,
            image_mode="RGB",
            default_backbone="resnet50",
            default_embedding_dim=512,
            default_image_size=224,
            description="Cars-196 (16,185 images; mirror URL or files placed by hand); classes 1-98 train, 99-196 test",
            outputs=("manifest.csv", "extracted"),
        ),
    ]
}

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("small_cnn", "dmlsynth.models:small_cnn", "3-block CNN for small images (embedded default)"),
        BackboneSpec(
            "resnet50",
            "dmlsynth.models:resnet50",
            "torchvision ResNet-50, frozen BatchNorm, avg+max pooling, linear embedding",
        ),
    ]
}

LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        LossSpec(
            "multi_similarity",
            True,
            {"alpha": 2.0, "beta": 50.0, "base": 0.5, "miner_epsilon": 0.1},
            "MultiSimilarityLoss + MultiSimilarityMiner",
        ),
        LossSpec(
            "proxy_anchor",
            False,
            {"margin": 0.1, "alpha": 32.0, "proxy_lr_multiplier": 100.0},
            "ProxyAnchorLoss (proxies trained with a larger learning rate)",
        ),
        LossSpec(
            "contrastive",
            True,
            {"pos_margin": 0.8, "neg_margin": 0.5},
            "ContrastiveLoss on cosine similarity",
        ),
        LossSpec("triplet", True, {"margin": 0.1}, "TripletMarginLoss over all triplets of the batch"),
    ]
}

PAIR_BASED_LOSSES = frozenset(name for name, spec in LOSSES.items() if spec.pair_based)

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec(
            name="baseline",
            module="dmlsynth.methods.baseline:Baseline",
            description="the base loss alone, no synthetic samples",
        ),
        MethodSpec(
            name="symm",
            module="dmlsynth.methods.symmetric:SymmetricalSynthesis",
            description="Symmetrical Synthesis: reflected same-class pairs + hardest negative pair mining",
            compatible_losses=PAIR_BASED_LOSSES,
            params_schema={
                "synthesis": {"type": "boolean", "description": "false: the base loss alone (ablation)"},
            },
            defaults={"synthesis": True},
        ),
        MethodSpec(
            name="iaa",
            module="dmlsynth.methods.iaa:IntraClassAdaptiveAugmentation",
            description="IAA: Gaussian synthetic embeddings with neighbor-corrected class variances",
            params_schema={
                "num_synthetic": {"type": "integer", "minimum": 0, "description": "M synthetic samples per original"},
                "lambda": {"type": "number", "minimum": 0, "description": "variance scale λ (annealed)"},
                "beta": {"type": "number", "minimum": 0},
                "gamma": {"type": "number", "minimum": 0, "maximum": 1},
                "k": {"type": "integer", "minimum": 1, "description": "neighbour classes K (capped at the candidates)"},
                "sigma_m": {"type": "number", "exclusiveMinimum": 0},
                "sigma_cv": {"type": "number", "exclusiveMinimum": 0},
                "tau": {"type": "number", "minimum": 0, "description": "classes with n <= tau are corrected"},
                "update_every": {"type": "integer", "minimum": 1, "description": "epochs between re-estimates"},
                "warmup_epochs": {"type": "integer", "minimum": 0},
                "neighbor_correction": {"type": "boolean"},
                "momentum": {"type": "number", "minimum": 0, "maximum": 1, "description": "weight of the old estimate"},
            },
            defaults={
                "num_synthetic": 3,
                "lambda": 0.8,
                "beta": 0.1,
                "gamma": 0.1,
                "k": 25,
                "sigma_m": 1.0,
                "sigma_cv": 1.0,
                "tau": 40,
                "update_every": 2,
                "warmup_epochs": 1,
                "neighbor_correction": True,
                "momentum": 0.5,
            },
        ),
        MethodSpec(
            name="sgar",
            module="dmlsynth.methods.sgar:GradedRanking",
            description="SGAR: ranking loss keeping graded synthetic positives in order",
            params_schema={
                "steps": {"type": "integer", "minimum": 1, "description": "J graded samples per pair"},
                "delta": {"type": "number", "exclusiveMinimum": 0},
                "margin": {"type": "number", "minimum": 0},
                "weight": {"type": "number", "minimum": 0, "description": "0: the base loss alone"},
            },
            defaults={"steps": 4, "delta": 0.1, "margin": 0.01, "weight": 1.0},
        ),
        # BLenDeR (METHODS.md §7) works on the data: real images plus generated images of the same
        # class (dmlsynth.data.synthetic.mix_synthetic), trained with the base loss alone.
        *[
            MethodSpec(
                name=name,
                module="dmlsynth.methods.baseline:Baseline",
                description=description,
                params_schema={"synthetic_per_real": {"type": "number", "minimum": 0}},
                defaults={"synthetic_per_real": 0.5},
                synthetic_images=image_set,
            )
            for name, image_set, description in [
                ("blender", "blender", "BLenDeR: diffusion images from blended attribute prompts, union and intersection mixed"),
                ("blender_union", "union", "BLenDeR ablation: union operator only"),
                ("blender_intersection", "intersection", "BLenDeR ablation: intersection operator only"),
                ("sd_plain", "plain", "ablation: one class prompt, ordinary classifier-free guidance, same image budget"),
            ]
        ],
    ]
}


def method_params(spec: MethodSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``config['method_params'][name]``."""
    params = dict(spec.defaults)
    params.update((config.get("method_params") or {}).get(spec.name) or {})
    return params


def loss_params(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(LOSSES[name].defaults)
    params.update((config.get("loss_params") or {}).get(name) or {})
    return params




def compatibility_table() -> str:
    """The README's method x loss table (markdown), derived from the registry."""
    losses = list(LOSSES)
    lines = ["| method | " + " | ".join(f"`{l}`" for l in losses) + " |", "|---|" + "---|" * len(losses)]
    for name, spec in METHODS.items():
        cells = ["yes" if spec.is_compatible(loss) else "—" for loss in losses]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
