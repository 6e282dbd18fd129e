"""Image features and the fidelity classifier, shared by the filter and the generation report.

Grayscale images are their own standardised pixels; photos are ImageNet ResNet-50 pooled features,
computed on the generation device (:func:`features`). :func:`fidelity_classifier` is the logistic
regression on those features that both the fidelity filter (:mod:`dmlsynth.generation.filtering`)
and the report's fidelity (:mod:`dmlsynth.generation.quality`) train on the real training images.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


def load_images(files: Sequence[str], image_mode: str, size: int) -> np.ndarray:
    """``(N, size, size[, 3])`` uint8 arrays."""
    from PIL import Image

    arrays = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert(image_mode)
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            arrays.append(np.asarray(image, dtype=np.uint8))
    return np.stack(arrays)


class _ImageFiles:
    """The ResNet-50 input of each file (a map-style dataset for torch's DataLoader)."""

    def __init__(self, files: Sequence[str], transform):
        self.files, self.transform = list(files), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB"))


@functools.lru_cache(maxsize=2)
def _feature_network(pretrained: bool, device: str):
    """ResNet-50 without its classifier on ``device``; one per report, shared by the real and generated images."""
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    # Without ImageNet weights (tests, offline) the random network is the same in every call.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = resnet50(weights=ResNet50_Weights.IMAGENET1K_V1 if pretrained else None)
    model.fc = torch.nn.Identity()
    return model.to(device).eval()


def features(
    files: Sequence[str],
    image_mode: str,
    image_size: int,
    pretrained: bool = True,
    device: str = "cpu",
    threads: int = 1,
    batch_size: int = 64,
) -> np.ndarray:
    """Feature vectors the fidelity classifier and the diversity measure use.

    Grayscale: the pixels. RGB: ImageNet ResNet-50 pooled features on
    ``device`` (``auto``, ``cpu``, ``cuda``), ``threads`` processes decoding.
    """
    if image_mode == "L":
        return load_images(files, "L", image_size).reshape(len(files), -1).astype(np.float64) / 255.0
    import torch
    from torchvision.models import ResNet50_Weights

    from dmlsynth.device import pick_device

    target = pick_device(str(device), "generation.<dataset>.device")
    model = _feature_network(pretrained, str(target))
    loader = torch.utils.data.DataLoader(
        _ImageFiles(files, ResNet50_Weights.IMAGENET1K_V1.transforms()),
        batch_size=batch_size,
        num_workers=max(0, int(threads) - 1),  # the main process runs the model
        pin_memory=target.type == "cuda",
    )
    out = []
    with torch.no_grad():
        for batch in loader:
            out.append(model(batch.to(target, non_blocking=True)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def fidelity_classifier(seed: int = 0):
    """The (unfitted) classifier of fidelity and of the ``fidelity`` filter: standardised features,
    logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=seed))
