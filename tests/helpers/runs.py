"""Finished, evaluated run folders made without training: for the table and comparison tests."""

import json

import numpy as np
import yaml
from sklearn.metrics import normalized_mutual_info_score

N_QUERIES = 400


def make_run(
    root, dataset, method, loss, seed, hits, *, folder=None, labels=None, commit="c0ffee", dirty=False, device="cpu",
    seconds=2.0, params=None, control="default", threads=1, steps=100, dataset_settings=None,
):
    """A finished, evaluated run folder whose per-query Recall@1 hits are ``hits``.

    ``params``: extra run params (e.g. ``{"loss_params": {...}}``); ``control``: the row it is compared
    with (default: ``baseline`` for every method but baseline; None for a control); ``threads`` and
    ``steps`` (optimisation steps) as the training job records them; ``dataset_settings`` as run params."""
    folder = folder or root / "runs" / dataset / method / loss / f"seed{seed}"
    folder.mkdir(parents=True)
    n = len(hits)
    labels = np.arange(n) % 8 if labels is None else labels
    hits = np.asarray(hits, dtype=float)
    average_precision = 0.4 * hits + 0.1
    clusters = np.where(hits > 0, labels, (labels + 1) % 8)
    np.savez(folder / "queries.npz", labels=labels, clusters=clusters, kept=np.ones(n, bool), **{"recall@1": hits, "map@r": average_precision})
    metrics = {
        "recall@1": hits.mean(), "map@r": average_precision.mean(), "nmi": normalized_mutual_info_score(labels, clusters),
        "queries": n, "eval_seconds": 0.1,
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    np.savez(folder / "embeddings.npz", embeddings=np.ones((n, 2)), labels=labels)
    if control == "default":
        control = None if method.startswith("baseline") else "baseline"
    record = {
        "params": {
            "dataset": dataset, "method": "baseline" if method.startswith("baseline") else method, "label": method,
            "control": control, "loss": loss, "seed": seed, "training": {"batch_size": 80},
            **({"dataset_settings": dataset_settings} if dataset_settings else {}), **(params or {}),
        },
        "params_hash": f"h-{method}-{seed}",
        "code": {"git_commit": commit, "git_dirty": dirty},
        "environment": {"device": device},
        "threads": threads,
        "budget": {"optimisation_steps": steps},
        "wall_seconds": {"train": seconds},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(record))
    # The training log every finished run has: a loss that falls over 3 epochs, from a start of its own.
    start = 1.0 + 0.1 * seed + 0.01 * len(method)
    (folder / "train_log.csv").write_text(
        "epoch,loss,lr,seconds\n" + "".join(f"{e},{start / e:.6f},0.001,1.0\n" for e in (1, 2, 3))
    )
    return folder


def simulated_hits(rng, rate, seed_effect):
    """One run's hits on the fixed test queries: query difficulty is shared, the run adds its own noise."""
    return (QUERY_DIFFICULTY < rate + seed_effect + rng.normal(scale=0.05, size=N_QUERIES)).astype(float)


# The test queries: difficulties evenly spread over [0, 1] (a test set as varied as the population).
QUERY_DIFFICULTY = np.random.default_rng(123).permutation((np.arange(N_QUERIES) + 0.5) / N_QUERIES)
