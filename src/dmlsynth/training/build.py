"""Everything one training run is made of, built from its resolved params.

:func:`build_run` follows these steps, in this order (the order fixes how the
seeded random streams are consumed, so it is part of reproducibility):

1. read the manifest, hold out the validation classes (if any) and mix in
   generated images for data-level methods; fix the step budget from the *real*
   training images (generated images change what a batch holds, never how many
   steps a run makes: a method and its control make the same steps);
2. seed every random stream from the run's seed;
3. make the image datasets (train with augmentation, train without, test),
   reading the resized copy of a photo dataset where it has one;
4. build the backbone and the base loss;
5. wrap the base loss in the method;
6. make the optimizer, the learning-rate schedule and the gradient scaler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from dmlsynth import registry
from dmlsynth.data.image_cache import open_cache
from dmlsynth.data.images import BOX_COLUMNS, ImageInput, Preprocessing, SeededSampler
from dmlsynth.data.manifest import fix_for, read_manifest
from dmlsynth.data.split import split_training
from dmlsynth.device import pick_device
from dmlsynth.losses import BaseLoss, build_loss
from dmlsynth.methods import Method, MethodContext, build_method, method_class
from dmlsynth.models import EmbeddingNet, build_backbone
from dmlsynth.training.checkpoint import seed_everything
from dmlsynth.weights import source_of

log = logging.getLogger("dmlsynth.training")

# Grayscale datasets up to this many images are decoded once and held in memory.
IN_MEMORY_LIMIT = 20_000
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``training.mixed_precision`` on ``device`` (None: full precision)."""
    if device.type != "cuda" or setting == "off":
        return None
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}[setting]


