"""Image datasets read from a manifest, and the transforms of METHODS.md §1."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(image_mode: str, image_size: int, train: bool) -> Callable:
    """Small grayscale images (digits): light affine jitter; RGB photos: the papers' crops."""
    if image_mode == "L":
        ops = [T.Resize(image_size)] if image_size != 8 else []
        if train:
            ops.append(T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
        return T.Compose(ops + [T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    if train:
        ops = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        ops = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageDataset(Dataset):
    """Images from files with integer targets; small datasets are held in memory."""

    def __init__(
        self,
        files: Sequence[str],
        targets: Sequence[int],
        image_mode: str,
        transform: Callable,
        cache: bool = False,
    ):
        if len(files) != len(targets):
            raise ValueError("files and targets differ in length")
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.image_mode = image_mode
        self.transform = transform
        self._cache = [self._open(f) for f in self.files] if cache else None

    def _open(self, file: str) -> Image.Image:
        try:
            with Image.open(file) as image:
                return image.convert(self.image_mode)
        except (OSError, UnidentifiedImageError) as exc:
            raise RuntimeError(
                f"cannot read image {file} ({exc}); the dataset folder is damaged: delete it and prepare it again"
            ) from exc

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._cache[index] if self._cache is not None else self._open(self.files[index])
        return self.transform(image), self.targets[index]
