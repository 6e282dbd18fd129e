"""Running the real Snakemake workflow (and the CLI) on tiny configs in a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, small_config


def snakemake(
    workdir: Path, *args: str, check: bool = True, cores: int = 2, env: dict | None = None, timeout: int = 900,
    snakefile: Path = ROOT / "Snakefile",
):  # fmt: skip
    """Snakemake in ``workdir`` with the repository's Snakefile; raises with its output on failure."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir),
        "--cores", str(cores), *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    result.output = result.stdout + result.stderr
    return result


def tiny_workflow(default_params: dict, workdir: Path, **overrides) -> dict:
    """A params.yaml in ``workdir`` that runs in seconds: relative paths, 1 epoch of 2 batches, tracking off."""
    config = small_config(default_params, workdir / "data", workdir / "results", epochs=1, batches_per_epoch=2)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config["tracking"] = {"enabled": False}
    config.update(overrides)
    (workdir / "params.yaml").write_text(yaml.safe_dump(config))
    return config


def project_copy(folder: Path) -> Path:
    """A copy of the project's workflow and package in ``folder``, for a test that runs (or edits) its own copy:
    the workflow refuses a package of another checkout, so its commands take ``PYTHONPATH=<folder>/src``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "rules", "report", "src", "environment.yml", "environment.post-deploy.sh"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, folder / name)
    return folder


def copy_of(finished: Path, workdir: Path) -> Path:
    """A copy of the finished workflow folder ``finished`` in ``workdir`` (Snakemake's records included, every
    file's modification time kept: Snakemake compares them), for a test that changes it. The folder's paths
    are relative (:func:`tiny_workflow`), so the copy is a finished workflow of its own."""
    shutil.copytree(finished, workdir, symlinks=True, dirs_exist_ok=True)
    return workdir
