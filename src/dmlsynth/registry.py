"""What exists: the datasets, backbones, base losses and methods dmlsynth knows.

Every table maps a name (as written in params.yaml) to a spec whose code is
named by an import path and loaded only when used. Config validation and
Snakemake's DAG building read these tables without importing torch.

A new dataset, backbone, loss or method is added here and nowhere else: the
config schema, the Snakemake job matrix and the compatibility table of docs/configuration.md
are all derived from these tables.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from dmlsynth import defaults as _defaults
from dmlsynth import layout
from dmlsynth import plugins as _plugins


def module_of(path: str) -> str:
    """The module of an import path ``"package.module:attribute"``."""
    return path.partition(":")[0]


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
    outputs: tuple[str, ...] = (layout.MANIFEST, layout.IMAGES)
    # Short side of the resized JPEG copy training reads (dmlsynth.data.image_cache); 0: the originals.
    default_cache_short_side: int = 0
    # BLenDeR: the generator used unless generation.<name>.generator says otherwise, and the
    # builder of the per-class prompts ("module:function"; f(train_frame, search_dirs) -> classes).
    default_generator: str = "stable-diffusion"
    prompts: str = "dmlsynth.generation.prompts:generic_prompts"
    # The manifest has each image's annotated bounding box (box_* columns; dataset_settings.bounding_boxes).
    bounding_boxes: bool = False
    # A dataset declared in params.yaml (dmlsynth.data.declared): the digest of its files' listing (or CSV),
    # so an added or changed image re-runs its preparation and what follows, and the images of its smallest
    # training class (config validation checks training.m_per_class against it). Left out of the identity
    # of the other entries while unset.
    contents: str = field(default="", metadata={"identity": "omit_if_default"})
    smallest_class: int = field(default=0, metadata={"identity": "omit_if_default"})


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: str  # "module:function"; build(embedding_dim, pretrained, in_channels) -> nn.Module
    description: str


@dataclass(frozen=True)
class LossSpec:
    name: str
    # Takes mined pairs of samples against a reference set (pml's indices_tuple and ref_emb); the others
    # (proxies, whole-batch losses) get synthetic samples as extra batch samples.
    pair_based: bool
    defaults: Mapping[str, Any]
    description: str
    # Its negative terms are exactly the negative pairs of an indices_tuple (what `symm`'s hardest
    # negative pair needs); AngularLoss, e.g., takes the positive pairs and uses every other-class sample.
    negative_pairs: bool = False
    # A plugin's loss (dmlsynth.plugins): "module:function", build(params, num_classes, embedding_dim) ->
    # dmlsynth.losses.BaseLoss; None for the losses built into dmlsynth.losses.build_loss. Left out of the
    # spec's identity while None (provenance.stable_repr), so the built-in entries keep theirs.
    build: str | None = field(default=None, metadata={"identity": "omit_if_default"})
    # A plugin's loss: the JSON schema (properties) of its params (loss_params.<name>); the built-in losses'
    # are in params.schema.yaml.
    params_schema: Mapping[str, Any] = field(default_factory=dict, metadata={"identity": "omit_if_default"})


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
    # Params that switch the method off: it must then be exactly `baseline` (a contract test checks it).
    off_params: Mapping[str, Any] = field(default_factory=dict)
    # Named sets of defaults chosen by the param `variant` (e.g. IAA's paper vs official code); a key the
    # config sets itself wins over its variant's value.
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Loss params the method's runs need with a base loss, over loss_params (e.g. a loss form the
    # method is built on). They apply to the method's *control* too (see control_label): the control
    # differs from the method only in the synthesis. config's method_loss_params win over them.
    loss_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Of those, the loss params the method cannot work without: validation refuses a config whose
    # method_loss_params change them (loss_param_problems).
    required_loss_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Loss params a variant's runs need, per variant and loss (over loss_params; its control trains them
    # too). A variant listed here works only with the losses it lists, and needs their params as given.
    variant_loss_params: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

    def is_compatible(self, loss: str) -> bool:
        return self.compatible_losses is None or loss in self.compatible_losses

    def resolve(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The method's params outside a config (a test, ``dmlsynth check-method``): ``given`` filled with its
        variant's defaults, then its own, by the pass that fills a config's (:mod:`dmlsynth.defaults`)."""
        params = dict(given or {})
        variant = params.get("variant", self.defaults.get("variant"))
        if self.variants and variant not in self.variants:
            raise ValueError(f"method {self.name!r} has no variant {variant!r}; known: {', '.join(sorted(self.variants))}")
        _defaults.fill(_defaults.params_node(self.params_schema, self.defaults, self.variants), params)
        return params


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
            default_generator="embedded",
            prompts="dmlsynth.generation.prompts:digits_prompts",
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
            outputs=(layout.MANIFEST, layout.EXTRACTED, layout.CLASS_ATTRIBUTES),
            default_cache_short_side=256,
            prompts="dmlsynth.generation.prompts:cub_prompts",
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
            outputs=(layout.MANIFEST, layout.EXTRACTED),
            default_cache_short_side=256,
            prompts="dmlsynth.generation.prompts:cars_prompts",
            bounding_boxes=True,
        ),
        # The two larger benchmarks of IAA, Symmetrical Synthesis and SGAR (config/protocols/). Their splits are
        # the datasets' own (not the halving of the class ids), and In-Shop tests queries against a gallery.
        DatasetSpec(
            name="sop",
            prepare="dmlsynth.data.sop:prepare",
            num_classes=22_634,
            train_classes=11_318,
            image_mode="RGB",
            default_backbone="resnet50",
            default_embedding_dim=512,
            default_image_size=224,
            description="Stanford Online Products (120,053 images, Stanford's zip); 11,318 products train, 11,316 test",
            outputs=(layout.MANIFEST, layout.EXTRACTED),
            default_cache_short_side=256,
        ),
        DatasetSpec(
            name="inshop",
            prepare="dmlsynth.data.inshop:prepare",
            num_classes=7_982,
            train_classes=3_997,
            image_mode="RGB",
            default_backbone="resnet50",
            default_embedding_dim=512,
            default_image_size=224,
            description="In-Shop Clothes Retrieval (52,712 images; files placed by hand); 3,997 items train, query/gallery test",
            outputs=(layout.MANIFEST, layout.EXTRACTED),
            default_cache_short_side=256,
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
        BackboneSpec(
            "googlenet",
            "dmlsynth.models:googlenet",
            "torchvision GoogLeNet (Inception v1), frozen BatchNorm, average pooling, linear embedding",
        ),
        BackboneSpec(
            "bn_inception",
            "dmlsynth.models:bn_inception",
            "BN-Inception (published architecture; ImageNet weights from a checked file), frozen BatchNorm, avg+max pooling",
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
            negative_pairs=True,
        ),
        LossSpec(
            "proxy_anchor",
            False,
            # projection_head: the loss on SGAR's projection of the embedding (dmlsynth.losses.ProjectionHead).
            {"margin": 0.1, "alpha": 32.0, "proxy_lr_multiplier": 100.0, "projection_head": False},
            "ProxyAnchorLoss (proxies trained with a larger learning rate)",
        ),
        LossSpec(
            "contrastive",
            True,
            {"pos_margin": 0.8, "neg_margin": 0.5, "reduction": "mean_nonzero"},
            "ContrastiveLoss on cosine similarity",
            negative_pairs=True,
        ),
        LossSpec(
            "triplet", True, {"margin": 0.1}, "TripletMarginLoss over all triplets of the batch", negative_pairs=True
        ),
        # The losses Symmetrical Synthesis reports its headline numbers with (Gu & Ko, AAAI 2020). `pairs`
        # picks the form (PAIR_FORMS): pytorch-metric-learning's loss, or the softmax over every same-class pair
        # unit of the batch (dmlsynth.losses.PairUnitSoftmaxLoss, the official Symmetrical Synthesis code's
        # npairs_loss / angular_loss); `normalize`: L2-normalised embeddings, as pml's losses use them.
        LossSpec(
            "n_pairs",
            False,
            {"l2_reg": 0.002, "pairs": "one_per_class", "normalize": True},
            "N-pair + the N-pair paper's L2 penalty: pml NPairsLoss (one pair per class) or the softmax over every pair unit",
        ),
        LossSpec(
            "angular",
            True,
            {"alpha": 45.0, "pairs": "every_pair", "normalize": True, "l2_reg": 0.0},
            "angular loss (alpha in degrees): pml AngularLoss on every positive pair, or the softmax over every pair unit",
        ),
        # The other two losses of the Symmetrical Synthesis paper's tables (Gu & Ko, AAAI 2020, Tables 1-3).
        # Semi-hard triplet mines its own triplets in whatever batch it gets, so it is not pair-based in the
        # sense the methods need (IAA's synthetic samples join its batch), and it takes no negative pairs
        # (symm's hardest negative pair would replace the semi-hard selection): symm does not use it.
        LossSpec(
            "semihard_triplet",
            False,
            {"margin": 0.2},
            "TripletMarginLoss on the semi-hard triplets of TripletMarginMiner (FaceNet's rule and margin 0.2)",
        ),
        # Lifted structure (Song et al., CVPR 2016): its negative terms are every negative of the two points
        # of a positive pair, not a given negative pair, so symm does not use it either.
        LossSpec(
            "lifted_structure",
            True,
            {"neg_margin": 1.0, "pos_margin": 0.0},
            "LiftedStructureLoss (Song et al. 2016): per positive pair, log-sum-exp over both points' negatives",
        ),
        # Bhatnagar & Ahuja, CVPR 2025 (dmlsynth.losses.PotentialFieldLoss): every pair of the batch and
        # the proxies, no miner; not pair-based in the sense the methods need (it takes no indices_tuple).
        LossSpec(
            "potential_field",
            False,
            {"proxies_per_class": 15, "alpha": 4.0, "delta": 0.2, "proxy_lr_multiplier": 100.0},
            "Potential-Field loss: decaying attraction/repulsion fields of embeddings and proxies",
        ),
    ]
}

