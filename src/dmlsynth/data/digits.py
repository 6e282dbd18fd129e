"""The embedded default: UCI handwritten digits as shipped inside scikit-learn.

No download: ``sklearn.datasets.load_digits`` reads the copy bundled with the
package. Images are written as 8x8 grayscale PNGs so that every dataset,
embedded or real, reaches training the same way (files + manifest).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from PIL import Image

from dmlsynth import layout
from dmlsynth.io import atomic_directory
from dmlsynth.data.manifest import class_disjoint_split, write_manifest

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def prepare(settings: Mapping[str, Any], out_dir: Path, raw_dir: Path, log: logging.Logger) -> Path:
    del raw_dir  # nothing to download: the data ships inside scikit-learn
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(int)
    split = class_disjoint_split(labels)

    out_dir = Path(out_dir)
    rows = []
    with atomic_directory(out_dir / layout.IMAGES) as staging:
        for index, (image, label) in enumerate(zip(images, labels)):
            relative = f"{label}/{index:04d}.png"
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(staging / relative)
            rows.append({"path": f"{layout.IMAGES}/{relative}", "label": label, "class_name": NAMES[label], "split": split[label]})
    frame = pd.DataFrame(rows)
    log.info(
        "digits: %d images, %d train classes (%d images), %d test classes (%d images)",
        len(frame),
        frame.loc[frame.split == "train", "label"].nunique(),
        int((frame.split == "train").sum()),
        frame.loc[frame.split == "test", "label"].nunique(),
        int((frame.split == "test").sum()),
    )
    return write_manifest(frame, out_dir / layout.MANIFEST)
