"""Training one run: dataset x method x loss x seed.

Outputs in the run folder (declared by the Snakemake rule):

- ``model.pt``        final weights (backbone, and the loss's proxies if any)
- ``run.yaml``        resolved params, code version, environment, wall time
- ``train_log.csv``   one row per epoch: loss, learning rate, seconds
- ``embeddings.npz``  un-normalised embeddings and labels of the test split

``checkpoint.pt`` is written after every epoch (not an output: it survives a
failed or interrupted job) and an identical re-run resumes from it; a
checkpoint made with other params is ignored. Same params and seed give the
same numbers on CPU.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import yaml
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from torch.utils.data import DataLoader
from tqdm import tqdm

from dmlsynth import registry
from dmlsynth.config import atomic_write_text, params_hash
from dmlsynth.device import pick_device
from dmlsynth.data.images import ImageDataset, build_transform
from dmlsynth.data.manifest import read_manifest
from dmlsynth.losses import build_loss
from dmlsynth.methods.base import MethodContext
from dmlsynth.models import build_backbone
from dmlsynth.provenance import code_version, environment

log = logging.getLogger("dmlsynth.train")

CHECKPOINT = "checkpoint.pt"
OUTPUTS = ("model.pt", "run.yaml", "train_log.csv", "embeddings.npz")
# Grayscale datasets up to this many images are decoded once and held in memory.
IN_MEMORY_LIMIT = 20_000


class Interrupted(RuntimeError):
    """Raised by ``stop_after_epoch`` to simulate a job killed after a checkpoint."""



def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or setting == "off":
        return None
    return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}[setting]


def seed_everything(seed: int) -> np.random.RandomState:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # pml's samplers draw from this module-level RandomState; give it our own stream.
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed)
    return pml_common.NUMPY_RANDOM


def _numpy_state(state: tuple) -> dict[str, Any]:
    # Plain tensors and numbers only, so checkpoints load with weights_only=True.
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    return ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def _rng_state(sampler_rng: np.random.RandomState, generator: torch.Generator) -> dict[str, Any]:
    return {
        "python": list(random.getstate()[1]),
        "numpy": _numpy_state(np.random.get_state()),
        "sampler": _numpy_state(sampler_rng.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "method": generator.get_state(),
    }


def _set_rng_state(state: Mapping[str, Any], sampler_rng: np.random.RandomState, generator: torch.Generator) -> None:
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(_numpy_tuple(state["numpy"]))
    sampler_rng.set_state(_numpy_tuple(state["sampler"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["method"])


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, expected_hash: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: start over rather than fail
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
        return None
    if payload.get("params_hash") != expected_hash:
        log.warning("checkpoint %s was made with other params; training from scratch", path)
        return None
    return payload



@torch.no_grad()
def embed(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    outputs, targets = [], []
    for images, labels in loader:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            outputs.append(model(images.to(device, non_blocking=True)).float().cpu())
        targets.append(torch.as_tensor(labels))
    model.train(was_training)
    return torch.cat(outputs), torch.cat(targets)


def train_run(
    params: Mapping[str, Any],
    manifest: str | Path,
    run_dir: str | Path,
    synthetic_manifest: str | Path | None = None,
    threads: int = 1,
    stop_after_epoch: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one run described by ``params`` (from :func:`dmlsynth.config.run_params`)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)

    dataset_spec = registry.DATASETS[params["dataset"]]
    method_spec = registry.METHODS[params["method"]]
    settings = params["dataset_settings"]
    training = params["training"]
    device = pick_device(training.get("device", "auto"), "training.device")
    amp = autocast_dtype(training.get("mixed_precision", "auto"), device)
    expected_hash = params_hash(params)

    frame = read_manifest(manifest)
    train_frame = frame[frame.split == "train"]
    test_frame = frame[frame.split == "test"]
    if synthetic_manifest is not None:
        from dmlsynth.data.synthetic import mix_synthetic

        train_frame = mix_synthetic(train_frame, read_manifest(synthetic_manifest), params["method_params"], params["seed"])
    classes = sorted(train_frame["label"].unique())
    class_index = {label: i for i, label in enumerate(classes)}

    sampler_rng = seed_everything(int(params["seed"]))
    method_generator = torch.Generator().manual_seed(int(params["seed"]) + 1)

    # Only small grayscale sets are decoded once and kept: photos would cost gigabytes per copy.
    cache = dataset_spec.image_mode == "L" and len(frame) <= IN_MEMORY_LIMIT
    image_size = settings["image_size"]
    train_set = ImageDataset(
        train_frame["file"].tolist(),
        [class_index[label] for label in train_frame["label"]],
        dataset_spec.image_mode,
        build_transform(dataset_spec.image_mode, image_size, train=True),
        cache=cache,
    )
    train_eval_set = ImageDataset(
        train_frame["file"].tolist(),
        train_set.targets,
        dataset_spec.image_mode,
        build_transform(dataset_spec.image_mode, image_size, train=False),
        cache=cache,
    )
    test_set = ImageDataset(
        test_frame["file"].tolist(),
        test_frame["label"].tolist(),
        dataset_spec.image_mode,
        build_transform(dataset_spec.image_mode, image_size, train=False),
        cache=cache,
    )
    loader_kwargs = {
        "num_workers": int(training.get("num_workers", 0)),
        "pin_memory": device.type == "cuda",
        "persistent_workers": False,
    }
    eval_batch = int(params["evaluation"].get("batch_size", 256))

    model = build_backbone(
        settings["backbone"],
        embedding_dim=settings["embedding_dim"],
        pretrained=settings["pretrained"],
        in_channels=1 if dataset_spec.image_mode == "L" else 3,
    ).to(device)
    base_loss = build_loss(params["loss"], params["loss_params"], len(classes), settings["embedding_dim"]).to(device)

    def embed_training_set() -> tuple[torch.Tensor, torch.Tensor]:
        loader = DataLoader(train_eval_set, batch_size=eval_batch, shuffle=False, **loader_kwargs)
        return embed(model, loader, device, amp)

    context = MethodContext(
        num_classes=len(classes),
        embedding_dim=settings["embedding_dim"],
        num_epochs=int(training["epochs"]),
        generator=method_generator,
        embed_training_set=embed_training_set,
        device=device,
    )
    method = registry.load_object(method_spec.module)(base_loss, params["method_params"], context).to(device)

    lr = float(training["lr"])
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    loss_parameters = [p for p in method.parameters() if p.requires_grad]
    if loss_parameters:
        groups.append({"params": loss_parameters, "lr": lr * base_loss.lr_multiplier})
    optimizer_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[training["optimizer"]]
    optimizer = optimizer_cls(groups, lr=lr, weight_decay=float(training.get("weight_decay", 0.0)))
    epochs = int(training["epochs"])
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        if training.get("lr_scheduler", "cosine") == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    batch_size = int(training["batch_size"])
    batches = training.get("batches_per_epoch") or max(1, len(train_set) // batch_size)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    checkpoint_path = run_dir / CHECKPOINT
    checkpoint = _load_checkpoint(checkpoint_path, expected_hash)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        method.load_state_dict(checkpoint["method"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"], sampler_rng, method_generator)
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"])
        log.info("resuming from %s after epoch %d of %d", checkpoint_path, start_epoch, epochs)

    model.train()
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        method.on_epoch_start(epoch)
        # A fresh sampler each epoch: its only state is then the RNG, which the checkpoint holds.
        sampler = MPerClassSampler(
            train_set.targets, m=int(training["m_per_class"]), batch_size=batch_size, length_before_new_iter=batches * batch_size
        )
        loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True, **loader_kwargs)
        total, steps = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not progress, mininterval=2.0)
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                embeddings = model(images)
            loss = method(embeddings.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1}; lower training.lr or check the loss params"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach())
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}", refresh=False)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total / max(steps, 1),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - epoch_start,
            }
        )
        scheduler.step()
        log.info("epoch %d/%d loss %.4f (%.1fs)", epoch + 1, epochs, history[-1]["loss"], history[-1]["seconds"])
        _save_checkpoint(
            checkpoint_path,
            {
                "params_hash": expected_hash,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "method": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(sampler_rng, method_generator),
                "history": history,
            },
        )
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < epochs:
            raise Interrupted(f"stopped after epoch {epoch + 1} as asked")

    test_loader = DataLoader(test_set, batch_size=eval_batch, shuffle=False, **loader_kwargs)
    test_embeddings, test_labels = embed(model, test_loader, device, amp)

    _write_outputs(
        run_dir,
        params=params,
        expected_hash=expected_hash,
        model_state={"model": model.state_dict(), "method": method.state_dict()},
        history=history,
        embeddings=test_embeddings.numpy(),
        labels=test_labels.numpy(),
        device=device,
        seconds=time.perf_counter() - started,
        num_train_images=len(train_set),
    )
    return {"history": history, "embeddings": test_embeddings, "labels": test_labels}


def _write_outputs(
    run_dir: Path,
    *,
    params: Mapping[str, Any],
    expected_hash: str,
    model_state: dict[str, Any],
    history: list[dict[str, Any]],
    embeddings: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    seconds: float,
    num_train_images: int,
) -> None:
    # Each file goes through a temporary name, so no output ever looks complete while half-written.
    tmp = run_dir / ".model.pt.tmp"
    torch.save(model_state, tmp)
    os.replace(tmp, run_dir / "model.pt")
    tmp = run_dir / ".embeddings.npz.tmp.npz"
    np.savez(tmp, embeddings=embeddings, labels=labels)
    os.replace(tmp, run_dir / "embeddings.npz")
    atomic_write_text(run_dir / "train_log.csv", pd.DataFrame(history).to_csv(index=False))
    record = {
        "params": dict(params),
        "params_hash": expected_hash,
        "code": code_version(),
        "environment": environment(str(device)),
        "wall_seconds": {"train": round(seconds, 3)},
        "train_images": num_train_images,
    }
    atomic_write_text(run_dir / "run.yaml", yaml.safe_dump(record, sort_keys=False))
