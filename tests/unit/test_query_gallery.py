"""Query/gallery retrieval (In-Shop) and SOP-size search: the metrics, the evaluation of a trained run, and the
table's bootstrap, through the path the workflow runs."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from dmlsynth import config as cfg
from dmlsynth import metrics, stats
from dmlsynth.data.manifest import write_manifest
from dmlsynth.evaluation import evaluate_run
from dmlsynth.layout import TableFiles
from dmlsynth.metrics import nearest_neighbors, per_query_metrics
from dmlsynth.table import collect, query_positions, read_run, resampled_arrays, write_table
from dmlsynth.training.loop import train_run
from dmlsynth.config import filled
from tests.helpers.images import write_photo_dataset


def brute_force(x: np.ndarray, labels: np.ndarray, queries: np.ndarray, ks) -> dict[str, np.ndarray]:
    """Every query ranked against the gallery by a plain sort (ties by index): the definitions, written out."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    gallery = np.flatnonzero(~queries)
    out = {f"recall@{k}": np.zeros(len(labels)) for k in ks} | {"map@r": np.zeros(len(labels)), "r_precision": np.zeros(len(labels))}
    kept = np.zeros(len(labels), dtype=bool)
    for q in np.flatnonzero(queries):
        scores = x[gallery] @ x[q]
        order = gallery[np.lexsort((gallery, -scores))]
        relevant = labels[order] == labels[q]
        r = int(relevant.sum())
        if r == 0:
            continue
        kept[q] = True
        for k in ks:
            out[f"recall@{k}"][q] = float(relevant[:k].any())
        out["r_precision"][q] = relevant[:r].sum() / r
        precision = np.cumsum(relevant[:r]) / np.arange(1, r + 1)
        out["map@r"][q] = (precision * relevant[:r]).sum() / r
    out["kept"] = kept
    return out


def test_queries_are_searched_in_the_gallery_only():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 5)
    x = rng.normal(size=(len(labels), 8)) + 0.8 * rng.normal(size=(12, 8))[labels]
    queries = np.tile([True, True, True, False, False], 12)
    queries[labels == 11] = True  # a class without gallery images: its queries count for nothing
    ours = per_query_metrics(x, labels, ks=(1, 2, 4), queries=queries)
    reference = brute_force(x, labels, queries, (1, 2, 4))
    assert np.array_equal(ours["kept"], reference["kept"]) and not ours["kept"][~queries].any()
    assert not ours["kept"][labels == 11].any()
    for name in ("recall@1", "recall@2", "recall@4", "map@r", "r_precision"):
        assert np.allclose(ours[name], reference[name]), name
    # Leave-one-out on the same embeddings differs: a query's own gallery twin is not its only match.
    leave_one_out = per_query_metrics(x, labels, ks=(1,))
    assert leave_one_out["kept"].all() and "queries" not in leave_one_out


def test_blocked_search_equals_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 40, 300)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    whole = per_query_metrics(x, labels, ks=(1, 10, 100))
    queries = rng.random(300) < 0.5
    whole_qg = per_query_metrics(x, labels, ks=(1, 10), queries=queries)
    monkeypatch.setattr(metrics, "QUERY_BLOCK", 37)
    blocked = per_query_metrics(x, labels, ks=(1, 10, 100))
    blocked_qg = per_query_metrics(x, labels, ks=(1, 10), queries=queries)
    for a, b in ((whole, blocked), (whole_qg, blocked_qg)):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_search_on_the_device_finds_the_cpu_neighbours(device):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert np.array_equal(nearest_neighbors(x, 10, device=device), nearest_neighbors(x, 10))
    labels = rng.integers(0, 50, 500)
    queries = rng.random(500) < 0.6
    on_device = per_query_metrics(x, labels, ks=(1, 5), queries=queries, device=device)
    on_cpu = per_query_metrics(x, labels, ks=(1, 5), queries=queries)
    assert all(np.allclose(on_device[k], on_cpu[k]) for k in on_cpu)


