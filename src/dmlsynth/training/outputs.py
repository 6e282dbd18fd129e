"""The files a finished training run leaves in its run folder (:class:`dmlsynth.layout.RunFolder`).

- ``model.pt``        weights of the reported epoch (backbone, and the method's/loss's state such as proxies)
- ``embeddings.npz``  un-normalised embeddings (``embeddings``) and labels (``labels``) of the test split
                      (with validation classes: at the epoch chosen on them); a query/gallery benchmark
                      (In-Shop) adds ``queries``, true for its query images
- ``embeddings_last_epoch.npz``  the same at the last epoch (only with validation classes)
- ``train_log.csv``   one row per epoch: mean loss, learning rate, optimisation steps, real and
                      generated images its batches held, seconds, end time (+ validation R@1, MAP@R)
- ``run.yaml``        resolved params and their hash, the job's identity, code version (git commit
                      of the project, the job's code digest), environment, threads and device, the step
                      ``budget`` (epochs, batches per epoch, batch size, optimisation steps, images
                      seen), the training images (real, generated), wall time over every attempt
                      (+ ``validation``: its classes and the chosen epoch)

Each goes through a temporary name (:mod:`dmlsynth.io`), and ``run.yaml`` is
written last: a run folder with ``run.yaml`` is complete.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import yaml

from dmlsynth.io import atomic_output, atomic_write_text, save_torch
from dmlsynth.layout import RunFolder
from dmlsynth.provenance import code_version, environment, params_hash, plugin_versions


def write_outputs(
    folder: RunFolder,
    *,
    params: Mapping[str, Any],
    identity: str | None,
    code_digest: str | None,
    model_state: dict[str, Any],
    history: list[dict[str, Any]],
    embeddings: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    threads: int,
    timing: Mapping[str, Any],
    budget: Mapping[str, Any],
    train_images: Mapping[str, int],
    inputs: Mapping[str, str | None] | None = None,
    last_epoch_embeddings: np.ndarray | None = None,
    validation: Mapping[str, Any] | None = None,
    queries: np.ndarray | None = None,
) -> None:
    """``queries``: which test images are queries of a query/gallery benchmark (the others: the gallery)."""
    save_torch(model_state, folder.model)
    roles = {"queries": np.asarray(queries, dtype=bool)} if queries is not None else {}
    with atomic_output(folder.embeddings) as tmp:
        np.savez(tmp, embeddings=embeddings, labels=labels, **roles)
    if last_epoch_embeddings is not None:
        with atomic_output(folder.last_epoch_embeddings) as tmp:
            np.savez(tmp, embeddings=last_epoch_embeddings, labels=labels, **roles)
    atomic_write_text(folder.history, pd.DataFrame(history).to_csv(index=False))
    env = {**environment(str(device)), "torch.threads": str(threads)}
    record = {
        "params": dict(params),
        # A name for its params (the table and MLflow group a run's seeds and supersede runs by it), and the
        # identity of its job (dmlsynth.jobs.Job.identity: params, code, threads, device kind, ISA; the key its
        # checkpoint was resumed under; "none" for a run trained outside a job).
        "params_hash": params_hash(params),
        "identity": identity or "none",
        # plugins: the distributions and versions of the plugin entries the run uses (none: no key).
        "code": {**code_version(), "digest": code_digest or "none", **({"plugins": p} if (p := plugin_versions(params)) else {})},
        "environment": env,
        # What changes the numbers without being a param: the table shows them and never averages over them.
        "threads": int(threads),
        "cpu_isa": env.get("cpu_isa", "native"),  # the CPU libraries' instruction set (dmlsynth.cpu_isa)
        "device": str(device),
        "budget": dict(budget),
        "train_images": dict(train_images),
        # The files the run read (MLflow shows them as the run's datasets).
        "inputs": dict(inputs or {}),
        # Seconds over every attempt (resumes and retries included), the attempts, and their span.
        "wall_seconds": {"train": timing["train_seconds"], "last_attempt": timing["last_attempt_seconds"]},
        "attempts": int(timing["attempts"]),
        "started": timing["started"],
        "finished": timing["finished"],
    }
    if validation is not None:
        record["validation"] = dict(validation)
    atomic_write_text(folder.record, yaml.safe_dump(record, sort_keys=False))