# The forms of the losses with a loss param `pairs` (the first is the default; docs/methods.md §3). pml's own
# forms stay the defaults: NPairsLoss's one pair per class is Sohn's N-pair batch (N pairs of N classes),
# AngularLoss is Wang et al.'s loss over the batch's positive pairs; `units` is the official Symmetrical
# Synthesis code's form, which `symm` builds on (its MethodSpec.loss_params).
PAIR_FORMS: Mapping[str, tuple[str, ...]] = {"n_pairs": ("one_per_class", "units"), "angular": ("every_pair", "units")}

PAIR_BASED_LOSSES = frozenset(name for name, spec in LOSSES.items() if spec.pair_based)
NEGATIVE_PAIR_LOSSES = frozenset(name for name, spec in LOSSES.items() if spec.negative_pairs)

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
            module="dmlsynth.methods.symm:SymmetricalSynthesis",
            description="Symmetrical Synthesis: reflected same-class pairs + hardest negative pair mining",
            # n_pairs and angular: the official code's softmax over the pair units (loss param pairs: units).
            compatible_losses=NEGATIVE_PAIR_LOSSES | {"n_pairs", "angular"},
            params_schema={
                "synthesis": {"type": "boolean", "description": "false: the base loss alone (ablation)"},
                "candidates": {
                    "enum": ["by_loss", "official", "all", "anchor"],
                    "description": "hardest-pair search: official code's 6 slot pairs, all 16, anchor vs 4 (paper's "
                    "figure), or by_loss: anchor for triplet, official for the others",
                },
            },
            defaults={"synthesis": True, "candidates": "by_loss"},
            off_params={"synthesis": False},
            # The official code (clovaai/symmetrical-synthesis, train.py defaults) runs N-pair and angular on
            # un-normalised features with the L2 penalty 0.002, each over every (anchor, positive) unit of its
            # batch; its control trains the same form (`angular: {normalize: true, l2_reg: 0}` in
            # method_loss_params.symm is the normalised option).
            loss_params={
                "n_pairs": {"pairs": "units", "normalize": False},
                "angular": {"pairs": "units", "normalize": False, "l2_reg": 0.002},
            },
            required_loss_params={"n_pairs": {"pairs": "units"}, "angular": {"pairs": "units"}},
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
                "k": {"type": "integer", "minimum": 1, "description": "neighbor classes K (capped at the candidates)"},
                "sigma_m": {"type": "number", "exclusiveMinimum": 0},
                "sigma_cv": {"type": "number", "exclusiveMinimum": 0},
                "tau": {"type": "number", "minimum": 0, "description": "classes with n <= tau are corrected"},
                "update_every": {"type": "integer", "minimum": 1, "description": "epochs between re-estimates"},
                "variant": {
                    "enum": ["paper", "official"],
                    "description": "defaults of the keys below: the paper's rule or the released code's",
                },
                "start_fraction": {
                    "type": "number", "minimum": 0, "maximum": 1,
                    "description": "synthesis starts once this fraction of training is done (and after warmup_epochs)",
                },
                "warmup_epochs": {"type": "integer", "minimum": 0},
                "statistics_update": {
                    "enum": ["momentum", "count_weighted"],
                    "description": "momentum: m·old + (1−m)·fresh; count_weighted: fresh weight ≥ 1−m plus cross term",
                },
                "momentum": {"type": "number", "minimum": 0, "maximum": 1, "description": "weight of the old estimate"},
                "estimation_images": {
                    "enum": ["centre_crop", "augmented"],
                    "description": "class statistics from the evaluation view or the training augmentation",
                },
                "copy_spread": {
                    "enum": ["equal", "repeated_root"],
                    "description": "std of copy k: √λ·Σ^½ for all (equal) or √λ·Σ^(1/2^k) (repeated_root)",
                },
                "neighbor_correction": {"type": "boolean"},
                "triplet_negatives": {
                    "enum": ["hardest", "all"],
                    "description": "triplet: each anchor's hardest negative candidate, or every negative",
                },
            },
            defaults={
                "variant": "paper",
                "num_synthetic": 3,
                "lambda": 0.8,
                "beta": 0.1,
                "gamma": 0.1,
                "k": 25,
                "sigma_m": 1.0,
                "sigma_cv": 1.0,
                "tau": 40,
                "triplet_negatives": "hardest",
            },
            variants={
                # [project definition] where the paper gives no value: warm-up of one epoch, momentum 0.5.
                # The paper re-estimates the class statistics every 4 epochs.
                "paper": {
                    "update_every": 4,
                    "start_fraction": 0.0,
                    "warmup_epochs": 1,
                    "statistics_update": "momentum",
                    "momentum": 0.5,
                    "estimation_images": "centre_crop",
                    "copy_spread": "equal",
                    "neighbor_correction": True,
                },
                # darkpromise98/IAA run.py / intra.py defaults (start_epoch 30 of 100, momentum 0.2,
                # update_every_M_epoch 2).
                "official": {
                    "update_every": 2,
                    "start_fraction": 0.3,
                    "warmup_epochs": 0,
                    "statistics_update": "count_weighted",
                    "momentum": 0.2,
                    "estimation_images": "augmented",
                    "copy_spread": "repeated_root",
                    "neighbor_correction": False,
                },
            },
            off_params={"num_synthetic": 0},
        ),
        MethodSpec(
            name="sgar",
            module="dmlsynth.methods.sgar:GradedRanking",
            description="SGAR: ranked synthetic samples at graded intensities (official: Liuzt1999/SCAR's loss; project: before the embedding layer)",
            params_schema={
                "variant": {
                    "enum": ["project", "official", "paper"],
                    "description": "project: graded backbone features, hinge ranking; official: the SCAR code as "
                    "released; paper: the same with graded intensities and every selected sample's proxy term",
                },
                "steps": {"type": "integer", "minimum": 1, "description": "J intensity levels (official: directions N)"},
                "alpha": {
                    "type": "number", "exclusiveMinimum": 0,
                    "description": "project: step per level relative to ‖r‖; official/paper: strength r ((i+1)·r)",
                },
                "margin": {"type": "number", "minimum": 0, "description": "similarity drop required per level (official δ)"},
                "weight": {"type": "number", "minimum": 0, "description": "0: the base loss alone (official λ)"},
                "scale": {"type": "number", "exclusiveMinimum": 0, "description": "official/paper: ranking scale"},
                "gate": {"type": "number", "description": "official/paper: a sample is synthesised when its proxy dot product is >= gate"},
                "pull_scale": {"type": "number", "exclusiveMinimum": 0, "description": "official/paper: proxy-pull scale"},
                "pull_margin": {"type": "number", "description": "official/paper: proxy-pull margin"},
                "rank_ratio": {"type": "number", "minimum": 0, "description": "official/paper: weight of the ranking term"},
                "pull_ratio": {"type": "number", "minimum": 0, "description": "official/paper: weight of the proxy-pull term"},
            },
            defaults={"variant": "project", "steps": 5},
            variants={
                # [project definition] (docs/methods.md §6): the rule benchmarked before the code was read.
                "project": {"alpha": 0.1, "margin": 0.02, "weight": 1.0},
                # Liuzt1999/SCAR train.py:99-125 (N 5, delta 0.11, r 1.0, lam 0.23, gen_mrg 0.05, scale 32,
                # ratio_gen 0.9, ratio_m 0.9); the pull term's scale and margin are the loss's alpha 32 and
                # mrg 0.1 (losses.py:246, train.py:75,81).
                **{
                    name: {
                        "alpha": 1.0, "margin": 0.11, "weight": 0.23, "scale": 32.0, "gate": 0.05,
                        "pull_scale": 32.0, "pull_margin": 0.1, "rank_ratio": 0.9, "pull_ratio": 0.9,
                    }
                    for name in ("official", "paper")
                },
            },
            off_params={"weight": 0.0},
            # The official code's loss (losses.py:256-299) is Proxy-Anchor computed through its head; its
            # gate and pull term use the proxies, so these variants need proxy_anchor (docs/methods.md §6).
            variant_loss_params={name: {"proxy_anchor": {"projection_head": True}} for name in ("official", "paper")},
        ),
        # BLenDeR (docs/methods.md §7) works on the data: real images plus generated images of the same
        # class (dmlsynth.methods.blender), trained with the base loss alone.
        *[
            MethodSpec(
                name=name,
                module="dmlsynth.methods.blender:GeneratedImages",
                description=description,
                params_schema={
                    "synthetic_per_real": {
                        "anyOf": [{"type": "number", "minimum": 0}, {"const": "all"}],
                        "description": "a number x >= 0 (round(x × the class's real images) generated images "
                        "per class, at most all) or all (every generated image of the class, the paper's volume)",
                    }
                },
                # all: the paper adds its whole generated set (docs/methods.md §7); on digits (~180 real
                # images per class, 80 generated) 0.5 would also take all of them.
                defaults={"synthetic_per_real": "all"},
                synthetic_images=image_set,
                off_params={"synthetic_per_real": 0.0},
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


# Entries of installed packages (entry points dmlsynth.datasets, .losses, .methods; dmlsynth.plugins), added
# to the tables above before anything reads them. Loss plugins are neither in PAIR_BASED_LOSSES nor in
# NEGATIVE_PAIR_LOSSES (built-in methods' compatible losses are fixed here); their spec says what they are.
_plugins.install(
    {"datasets": DATASETS, "losses": LOSSES, "methods": METHODS},
    {"datasets": DatasetSpec, "losses": LossSpec, "methods": MethodSpec},
)


# The names the schema allows for tracking.runs and reproducibility.cpu_isa (dmlsynth.cpu_isa); the schema
# says what each means and holds their defaults.
TRACKING_RUNS = ("with_table", "as_evaluated")
CPU_ISA_LEVELS = ("avx2", "native")
# BLenDeR generation (docs/methods.md §7) ------------------------------------------------------


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    load: str  # "module:function"; load(settings, generator_dir) -> dmlsynth.generation.sampler.Components
    trained_here: bool  # trained by the workflow (the train_generator rule) rather than loaded
    description: str


@dataclass(frozen=True)
class ImageSetSpec:
    """One kind of generated training images; a data-level method names the set it trains with."""

    name: str
    operators: Mapping[str, float] | None  # the operator mix; None: generation.<dataset>.operators
    conditions: str  # "attributes" (K blended attribute prompts) or "plain" (the class prompt alone)
    description: str


GENERATORS: dict[str, GeneratorSpec] = {
    spec.name: spec
    for spec in [
        GeneratorSpec(
            "embedded",
            "dmlsynth.generation.embedded:load_embedded_generator",
            True,
            "a small prompt-conditioned pixel diffusion model trained here on the training classes (grayscale)",
        ),
        GeneratorSpec(
            "stable-diffusion",
            "dmlsynth.generation.stable_diffusion:load_stable_diffusion",
            False,
            "Stable Diffusion (model_id: a Hugging Face id or a local diffusers folder)",
        ),
    ]
}

IMAGE_SETS: dict[str, ImageSetSpec] = {
    spec.name: spec
    for spec in [
        ImageSetSpec("blender", None, "attributes", "K blended prompts, the configured union/intersection mix"),
        ImageSetSpec("union", {"union": 1.0}, "attributes", "K blended prompts, union"),
        ImageSetSpec("intersection", {"intersection": 1.0}, "attributes", "K blended prompts, intersection"),
        ImageSetSpec("plain", {"conjunction": 1.0}, "plain", "the class prompt, ordinary classifier-free guidance"),
    ]
}

# generation.<dataset>.filter: which generated images a set keeps (dmlsynth.generation.filtering).
# The paper filters with CLIP but states no threshold or model: both are [project definition]s (their
# defaults are the schema's).
FILTER_SCORERS = ("auto", "clip", "fidelity", "none")
# generation.<dataset>.operators / intersection_rule / guidance_norm: how BLenDeR combines the K guidance
# residuals (dmlsynth.generation.blend; docs/methods.md §7). principal_component is the paper's intersection
# ("a principal component surrogate"); elementwise, the union's formula and the strength control are
# [project definition]s.
BLEND_OPERATORS = ("union", "intersection", "conjunction", "inclusion_exclusion")
INTERSECTION_RULES = ("principal_component", "elementwise")
GUIDANCE_NORMS = ("mean", "none")

# The datasets params.yaml declares (dataset_settings.<name>.source; dmlsynth.data.declared), resolved once at
# config validation and handed to every job in its record (dmlsynth.jobs.Job): the lookups below see them.
_DECLARED: dict[str, DatasetSpec] = {}


def datasets() -> dict[str, DatasetSpec]:
    """Every dataset: the built-in and plugin ones (:data:`DATASETS`) and those the config declares."""
    return {**DATASETS, **_DECLARED}


def dataset(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (KeyError when neither the registry nor the config has it)."""
    return DATASETS[name] if name in DATASETS else _DECLARED[name]


def declare(specs: Iterable[DatasetSpec]) -> None:
    """Make ``specs`` (a config's declared datasets) the declared ones of this process, replacing any before."""
    specs = list(specs)
    clashes = [spec.name for spec in specs if spec.name in DATASETS]
    if clashes:
        raise ValueError(f"datasets {clashes} are built in or come from a plugin: give the declared dataset another name")
    _DECLARED.clear()
    _DECLARED.update((spec.name, spec) for spec in specs)


def declared_records() -> dict[str, dict[str, Any]]:
    """The declared datasets as JSON (a job's record carries them: :func:`declare_records`)."""
    import dataclasses

    return {name: dataclasses.asdict(spec) for name, spec in sorted(_DECLARED.items())}


def declare_records(records: Mapping[str, Mapping[str, Any]]) -> None:
    """Declare the datasets of a job's record (:func:`declared_records`) in the job's process."""
    declare(DatasetSpec(**{**record, "outputs": tuple(record["outputs"])}) for record in records.values())


def dataset_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """``dataset_settings.<dataset>`` of a validated config (its defaults filled by :func:`dmlsynth.config.validate`)."""
    return dict(config["dataset_settings"][dataset])


def method_params(spec: MethodSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """``method_params.<name>`` of a validated config (its defaults and its variant's filled)."""
    return dict(config["method_params"][spec.name])


def loss_params(name: str, config: Mapping[str, Any], method: str | None = None) -> dict[str, Any]:
    """The params of loss ``name``: ``loss_params.<name>`` of a validated config (its defaults filled), then,
    when it is trained under ``method``, the loss params the method's registry entry needs
    (``MethodSpec.loss_params``) and ``config['method_loss_params'][method][name]`` (a method's published
    loss settings, e.g. IAA's Multi-Similarity beta = 40)."""
    params = dict(config["loss_params"][name])
    if method is not None:
        spec = METHODS[method]
        params.update(spec.loss_params.get(name) or {})
        if spec.variant_loss_params:
            params.update(spec.variant_loss_params.get(method_params(spec, config).get("variant"), {}).get(name) or {})
        params.update(((config.get("method_loss_params") or {}).get(method) or {}).get(name) or {})
    return params


def loss_param_problems(
    name: str, params: Mapping[str, Any], method: str | None = None, variant: str | None = None
) -> list[str]:
    """Why the resolved params of loss ``name`` cannot train (under ``method`` and its ``variant``), each with
    how to fix it; empty when they can. Checks what the schema cannot: combinations of keys and a method's needs."""
    problems = []
    needs = METHODS[method].variant_loss_params.get(variant) if method is not None else None
    if needs and name not in needs:
        return [
            f"method {method!r} with variant {variant} works only with loss {', '.join(sorted(needs))} (it uses the "
            f"loss's proxies and projection head); exclude this pair (`exclude: [{{method: {method}, loss: {name}}}]`) "
            f"or choose another variant in method_params.{method}.variant"
        ]
    if name == "angular" and params.get("pairs") == "every_pair" and not params.get("normalize", True):
        problems.append(
            "angular with pairs: every_pair is pytorch-metric-learning's AngularLoss, which works on L2-normalised "
            "embeddings: set normalize: true, or pairs: units for un-normalised features"
        )
    required = dict(METHODS[method].required_loss_params.get(name, {})) if method is not None else {}
    required.update((needs or {}).get(name, {}))
    for key, value in required.items():
        if params.get(key) != value:
            problems.append(
                f"method {method!r} needs {name} with {key}: {_label_value(value)} (got {_label_value(params.get(key))}); "
                f"remove method_loss_params.{method}.{name}.{key}"
            )
    return problems


# Controls (docs/methods.md §1, "Like-for-like comparison") -------------------------------------
#
# A method's delta is taken against its *control*: `baseline` with the same dataset, loss, loss params
# (incl. the form a method builds on), seed, batches and steps — the method with its synthesis switched
# off. Where a method's runs use other loss params than plain `baseline` (IAA's published beta = 40,
# Symmetrical Synthesis's unit-softmax N-pair), the control is a baseline run of its own, named after
# what differs ("baseline+beta=40"); methods that need the same params share it.

BASELINE = "baseline"
CONTROL_SEPARATOR = "+"


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def control_label(config: Mapping[str, Any], method: str, loss: str) -> str:
    """The name of ``method``'s control with ``loss``: ``baseline`` when the method trains with the plain
    loss params, else ``baseline+<key>=<value>...`` for the params that differ (sorted by key)."""
    plain = loss_params(loss, config)
    own = loss_params(loss, config, method)
    changed = sorted(key for key in own if own[key] != plain.get(key))
    return BASELINE + "".join(f"{CONTROL_SEPARATOR}{key}={_label_value(own[key])}" for key in changed)


def is_control_label(label: str) -> bool:
    """Whether ``label`` names a control with other loss params (``baseline+...``), not a method."""
    return label.startswith(BASELINE + CONTROL_SEPARATOR)


def compatibility_table() -> str:
    """docs/configuration.md's method x loss table (markdown), derived from the registry."""
    losses = list(LOSSES)
    lines = ["| method | " + " | ".join(f"`{l}`" for l in losses) + " |", "|---|" + "---|" * len(losses)]
    for name, spec in METHODS.items():
        cells = ["yes" if spec.is_compatible(loss) else "—" for loss in losses]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
