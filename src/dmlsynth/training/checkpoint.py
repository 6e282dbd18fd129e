"""Seeding, random-stream state and the per-epoch checkpoint of a training run.

A checkpoint holds everything a resumed job needs to continue exactly where
the interrupted one stopped: model, method state (e.g. IAA's statistics),
optimizer, scheduler, gradient scaler, every random stream and the history.
It is keyed on what makes the numbers (:func:`checkpoint_key`): the identity
of the run's job (:meth:`dmlsynth.jobs.Job.identity`: its params, code, thread
count, device kind, instruction set) and the device it trains on. A checkpoint
with another key is ignored, so a resumed run always ends with the numbers an
uninterrupted run of the same key would give.
Checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from pytorch_metric_learning.utils import common_functions as pml_common

from dmlsynth.io import atomic_write_text, save_torch

log = logging.getLogger("dmlsynth.training")


def seed_everything(seed: int) -> np.random.RandomState:
    """Seed Python, NumPy and torch; give pml's samplers their own stream (returned)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # pml's samplers draw from this module-level RandomState; give it our own stream.
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed)
    return pml_common.NUMPY_RANDOM


def checkpoint_key(identity: str | None, device: torch.device) -> dict[str, Any]:
    """Everything that changes a run's numbers besides its random state: its job's identity and the device
    it trains on (``auto`` is known only where it runs). Without an identity (a run outside a job) nothing
    is resumed (:func:`load_checkpoint`)."""
    return {"identity": identity, "device": device.type}


def _numpy_state(state: tuple) -> dict[str, Any]:
    # Plain tensors and numbers only, so checkpoints load with weights_only=True.
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    return ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])


def rng_state(sampler_rng: np.random.RandomState, generator: torch.Generator) -> dict[str, Any]:
    return {
        "python": list(random.getstate()[1]),
        "numpy": _numpy_state(np.random.get_state()),
        "sampler": _numpy_state(sampler_rng.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "method": generator.get_state(),
    }


def set_rng_state(state: Mapping[str, Any], sampler_rng: np.random.RandomState, generator: torch.Generator) -> None:
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(_numpy_tuple(state["numpy"]))
    sampler_rng.set_state(_numpy_tuple(state["sampler"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["method"])


def save_checkpoint(path: str | Path, key: Mapping[str, Any], payload: Mapping[str, Any]) -> None:
    save_torch({"key": dict(key), **payload}, path)


def load_checkpoint(path: str | Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was made under ``key``; None (with the reason logged) otherwise."""
    path = Path(path)
    if not path.exists() or key.get("identity") is None:
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: start over rather than fail
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
        return None
    found = payload.get("key") if isinstance(payload, dict) else None
    if found != dict(key):
        differ = sorted(k for k in key if not isinstance(found, dict) or found.get(k) != key[k])
        log.warning(
            "checkpoint %s was made with other %s; training from scratch", path, ", ".join(differ) or "settings"
        )
        return None
    return payload


class AttemptClock:
    """The wall time of every attempt of one run, kept beside its checkpoint until the run is complete.

    A run interrupted (a cluster time-out, a killed job) and resumed costs the time of every attempt,
    not only the last one's. Each attempt adds an entry (its start, and its seconds so far, written at
    every :meth:`tick`, i.e. after every epoch, and when the attempt ends by an exception). Entries made
    under another key (the job's identity, the device) belong to another run and are dropped, as its
    checkpoint is. What an attempt killed without warning (SIGKILL) spent after its last tick is not
    counted.
    """

    def __init__(self, path: str | Path, key: Mapping[str, Any], started: float):
        self.path = Path(path)
        self.key = dict(key)
        self._started_perf = started  # time.perf_counter() at the attempt's start
        self.attempts: list[dict[str, Any]] = []
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("key") == self.key and self.key.get("identity") is not None:
                self.attempts = list(stored["attempts"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        self.attempts.append({"started": time.time() - (time.perf_counter() - started), "seconds": 0.0})
        self.tick()

    def tick(self) -> None:
        self.attempts[-1]["seconds"] = round(time.perf_counter() - self._started_perf, 3)
        atomic_write_text(self.path, json.dumps({"key": self.key, "attempts": self.attempts}, indent=1) + "\n")

    def record(self) -> dict[str, Any]:
        """``run.yaml``'s timing: seconds over every attempt, their count, this attempt's seconds, and when the
        first attempt started and this one finished (Unix time; MLflow shows the run over that span)."""
        return {
            "train_seconds": round(sum(float(a["seconds"]) for a in self.attempts), 3),
            "attempts": len(self.attempts),
            "last_attempt_seconds": float(self.attempts[-1]["seconds"]),
            "started": round(float(self.attempts[0]["started"]), 3),
            "finished": round(time.time(), 3),
        }

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "AttemptClock":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            try:
                self.tick()  # a failed or interrupted attempt spent its time too
            except OSError:
                pass  # never hide the error that ended the attempt
