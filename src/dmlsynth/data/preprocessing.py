"""How photos are cropped and resized: the settings of the transforms (torch-free: config validation reads them).

:mod:`dmlsynth.data.images` builds the transforms from a :class:`Preprocessing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


def eval_resize(image_size: int) -> int:
    """Short side the evaluation transform resizes to before its center crop (256 for 224)."""
    return round(image_size * 256 / 224)


# training: how a photo becomes a training crop (dataset_settings.<dataset>.train_transform).
TRAIN_TRANSFORMS = ("random_resized_crop", "resized_random_crop")
# evaluation: center crop of the resized image, or the whole image resized (dataset_settings.<dataset>.eval_transform).
EVAL_TRANSFORMS = ("center_crop", "resize")
# Symmetrical Synthesis's code (clovaai/symmetrical-synthesis dataset/data_load.py): a random margin of 1 to 5 %
# of the short side cut from every side, the image resized to a square of 1.125 x the crop, a random crop.
MARGIN_FRACTION = 0.05
RANDOM_CROP_SCALE = 1.125


@dataclass(frozen=True)
class Preprocessing:
    """How photos are cropped and resized (the dataset settings of the same names; defaults: docs/methods.md §1).

    - ``train_transform``: ``random_resized_crop`` (RandomResizedCrop of ``crop_scale`` + flip: Proxy-Anchor's,
      IAA's) or ``resized_random_crop`` (Symmetrical Synthesis's code: random 1-5 % margin crop, square resize
      to 1.125 x image_size, random crop, flip);
    - ``eval_transform``: ``center_crop`` (resize, then the center crop) or ``resize`` (the whole image to
      image_size x image_size: Symmetrical Synthesis's test.py);
    - ``square_resize``: every image is first resized to a square of image_size x 256/224 (IAA's code on Cars,
      SOP and In-Shop: "resized to 256 x 256 first");
    - ``bounding_boxes``: images are cut to their annotated box first (Cars-196, Symmetrical Synthesis's
      cooking_CARS.py); the manifest's ``box_*`` columns hold it.
    """

    train_transform: str = "random_resized_crop"
    eval_transform: str = "center_crop"
    square_resize: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    bounding_boxes: bool = False

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> "Preprocessing":
        return cls(
            train_transform=str(settings.get("train_transform", cls.train_transform)),
            eval_transform=str(settings.get("eval_transform", cls.eval_transform)),
            square_resize=bool(settings.get("square_resize", cls.square_resize)),
            crop_scale=tuple(float(v) for v in settings.get("crop_scale", cls.crop_scale)),  # type: ignore[arg-type]
            bounding_boxes=bool(settings.get("bounding_boxes", cls.bounding_boxes)),
        )

    @property
    def is_default(self) -> bool:
        return self == Preprocessing()

    def smallest_source_side(self, image_size: int) -> int:
        """The short side a source image needs so that no transform enlarges it (for the resized copy)."""
        sides = [image_size]
        if self.eval_transform == "center_crop" or self.square_resize:
            sides.append(eval_resize(image_size))
        if self.train_transform == "resized_random_crop":
            sides.append(int(image_size * RANDOM_CROP_SCALE))
        return max(sides)