def test_bootstrap_resamples_queries_not_gallery_images():
    labels = np.arange(10)
    queries = np.array([True, False] * 5)
    per_query = {"labels": labels, "queries": queries, "kept": queries, "recall@1": queries * 1.0, "clusters": labels}
    positions = query_positions(per_query)
    assert positions.tolist() == [0, 2, 4, 6, 8]
    arrays = resampled_arrays(per_query, positions)
    assert set(arrays) == {"labels", "kept", "recall@1"}  # no NMI replicate: its clusters mix query and gallery
    replicates = stats.QueryBootstrap(len(positions), 200, 0).replicates(arrays, ["recall@1", "nmi"])
    assert np.all(replicates["recall@1"] == 1.0) and "nmi" not in replicates
    everything = query_positions({"labels": labels})
    assert everything.tolist() == list(range(10))


def test_compact_bootstrap_counts_give_the_float_results():
    rng = np.random.default_rng(3)
    boot = stats.QueryBootstrap(400, samples=300, seed=5, batch=64)
    assert boot.counts.dtype == np.uint8 and boot.counts.nbytes == 300 * 400
    values = rng.random(400)
    kept = rng.random(400) < 0.9
    ours = boot.replicates({"labels": np.arange(400), "kept": kept, "map@r": values * kept}, ["map@r"])["map@r"]
    counts = boot.counts.astype(np.float64)
    assert np.allclose(ours, (counts @ (values * kept)) / (counts @ kept))


@pytest.fixture(scope="module")
def inshop_like(tmp_path_factory):
    """4 training items and 4 test items of 6 photos: 4 queries and 2 gallery images each."""
    sizes = [(60 + 3 * i, 50 + 2 * (i % 5)) for i in range(48)]
    manifest = write_photo_dataset(tmp_path_factory.mktemp("inshop") / "inshop", sizes, classes=8)
    frame = pd.read_csv(manifest)
    position = frame.groupby("label").cumcount()
    frame["retrieval"] = np.where(frame.split == "test", np.where(position < 4, "query", "gallery"), None)
    write_manifest(frame, manifest)
    return manifest


def test_a_trained_inshop_run_is_evaluated_on_its_queries_and_tabled(default_params, inshop_like, tmp_path):
    config = copy.deepcopy(default_params)
    config.update(datasets=["inshop"], methods=["baseline"], losses=["multi_similarity"])
    config["dataset_settings"] = {
        "inshop": {"backbone": "small_cnn", "pretrained": False, "embedding_dim": 8, "image_size": 32, "cache_short_side": 0}
    }
    config["training"].update({"epochs": 1, "batch_size": 8, "m_per_class": 4, "batches_per_epoch": 2, "num_workers": 0, "device": "cpu"})
    config = cfg.validate(config)
    folders = []
    for method, seed in (("baseline", 0), ("baseline", 1)):
        params = cfg.run_params(config, "inshop", method, "multi_similarity", seed)
        folder = tmp_path / "runs" / "inshop" / method / "multi_similarity" / f"seed{seed}"
        train_run(params, inshop_like, folder, progress=False)
        with np.load(folder / "embeddings.npz") as data:
            queries = data["queries"]
            embeddings, labels = data["embeddings"], data["labels"]
        assert queries.sum() == 16 and len(queries) == 24
        result = evaluate_run(folder, ks=(1, 2))
        expected = per_query_metrics(embeddings, labels, (1, 2), queries=queries)
        assert result["recall@1"] == pytest.approx(expected["recall@1"][expected["kept"]].mean())
        assert result["queries"] == 16
        folders.append(folder)
    runs = collect(folders)
    assert all("queries" in run.per_query() for run in runs)
    table = write_table(folders, TableFiles.under(str(tmp_path / "results")), filled({})["statistics"])
    row = table.iloc[0]
    assert row["seeds"] == 2 and np.isfinite(row["recall@1_boot_low"]) and np.isnan(row["nmi_boot_low"])
    assert read_run(folders[0]).metrics["recall@1"] == pytest.approx(evaluate_run(folders[0], ks=(1, 2))["recall@1"])
