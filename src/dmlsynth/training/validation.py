"""Choosing the epoch on validation classes, never on test classes.

With ``dataset_settings.<dataset>.validation_classes`` (:mod:`dmlsynth.data.split`)
a run holds out its last training classes. :class:`EpochSelection` is an
epoch-end hook of the training loop: after every epoch it embeds the
validation images (and nothing else), records validation Recall@1 and MAP@R
in the epoch's history row (``val_recall@1``, ``val_map@r``) and keeps a copy
of the weights of the best epoch so far by validation MAP@R (the earlier
epoch on a tie). The loop then reports the test embeddings of that epoch
and, separately, of the last epoch. Its state goes into the checkpoint, so a
resumed run chooses the same epoch.
"""

from __future__ import annotations

from typing import Any

import torch

from dmlsynth.metrics import retrieval_metrics

# Musgrave et al. 2020 recommend MAP@R: it rewards the whole ranking, not only the first hit.
SELECT_ON = "map@r"
HISTORY_COLUMNS = {"recall@1": "val_recall@1", "map@r": "val_map@r"}


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


class EpochSelection:
    """Validation metrics per epoch and the weights of the chosen (best) epoch."""

    def __init__(self) -> None:
        self.best_epoch = 0
        self.best_score = float("-inf")
        self.best_model: dict[str, Any] | None = None
        self.best_method: dict[str, Any] | None = None

    def on_epoch_end(self, run: Any, epoch: int, row: dict[str, Any]) -> None:
        """Validate after ``epoch`` (1-based) and add the validation metrics to its history ``row``."""
        # Validation must not move the training's random streams (a DataLoader draws a seed).
        with torch.random.fork_rng(devices=[]):
            embeddings, labels = run.embed(run.validation_set)
        metrics = retrieval_metrics(embeddings.numpy(), labels.numpy(), ks=(1,), include_nmi=False)
        for name, column in HISTORY_COLUMNS.items():
            row[column] = metrics[name]
        if metrics[SELECT_ON] > self.best_score:
            self.best_epoch, self.best_score = epoch, metrics[SELECT_ON]
            self.best_model = _copy(run.model.state_dict())
            self.best_method = _copy(run.method.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch, "best_score": self.best_score,
            "best_model": self.best_model, "best_method": self.best_method,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.best_score = int(state["best_epoch"]), float(state["best_score"])
        self.best_model, self.best_method = state["best_model"], state["best_method"]

    def restore(self, run: Any) -> None:
        """Put the chosen epoch's weights (and the method's state, e.g. proxies) back into ``run``."""
        run.model.load_state_dict(self.best_model)
        run.method.load_state_dict(self.best_method)

    def record(self, validation_classes: list[int]) -> dict[str, Any]:
        """What ``run.yaml`` says about the choice."""
        return {
            "classes": [int(c) for c in validation_classes],
            "select_on": SELECT_ON,
            "chosen_epoch": self.best_epoch,
            f"val_{SELECT_ON}": self.best_score,
        }
