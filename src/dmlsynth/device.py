"""Choosing the torch device from a config value."""

from __future__ import annotations

import torch


def pick_device(requested: str, setting: str = "device") -> torch.device:
    """``auto`` = CUDA when present, else CPU; ``cuda`` without a GPU is an error naming ``setting``."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting} is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
