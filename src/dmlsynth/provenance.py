"""What produced a number: code version and software environment."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = [
    "dmlsynth",
    "torch",
    "torchvision",
    "pytorch-metric-learning",
    "faiss-cpu",
    "numpy",
    "pandas",
    "scikit-learn",
    "diffusers",
    "transformers",
    "snakemake",
    "mlflow",
    "dvc",
]


def code_version(root: str | Path | None = None) -> dict[str, str | bool]:
    """The git commit of the project (and whether the tree had local changes)."""
    root = Path(root) if root else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty, "dmlsynth_version": _version("dmlsynth")}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(device: str | None = None) -> dict[str, str]:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    env.update({f"package.{name}": _version(name) for name in PACKAGES})
    if device is not None:
        env["device"] = device
    try:
        import torch

        env["torch.cuda"] = torch.version.cuda or "none"
        env["torch.threads"] = str(torch.get_num_threads())
        if device and device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return env
