"""Photo-like JPEGs and small photo datasets (manifest + images) made at test time."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from dmlsynth.data.manifest import write_manifest


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB image (blocks of colour, upsampled) with some fine noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))


def write_photo_dataset(folder: Path, sizes: Sequence[tuple[int, int]], classes: int = 2, quality: int = 90) -> Path:
    """JPEGs of the given sizes under ``folder/images``, labels 1..classes cycling (first half train); returns the manifest."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (width, height) in enumerate(sizes):
        label = i % classes + 1
        path = f"images/{i:04d}.jpg"
        photo(width, height, seed=i).save(folder / path, quality=quality)
        rows.append({"path": path, "label": label, "class_name": f"class {label}", "split": "train" if label <= classes // 2 else "test"})
    return write_manifest(pd.DataFrame(rows), folder / "manifest.csv")