@torch.no_grad()
def embed(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None, image_input: ImageInput
) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised embeddings (float32, CPU) and labels of every image of ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    for batch, labels in loader:
        images = image_input.to_model(batch, device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            outputs.append(model(images).float().cpu())
        targets.append(torch.as_tensor(labels))
    model.train(was_training)
    return torch.cat(outputs), torch.cat(targets)


@dataclass
class TrainingRun:
    """The parts of one run; :func:`dmlsynth.training.loop.train_run` drives them."""

    params: Mapping[str, Any]
    device: torch.device
    amp: torch.dtype | None
    image_input: ImageInput
    train_set: Dataset
    train_eval_set: Dataset
    test_set: Dataset
    validation_set: Dataset | None  # the validation classes' images (None: no validation split)
    validation_classes: list[int]  # their class ids
    loader_kwargs: dict[str, Any]
    train_loader: DataLoader
    loader_parts: int  # loader batches per training batch (see _train_loader)
    batches_per_epoch: int  # optimisation steps per epoch: training.batches_per_epoch, or one pass over the real images
    real_images: int  # training images of the run: real ones, then (data-level methods) generated ones
    generated_images: int
    eval_batch: int
    model: EmbeddingNet
    base_loss: BaseLoss
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler_rng: np.random.RandomState
    method_generator: torch.Generator
    train_sampler: "_FreshSampler"  # the train loader's; it counts the real and generated images it hands out
    # Backbone parameters the warm-up freezes (training.warmup_epochs); empty without a warm-up.
    warmup_frozen: list[torch.nn.Parameter] = field(default_factory=list)
    # Query/gallery benchmarks (In-Shop): True for the test images that are queries; None: leave-one-out.
    test_queries: np.ndarray | None = None

    @property
    def epochs(self) -> int:
        return int(self.params["training"]["epochs"])

    @property
    def batch_size(self) -> int:
        return int(self.params["training"]["batch_size"])

    @property
    def optimisation_steps(self) -> int:
        """Steps of the whole run: the same for every method of a dataset x loss."""
        return self.epochs * self.batches_per_epoch

    def images_seen(self) -> dict[str, int]:
        """Real and generated images the training batches have held so far in this epoch."""
        return self.train_sampler.seen()

    def training_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of training batches: model inputs and labels, on the device."""
        parts: list[tuple[Any, torch.Tensor]] = []
        for batch, labels in self.train_loader:
            parts.append((batch, labels))
            if len(parts) == self.loader_parts:
                images = self.image_input.to_model_parts([b for b, _ in parts], self.device)
                labels = parts[0][1] if len(parts) == 1 else torch.cat([l for _, l in parts])
                parts = []
                yield images, labels.to(self.device, non_blocking=True)

    def start_epoch(self, epoch: int) -> None:
        """Before epoch ``epoch`` (from 0): the warm-up's frozen backbone, then the method's epoch hook."""
        warmup = int(self.params["training"].get("warmup_epochs", 0) or 0)
        for parameter in self.warmup_frozen:
            parameter.requires_grad_(epoch >= warmup)
        self.method.on_epoch_start(epoch)

    def loader(self, dataset: Dataset) -> DataLoader:
        """An evaluation loader (fixed order) over ``dataset``."""
        return DataLoader(dataset, batch_size=self.eval_batch, shuffle=False, **self.loader_kwargs)

    def embed(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        return embed(self.model, self.loader(dataset), self.device, self.amp, self.image_input)


@dataclass
class _Frames:
    """Step 1's manifest rows of a run: every row, training (real, then generated), validation, test."""

    all: Any
    train: Any
    validation: Any
    test: Any
    classes: list[int]
    real_images: int  # the training rows before the generated ones


def _frames(params: Mapping[str, Any], manifest: str | Path, synthetic_manifest: str | Path | None) -> _Frames:
    frame = read_manifest(manifest)
    # The last `validation_classes` training classes only choose the epoch (dmlsynth.data.split).
    train, validation = split_training(frame[frame.split == "train"], params["dataset_settings"].get("validation_classes", 0))
    generated = read_manifest(synthetic_manifest) if synthetic_manifest is not None else None
    train = method_class(params["method"]).training_frame(train, generated, params["method_params"], params["seed"])
    # Data-level methods append their generated rows after the real ones (methods.blender.mix_synthetic).
    generated_rows = train["synthetic"].to_numpy(dtype=bool) if "synthetic" in train.columns else np.zeros(len(train), bool)
    real_images = int((~generated_rows).sum())
    if generated_rows[:real_images].any():
        raise AssertionError("generated training rows must follow the real ones")
    return _Frames(frame, train, validation, frame[frame.split == "test"], sorted(train["label"].unique()), real_images)


@dataclass
class _Data:
    """Step 3's datasets and loaders."""

    image_input: ImageInput
    train_set: Dataset
    train_eval_set: Dataset
    test_set: Dataset
    validation_set: Dataset | None
    loader_kwargs: dict[str, Any]
    train_loader: DataLoader
    loader_parts: int
    sampler: "_FreshSampler"


def _data(
    params: Mapping[str, Any], frames: _Frames, manifest: str | Path, device: torch.device, batches_per_epoch: int
) -> _Data:
    """Datasets, read from the resized copy of a photo dataset where it has one (generated images stay as they
    are). Only small grayscale sets are decoded once and kept: photos would cost gigabytes per copy."""
    dataset_spec, settings, training = registry.dataset(params["dataset"]), params["dataset_settings"], params["training"]
    image_input = ImageInput(
        dataset_spec.image_mode, settings["image_size"], training["image_decoding"], Preprocessing.of(settings)
    )
    if image_input.decoding == "device" and device.type != "cuda":
        log.warning("training.image_decoding is 'device' on the CPU: JPEGs are decoded in the main process, one at a time")
    train_frame, test_frame, validation_frame = frames.train, frames.test, frames.validation
    # A damaged generated image is made again by deleting its part file, not by preparing the dataset.
    parts = train_frame["part"] if "part" in train_frame.columns else [None] * len(train_frame)
    fixes = {file: fix_for([part]) for file, part in zip(train_frame["file"], parts) if isinstance(part, str)}
    if settings["cache_short_side"]:
        cache = open_cache(manifest, settings["cache_short_side"], frames.all)
        train_frame = train_frame.assign(file=cache.lookup(train_frame["file"]))
        test_frame = test_frame.assign(file=cache.lookup(test_frame["file"]))
        validation_frame = validation_frame.assign(file=cache.lookup(validation_frame["file"]))
        fixes.update(dict.fromkeys(cache.files.values(), cache.fix))
    in_memory = dataset_spec.image_mode == "L" and len(frames.all) <= IN_MEMORY_LIMIT

    def dataset(part, targets, train: bool) -> Dataset:
        boxes = bounding_boxes(part) if image_input.preprocessing.bounding_boxes else None
        return image_input.dataset(part["file"].tolist(), targets, train=train, in_memory=in_memory, fixes=fixes, boxes=boxes)

    class_index = {label: i for i, label in enumerate(frames.classes)}
    train_targets = [class_index[label] for label in train_frame["label"]]
    loader_kwargs = {
        "num_workers": int(training["num_workers"]),
        "pin_memory": device.type == "cuda",
        "persistent_workers": False,
        "collate_fn": image_input.collate_fn,
    }
    train_set = dataset(train_frame, train_targets, train=True)
    train_loader, loader_parts, sampler = _train_loader(
        train_set, train_targets, training, batches_per_epoch, frames.real_images, image_input, loader_kwargs, int(params["seed"])
    )
    return _Data(
        image_input=image_input,
        train_set=train_set,
        train_eval_set=dataset(train_frame, train_targets, train=False),
        test_set=dataset(test_frame, test_frame["label"].tolist(), train=False),
        validation_set=dataset(validation_frame, validation_frame["label"].tolist(), train=False) if len(validation_frame) else None,
        loader_kwargs=loader_kwargs,
        train_loader=train_loader,
        loader_parts=loader_parts,
        sampler=sampler,
    )


def _method(
    params: Mapping[str, Any], base_loss: BaseLoss, model: EmbeddingNet, data: _Data, classes: int,
    generator: torch.Generator, device: torch.device, amp: torch.dtype | None,
) -> Method:  # fmt: skip
    """The method around the base loss; it may embed the training set (IAA's class statistics)."""
    eval_batch = int(params["evaluation"]["batch_size"])

    def embed_training_set(augmented: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        # augmented: the training transform (IAA's official code estimates on it), one draw per image;
        # photos take a seed per image from the global stream, like the training loader.
        if not augmented:
            loader = DataLoader(data.train_eval_set, batch_size=eval_batch, shuffle=False, **data.loader_kwargs)
        elif data.image_input.seeded:
            sampler = SeededSampler(SequentialSampler(data.train_set))
            loader = DataLoader(data.train_set, batch_sampler=BatchSampler(sampler, eval_batch, drop_last=False), **data.loader_kwargs)
        else:
            loader = DataLoader(data.train_set, batch_size=eval_batch, shuffle=False, **data.loader_kwargs)
        return embed(model, loader, device, amp, data.image_input)

    context = MethodContext(
        num_classes=classes,
        embedding_dim=params["dataset_settings"]["embedding_dim"],
        num_epochs=int(params["training"]["epochs"]),
        generator=generator,
        embed_training_set=embed_training_set,
        device=device,
        embedding_layer=model.embedding,
    )
    return build_method(params["method"], base_loss, params["method_params"], context).to(device)


def _optimizer(training: Mapping[str, Any], model: EmbeddingNet, method: Method, base_loss: BaseLoss) -> torch.optim.Optimizer:
    """The model's parameter groups, and the loss's own parameters (e.g. proxies) at their learning-rate multiple."""
    lr = float(training["lr"])
    groups = model_parameter_groups(model, training)
    loss_parameters = [p for p in method.parameters() if p.requires_grad]
    if loss_parameters:
        groups.append({"params": loss_parameters, "lr": lr * base_loss.lr_multiplier})
    return OPTIMIZERS[training["optimizer"]](groups, lr=lr, weight_decay=float(training["weight_decay"]))


def build_run(params: Mapping[str, Any], manifest: str | Path, synthetic_manifest: str | Path | None = None) -> TrainingRun:
    """The datasets, model, loss, method and optimizer of a run described by ``params``."""
    settings, training = params["dataset_settings"], params["training"]
    device = pick_device(training["device"], "training.device")
    amp = autocast_dtype(training["mixed_precision"], device)

    # 1. The data (generated images of the same classes for data-level methods); the step budget from the
    # real images only.
    frames = _frames(params, manifest, synthetic_manifest)
    batches_per_epoch = int(training["batches_per_epoch"] or max(1, frames.real_images // int(training["batch_size"])))

    # 2. Every random stream from the run's seed; the method draws from a stream of its own.
    sampler_rng = seed_everything(int(params["seed"]))
    method_generator = torch.Generator().manual_seed(int(params["seed"]) + 1)

    # 3. Datasets and loaders.
    data = _data(params, frames, manifest, device, batches_per_epoch)

    # 4. Backbone and base loss.
    model = build_backbone(
        settings["backbone"],
        embedding_dim=settings["embedding_dim"],
        pretrained=settings["pretrained"],
        in_channels=1 if registry.dataset(params["dataset"]).image_mode == "L" else 3,
        weights=source_of(settings),
    ).to(device)
    base_loss = build_loss(params["loss"], params["loss_params"], len(frames.classes), settings["embedding_dim"]).to(device)

    # 5. The method around the base loss.
    method = _method(params, base_loss, model, data, len(frames.classes), method_generator, device, amp)

    # 6. Optimizer, schedule, gradient scaler; the warm-up freezes the backbone (not the embedding layer,
    # nor the loss's own parameters).
    optimizer = _optimizer(training, model, method, base_loss)
    warmup_frozen = [p for p in model.trunk.parameters() if p.requires_grad] if training.get("warmup_epochs") else []

    return TrainingRun(
        params=params,
        device=device,
        amp=amp,
        image_input=data.image_input,
        train_set=data.train_set,
        train_eval_set=data.train_eval_set,
        test_set=data.test_set,
        validation_set=data.validation_set,
        validation_classes=sorted(int(c) for c in frames.validation["label"].unique()),
        loader_kwargs=data.loader_kwargs,
        train_loader=data.train_loader,
        loader_parts=data.loader_parts,
        batches_per_epoch=batches_per_epoch,
        real_images=frames.real_images,
        generated_images=len(frames.train) - frames.real_images,
        eval_batch=int(params["evaluation"]["batch_size"]),
        model=model,
        base_loss=base_loss,
        method=method,
        optimizer=optimizer,
        scheduler=lr_schedule(optimizer, training),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
        sampler_rng=sampler_rng,
        method_generator=method_generator,
        train_sampler=data.sampler,
        warmup_frozen=warmup_frozen,
        test_queries=query_mask(frames.test),
    )


def query_mask(test_frame) -> np.ndarray | None:
    """The query images of a query/gallery test split (the manifest's ``retrieval`` column), or None."""
    if "retrieval" not in test_frame.columns:
        return None
    return (test_frame["retrieval"] == "query").to_numpy()


def bounding_boxes(frame) -> list[tuple[float, ...] | None]:
    """Each row's bounding box (the manifest's box_* columns, fractions of the image), None where it has none."""
    missing = [c for c in BOX_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            "dataset_settings.bounding_boxes is on, but the manifest has no bounding boxes (columns "
            f"{', '.join(missing)}): the dataset has none, or was prepared by an older version; prepare it again"
        )
    boxes = frame[list(BOX_COLUMNS)].to_numpy(dtype=float)
    return [None if np.isnan(box).any() else tuple(box) for box in boxes]


def model_parameter_groups(model: EmbeddingNet, training: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The model's optimizer groups: one, or the backbone and the embedding layer when the embedding layer has a
    learning-rate or gradient multiplier.

    ``embedding_lr_multiplier`` (IAA: "scaled up 10 times on the output layers") multiplies the embedding
    layer's learning rate. ``embedding_gradient_multiplier`` (Symmetrical Synthesis's code: the gradients of
    its embedding layer x 10, weight-decay term included) multiplies its gradient: a hook on each parameter
    scales the loss's gradient, and the group's weight decay (which adam and sgd add to the gradient) is
    scaled with it.
    """
    lr, decay = float(training["lr"]), float(training["weight_decay"])
    lr_multiplier = float(training.get("embedding_lr_multiplier", 1.0))
    gradient_multiplier = float(training.get("embedding_gradient_multiplier", 1.0))
    if lr_multiplier == 1.0 and gradient_multiplier == 1.0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    embedding = [p for p in model.embedding.parameters() if p.requires_grad]
    chosen = {id(p) for p in embedding}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
    if gradient_multiplier != 1.0:
        for parameter in embedding:
            parameter.register_hook(lambda grad, factor=gradient_multiplier: grad * factor)
    embedding_decay = decay * gradient_multiplier if training["optimizer"] != "adamw" else decay
    return [
        {"params": backbone, "lr": lr},
        {"params": embedding, "lr": lr * lr_multiplier, "weight_decay": embedding_decay},
    ]


def lr_schedule(optimizer: torch.optim.Optimizer, training: Mapping[str, Any]) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule of ``training.lr_scheduler`` (stepped after every epoch)."""
    kind = training["lr_scheduler"]
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(training["epochs"]))
    if kind == "step":  # Proxy-Anchor's StepLR, Symmetrical Synthesis's staircase decay
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(training["lr_decay_every"]), gamma=float(training["lr_decay"]))
    if kind == "multistep":  # IAA's MultiStepLR
        milestones = sorted(int(m) for m in training["lr_milestones"])
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=float(training["lr_decay"]))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class _FreshSampler(Sampler):
    """A new MPerClassSampler for every epoch, counting the real and generated images it hands out.

    MPerClassSampler shuffles its list of labels in place, so a reused one
    would carry that order from epoch to epoch; a fresh one per epoch has
    no state but pml's random stream, which checkpoints hold. Indices from
    ``first_generated`` on are generated images (they follow the real ones).
    """

    def __init__(
        self, targets: list[int], m: int, batch_size: int, length: int, first_generated: int, sampling: str = "m_per_class"
    ):
        if sampling == "random":
            self._make = lambda: _RandomOrder(len(targets), length)
        else:
            self._make = lambda: MPerClassSampler(targets, m=m, batch_size=batch_size, length_before_new_iter=length)
        self._length = len(self._make())
        self._first_generated = first_generated
        self._generated = 0
        self._handed_out = 0

    def __len__(self) -> int:
        return self._length

    def seen(self) -> dict[str, int]:
        """Images handed out since the epoch began: ``{"real": …, "generated": …}``."""
        return {"real": self._handed_out - self._generated, "generated": self._generated}

    def __iter__(self) -> Iterator[int]:
        self._generated = self._handed_out = 0
        for index in self._make():
            self._handed_out += 1
            self._generated += int(index >= self._first_generated)
            yield index


class _RandomOrder:
    """``length`` indices of the training images in random order (training.batch_sampling: random): whole
    shuffled passes one after the other, cut at ``length``; drawn from pml's stream (checkpointed) when iterated."""

    def __init__(self, size: int, length: int):
        self.size, self.length = size, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        passes = -(-self.length // self.size)
        order = np.concatenate([pml_common.NUMPY_RANDOM.permutation(self.size) for _ in range(passes)])
        return iter(order[: self.length].tolist())


class _SplitBatches(Sampler):
    """Every batch of ``batches`` as ``parts`` consecutive smaller ones, which different workers load at once."""

    def __init__(self, batches: BatchSampler, parts: int):
        self.batches = batches
        self.parts = parts

    def __len__(self) -> int:
        return len(self.batches) * self.parts

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in self.batches:
            bounds = [round(i * len(batch) / self.parts) for i in range(self.parts + 1)]
            for start, stop in zip(bounds, bounds[1:]):
                yield batch[start:stop]


# Photos: the smallest loader batch worth splitting a training batch into (see _train_loader).
MIN_PART_SIZE = 32


def _train_loader(
    train_set: Dataset,
    targets: list[int],
    training: Mapping[str, Any],
    batches: int,
    first_generated: int,
    image_input: ImageInput,
    loader_kwargs: Mapping[str, Any],
    seed: int,
) -> tuple[DataLoader, int, _FreshSampler]:
    """The training loader, how many of its batches make one training batch, and its sampler.

    Batches hold M images per class (pml's MPerClassSampler), ``batches`` per
    epoch. Photos: each index comes with its augmentation seed, so the numbers
    do not depend on which worker loads an image, and the loader's workers live
    across epochs (starting a dozen of them costs a good part of a short epoch);
    the loader gets a generator of its own so that starting workers draws
    nothing from the global stream the seeds come from. A worker loads a whole
    loader batch, so the first batch of an epoch takes a batch's worth of
    decoding while the GPU waits: a training batch is therefore loaded as a few
    smaller batches by several workers at once, and joined on the device.
    Grayscale images keep the global stream, whole batches and fresh workers
    every epoch.
    """
    batch_size = int(training["batch_size"])
    sampler = _FreshSampler(
        targets, int(training["m_per_class"]), batch_size, batches * batch_size, first_generated, training["batch_sampling"]
    )
    kwargs = dict(loader_kwargs)
    if not image_input.seeded:
        return DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs), 1, sampler
    kwargs["persistent_workers"] = kwargs["num_workers"] > 0
    kwargs["generator"] = torch.Generator().manual_seed(seed)
    parts = max(1, min(kwargs["num_workers"], batch_size // MIN_PART_SIZE))
    split = _SplitBatches(BatchSampler(SeededSampler(sampler), batch_size, drop_last=True), parts)
    return DataLoader(train_set, batch_sampler=split, **kwargs), parts, sampler
