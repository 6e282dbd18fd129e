"""What re-runs a job, and what is left after a failure, through the real workflow.

- A job re-runs exactly when its identity changes (:meth:`dmlsynth.jobs.Job.identity`): the same values
  in another key order, a default restated or a number spelled otherwise re-run nothing; a changed
  value re-runs the jobs it reaches.
- No result is left looking current: a re-training that fails leaves no table, summary, metrics or
  comparison of the old runs, and no old evaluation of the failed run; a deleted run is trained again.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import yaml

from tests.helpers.workflow import copy_of, snakemake

pytestmark = pytest.mark.slow

TABLE_FILES = ("summary.md", "summary.csv", "table.csv", "table.json", "metrics.json", "comparison.csv", "comparison.md")


def flow(mapping: dict) -> str:
    """A mapping as the YAML flow text `snakemake --config key=...` takes."""
    return yaml.safe_dump(mapping, default_flow_style=True, width=10_000).strip()


@pytest.fixture
def finished(finished_baseline_symm, tmp_path):
    """A finished tiny workflow of its own: baseline and symm, one seed (a copy of the session's run)."""
    config, workdir = finished_baseline_symm
    return copy.deepcopy(config), copy_of(workdir, tmp_path)


def test_the_same_params_spelled_otherwise_rerun_nothing_and_a_change_reruns(finished):
    config, workdir = finished
    training = dict(config["training"])
    # Another key order, a default restated (the registry's lr_scheduler), numbers spelled otherwise.
    restated = {"lr_scheduler": "cosine", **dict(reversed(list(training.items())))}
    restated["epochs"] = float(training["epochs"])
    restated["lr"] = f"{training['lr']:.0e}"  # 0.001 -> '1e-03'
    same = snakemake(workdir, "-n", "--config", f"training={flow(restated)}")
    assert "Nothing to be done" in same.output, same.output
    changed = snakemake(workdir, "-n", "--config", f"training={flow({**training, 'epochs': 2})}")
    assert "train " in changed.output and "evaluate " in changed.output and "table " in changed.output
    # A loss param of symm's control reaches baseline and symm alike; nothing else changes.
    loss = snakemake(workdir, "-n", "--config", "loss_params={multi_similarity: {beta: 45}}")
    assert "Nothing to be done" not in loss.output and "prepare_data" not in loss.output


def test_a_failed_retraining_leaves_nothing_that_looks_current(finished):
    config, workdir = finished
    results = workdir / "results"
    run = results / "runs" / "digits" / "symm" / "multi_similarity" / "seed0"
    assert all((results / name).is_file() for name in TABLE_FILES) and (run / "metrics.json").is_file()
    # Longer training re-trains every run, and a training image that went missing makes each fail.
    victim = sorted((workdir / "data" / "digits" / "images" / "0").iterdir())[0]
    kept = victim.read_bytes()
    victim.unlink()
    longer = f"training={flow({**config['training'], 'epochs': 2})}"
    failed = snakemake(workdir, "--keep-going", "--config", longer, check=False)
    log = (workdir / "logs" / "train" / "digits" / "symm" / "multi_similarity" / "seed0.log").read_text()
    assert failed.returncode != 0 and "missing image" in log, log
    for name in TABLE_FILES:
        assert not (results / name).exists(), f"{name} of the old runs is still there after a failed re-training"
    for name in ("metrics.json", "queries.npz", "run.yaml", "embeddings.npz"):
        assert not (run / name).exists(), name
    # With the image back, everything is rebuilt (nothing of it was current).
    victim.write_bytes(kept)
    rebuilt = snakemake(workdir, "--config", longer)
    assert "train " in rebuilt.output and all((results / name).is_file() for name in TABLE_FILES)


def test_a_deleted_run_is_trained_again(finished):
    _, workdir = finished
    run = workdir / "results" / "runs" / "digits" / "symm" / "multi_similarity" / "seed0"
    shutil.rmtree(run)
    plan = snakemake(workdir, "-n")
    assert "Nothing to be done" not in plan.output and "train " in plan.output
    (workdir / "results" / "runs" / "digits" / "baseline" / "multi_similarity" / "seed0" / "model.pt").unlink()
    plan = snakemake(workdir, "-n", "results/table.csv")
    assert plan.output.count("rule train:") == 2, plan.output
