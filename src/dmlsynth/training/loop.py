"""Training one run: dataset x method x loss x seed.

:func:`train_run` goes through these steps:

1. fix the thread count and deterministic algorithms;
2. build the run (:func:`dmlsynth.training.build.build_run`);
3. resume from the checkpoint when it was made under the same key
   (the job's identity and the device — :mod:`dmlsynth.training.checkpoint`);
4. train epoch by epoch; after each epoch run the epoch-end hooks (with
   validation classes: :class:`dmlsynth.training.validation.EpochSelection`),
   write the checkpoint, then call the callbacks (a callback may stop the
   run by raising);
5. embed the test split — at the last epoch, and with validation classes also
   with the weights of the epoch chosen on them (the test classes play no
   part in the choice);
6. write the outputs (:mod:`dmlsynth.training.outputs`) and remove the
   checkpoint: a finished run keeps none, so re-running a finished job
   (``snakemake --forcerun train``) trains again from scratch.

Same params, code, threads and seed give the same numbers on CPU.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import torch
from tqdm import tqdm

from dmlsynth.errors import DmlsynthError
from dmlsynth.layout import RunFolder
from dmlsynth.training.build import TrainingRun, build_run
from dmlsynth.training.checkpoint import (
    AttemptClock, checkpoint_key, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)  # fmt: skip
from dmlsynth.training.outputs import write_outputs
from dmlsynth.training.validation import EpochSelection

log = logging.getLogger("dmlsynth.training")


class DivergedError(DmlsynthError, FloatingPointError):
    """The loss became NaN or infinite: the run's learning rate or loss params do not train."""


class Callback(Protocol):
    """Called after every finished (and checkpointed) epoch; raise to stop the run there."""

    def __call__(self, run: TrainingRun, epoch: int, history: list[dict[str, Any]]) -> None: ...


def set_up_torch(threads: int) -> int:
    """The thread count and deterministic algorithms every run trains with; returns the thread count."""
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    # cuBLAS is deterministic only with a fixed workspace; it reads this when its first handle is made.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    return threads


