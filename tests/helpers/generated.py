"""A generated image set made without a generator: for training tests of the data-level methods."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

from dmlsynth.data.manifest import read_manifest, write_manifest


def mirrored_image_set(manifest: Path, out_dir: Path, per_class: int = 40) -> Path:
    """An image-set manifest of ``per_class`` mirrored copies of each training class's first real images
    (labels kept, split ``train``), as the generation stage's ``merge_generated`` writes one."""
    frame = read_manifest(manifest)
    train = frame[frame["split"] == "train"]
    rows = []
    for label, part in train.groupby("label", sort=True):
        for i, file in enumerate(part["file"].iloc[:per_class]):
            path = Path("images") / f"class{label}" / f"{i:04d}.png"
            (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
            ImageOps.mirror(Image.open(file)).save(out_dir / path)
            rows.append({"path": path.as_posix(), "label": int(label), "class_name": part["class_name"].iloc[0], "split": "train"})
    return write_manifest(pd.DataFrame(rows), out_dir / "manifest.csv")
