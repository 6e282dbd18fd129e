"""A training job run as the workflow runs it (``dmlsynth train --job``) and by hand (``--config``) computes with
the instruction set of its record: run.yaml says which, torch's dispatch shows it, and the numbers are those of
the CPU libraries pinned by hand."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import cpu_isa, jobs
from tests.conftest import small_config

pytestmark = pytest.mark.slow


def _config(default_params, digits_dir, results, level):
    config = small_config(default_params, digits_dir, results, epochs=1, batches_per_epoch=2)
    config.update(methods=["baseline"], seeds=[0], tracking={"enabled": False}, reproducibility={"cpu_isa": level})
    return cfg.validate(config)


def _train(command, env=None):
    result = subprocess.run([sys.executable, "-m", "dmlsynth", *command], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in {n for v in cpu_isa.VARIABLES.values() for n in v}}


@pytest.mark.skipif(cpu_isa.missing_flags("avx2"), reason="this CPU lacks AVX2: the pinned level cannot run here")
def test_a_training_job_computes_with_its_records_instruction_set(default_params, digits_dir, tmp_path):
    config = _config(default_params, digits_dir, tmp_path / "pinned", "avx2")
    job = jobs.Jobs(config).train(**jobs.Jobs(config).runs[0])
    _train(["train", "--job", job.to_json(), "--no-progress"], env=_clean_env())
    record = yaml.safe_load(open(job.outputs["record"]))
    assert record["cpu_isa"] == "avx2" and record["environment"]["cpu_isa"] == "avx2"
    assert record["environment"]["cpu_isa.torch_dispatch"] == "AVX2"

    # By hand from --config: numpy has loaded before the record is known, so the command starts again pinned.
    by_hand = tmp_path / "by_hand.yaml"
    by_hand.write_text(yaml.safe_dump({**config, "paths": {**config["paths"], "results": str(tmp_path / "by_hand")}}))
    run = jobs.Jobs(config).runs[0]
    result = _train(
        ["train", "--config", str(by_hand), "--dataset", "digits", "--method", run["method"], "--loss", run["loss"],
         "--seed", "0", "--no-progress"], env=_clean_env(),
    )  # fmt: skip
    assert "starting again with the CPU libraries pinned to avx2" in result.stderr
    again = tmp_path / "by_hand" / os.path.relpath(job.outputs["embeddings"], config["paths"]["results"])
    assert np.array_equal(np.load(again)["embeddings"], np.load(job.outputs["embeddings"])["embeddings"])

    # The variables set by hand on a native job give the pinned job's bits: the record's level is what decides.
    native = _config(default_params, digits_dir, tmp_path / "native", "native")
    native_job = jobs.Jobs(native).train(**jobs.Jobs(native).runs[0])
    _train(["train", "--job", native_job.to_json(), "--no-progress"], env={**_clean_env(), **cpu_isa.VARIABLES["avx2"]})
    assert np.array_equal(np.load(native_job.outputs["embeddings"])["embeddings"], np.load(job.outputs["embeddings"])["embeddings"])