def train_step(run: TrainingRun, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> float:
    """One optimisation step on a batch already on the device; returns its loss.

    The benchmark of training throughput (benchmarks/bench_training_throughput.py)
    times this very function on a batch that stays on the GPU: the model-only bound.
    """
    with torch.autocast(run.device.type, dtype=run.amp, enabled=run.amp is not None):
        features = run.model.trunk(images)
        embeddings = run.model.embedding(features)
    loss = run.method(embeddings.float(), labels, features=features.float())
    if not torch.isfinite(loss):
        raise DivergedError(f"loss became {loss.item()} at epoch {epoch + 1}; lower training.lr or check the loss params")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    clip = run.params["training"].get("grad_clip_value")
    if clip is not None:  # the official SGAR code's clip_grad_value_ (Liuzt1999/SCAR train.py:349-351)
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_value_([p for group in run.optimizer.param_groups for p in group["params"]], float(clip))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return float(loss.detach())


def train_epoch(run: TrainingRun, epoch: int, progress: bool = True) -> dict[str, Any]:
    """One epoch of ``run``; returns its history row: mean loss, learning rate, optimisation steps, the
    real and generated images its batches held, seconds, and when it ended (Unix time)."""
    started = time.perf_counter()
    run.start_epoch(epoch)  # the warm-up's frozen backbone, then the method's hook
    total, steps = 0.0, 0
    batches = run.training_batches()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{run.epochs}", total=run.batches_per_epoch, leave=False, disable=not progress, mininterval=2.0)
    for images, labels in bar:
        total += train_step(run, images, labels, epoch)
        steps += 1
        bar.set_postfix(loss=f"{total / steps:.4f}", refresh=False)
    seen = run.images_seen()
    row = {
        "epoch": epoch + 1,
        "loss": total / max(steps, 1),
        "lr": run.optimizer.param_groups[0]["lr"],
        "steps": steps,
        "real_images": seen["real"],
        "generated_images": seen["generated"],
        "seconds": time.perf_counter() - started,
        "time": time.time(),
    }
    run.scheduler.step()
    return row


def _validation_note(row: Mapping[str, Any]) -> str:
    return f" val R@1 {row['val_recall@1']:.4f} MAP@R {row['val_map@r']:.4f}" if "val_map@r" in row else ""


def train_run(
    params: Mapping[str, Any],
    manifest: str | Path,
    run_dir: str | Path,
    synthetic_manifest: str | Path | None = None,
    threads: int = 1,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    identity: str | None = None,
    code_digest: str | None = None,
) -> dict[str, Any]:
    """Train the run described by ``params`` (from :func:`dmlsynth.config.run_params`) into ``run_dir``.

    ``identity`` and ``code_digest``: those of the run's ``train`` job (:class:`dmlsynth.jobs.Job`), its
    checkpoint's key and what ``run.yaml`` records; a run without an identity never resumes."""
    started = time.perf_counter()
    folder = RunFolder(str(run_dir))
    Path(folder.path).mkdir(parents=True, exist_ok=True)

    # 1. Threads and determinism: float reductions depend on the thread count.
    threads = set_up_torch(threads)

    # 2. Build.
    run = build_run(params, manifest, synthetic_manifest)
    key = checkpoint_key(identity, run.device)
    # Epoch-end hooks run before the checkpoint, which holds their state.
    selection = EpochSelection() if run.validation_set is not None else None
    hooks = {"selection": selection} if selection is not None else {}

    # Every attempt's wall time counts towards the run's cost (a resumed run sums them); an attempt
    # that fails still spent its time.
    with AttemptClock(folder.attempts, key, started) as clock:
        # 3. Resume.
        history, start_epoch = _resume(run, folder, key, hooks)

        # 4. Epochs.
        run.model.train()
        for epoch in range(start_epoch, run.epochs):
            row = train_epoch(run, epoch, progress)
            for hook in hooks.values():
                hook.on_epoch_end(run, epoch + 1, row)
            history.append(row)
            log.info("epoch %d/%d loss %.4f (%.1fs)%s", epoch + 1, run.epochs, row["loss"], row["seconds"], _validation_note(row))
            _save_checkpoint(run, folder, key, hooks, history, epoch + 1)
            clock.tick()
            for callback in callbacks:
                callback(run, epoch + 1, history)

        # 5. Test embeddings: of the last epoch, and with validation of the epoch chosen on it. The test
        # classes are embedded only now, after every choice is made.
        test_embeddings, test_labels = run.embed(run.test_set)
        last_epoch_embeddings, validation = None, None
        if selection is not None:
            last_epoch_embeddings = test_embeddings.numpy()
            selection.restore(run)
            test_embeddings, test_labels = run.embed(run.test_set)
            validation = selection.record(run.validation_classes)
            log.info("epoch %d of %d chosen on the validation classes (val MAP@R %.4f)", selection.best_epoch, run.epochs, selection.best_score)

        # 6. Outputs; then the checkpoint and the attempts go (a finished run is re-run from scratch when forced).
        clock.tick()
        write_outputs(
            folder,
            params=params,
            identity=identity,
            code_digest=code_digest,
            model_state={"model": run.model.state_dict(), "method": run.method.state_dict()},
            history=history,
            embeddings=test_embeddings.numpy(),
            labels=test_labels.numpy(),
            device=run.device,
            threads=threads,
            timing=clock.record(),
            budget=_budget(run, history),
            train_images={"real": run.real_images, "generated": run.generated_images},
            inputs={"manifest": str(manifest), "synthetic_manifest": None if synthetic_manifest is None else str(synthetic_manifest)},
            last_epoch_embeddings=last_epoch_embeddings,
            validation=validation,
            queries=run.test_queries,
        )
    Path(folder.checkpoint).unlink(missing_ok=True)
    clock.remove()
    return {"history": history, "embeddings": test_embeddings, "labels": test_labels}


def _resume(
    run: TrainingRun, folder: RunFolder, key: Mapping[str, Any], hooks: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """Load the checkpoint made under ``key`` into ``run``; returns its history and the epochs it had done."""
    checkpoint = load_checkpoint(folder.checkpoint, key)
    if checkpoint is None:
        return [], 0
    run.model.load_state_dict(checkpoint["model"])
    run.method.load_state_dict(checkpoint["method"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"], run.sampler_rng, run.method_generator)
    for name, hook in hooks.items():
        hook.load_state_dict(checkpoint["hooks"][name])
    log.info("resuming from %s after epoch %d of %d", folder.checkpoint, int(checkpoint["epoch"]), run.epochs)
    return list(checkpoint["history"]), int(checkpoint["epoch"])


def _save_checkpoint(
    run: TrainingRun, folder: RunFolder, key: Mapping[str, Any], hooks: Mapping[str, Any], history: list[dict[str, Any]], epochs: int
) -> None:
    save_checkpoint(
        folder.checkpoint,
        key,
        {
            "epoch": epochs,
            "model": run.model.state_dict(),
            "method": run.method.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "rng": rng_state(run.sampler_rng, run.method_generator),
            "history": history,
            "hooks": {name: hook.state_dict() for name, hook in hooks.items()},
        },
    )


def _budget(run: TrainingRun, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's step budget and what its batches held (``run.yaml`` ``budget``; the table compares it)."""
    return {
        "epochs": run.epochs,
        "batches_per_epoch": run.batches_per_epoch,
        "batch_size": run.batch_size,
        "optimisation_steps": int(sum(row["steps"] for row in history)),
        "images_seen": {
            "real": int(sum(row["real_images"] for row in history)),
            "generated": int(sum(row["generated_images"] for row in history)),
        },
    }
