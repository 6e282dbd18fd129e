"""Image datasets read from a manifest, the transforms of docs/methods.md §1, and how a batch reaches the model.

:class:`ImageInput` is the one object the training code asks: it makes the
datasets the loader workers read, the loader's collate function, and the
last step on the training device (:meth:`ImageInput.to_model`).

- **Grayscale** (digits): PIL image -> light affine jitter -> ``ToTensor`` ->
  ``Normalize`` in the loader; the device step only moves the batch.
- **Photos** (RGB), ``training.image_decoding: workers`` (default): loader
  workers decode with PIL and crop (``RandomResizedCrop`` + flip for
  training, ``Resize`` + ``CenterCrop`` for evaluation) to **uint8** tensors,
  a quarter of the bytes of float ones to pass between processes and to copy
  to the GPU; the device converts to float and normalises with the ImageNet
  mean and std (the same arithmetic ``ToTensor`` + ``Normalize`` does).
- **Photos**, ``image_decoding: device``: workers only read the JPEG bytes
  and draw the crop; the batch is decoded on the training device
  (``torchvision.io.decode_jpeg``: nvJPEG on CUDA) and cropped and resized
  there. Takes the decoding off the CPU when it has few cores per GPU.

Random augmentation of photos draws from a seed per sample that
:class:`SeededSampler` hands out with each index (from the global torch
stream, which checkpoints hold): a crop does not depend on which worker loads
the image, so loader workers persist across epochs and a resumed run draws
the crops an uninterrupted one would.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms import v2

from dmlsynth.data.errors import DataError
from dmlsynth.data.preprocessing import (  # noqa: F401 (re-exported: the transforms' settings)
    EVAL_TRANSFORMS,
    MARGIN_FRACTION,
    RANDOM_CROP_SCALE,
    TRAIN_TRANSFORMS,
    Preprocessing,
    eval_resize,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Where an RGB batch is decoded (training.image_decoding).
DECODINGS = ("workers", "device")


class MarginCrop:
    """Cut the same random margin, 1 to 5 % of the short side, from every side of a ``(C, H, W)`` image."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        most = int(min(height, width) * MARGIN_FRACTION)
        if most <= 1:  # too small to cut a margin from (the official code then keeps the image)
            return image
        margin = int(torch.randint(1, most, ()).item())
        return image[..., margin : height - margin, margin : width - margin]


def build_transform(image_mode: str, image_size: int, train: bool, preprocessing: Preprocessing | None = None) -> Callable:
    """Grayscale: normalised float tensors. RGB: uint8 tensors, normalised on the device (:class:`NormalizeOnDevice`)."""
    if image_mode == "L":
        ops = [T.Resize(image_size)] if image_size != 8 else []
        if train:
            ops.append(T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
        return T.Compose(ops + [T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    pre = preprocessing or Preprocessing()
    square = [v2.Resize((eval_resize(image_size),) * 2, antialias=True)] if pre.square_resize else []
    if train and pre.train_transform == "resized_random_crop":
        side = int(image_size * RANDOM_CROP_SCALE)
        ops = [MarginCrop(), v2.Resize((side, side), antialias=True), v2.RandomCrop(image_size), v2.RandomHorizontalFlip()]
    elif train:
        ops = [*square, v2.RandomResizedCrop(image_size, scale=pre.crop_scale, antialias=True), v2.RandomHorizontalFlip()]
    elif pre.eval_transform == "resize":
        ops = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        ops = [*(square or [v2.Resize(eval_resize(image_size), antialias=True)]), v2.CenterCrop(image_size)]
    return v2.Compose([v2.PILToTensor(), *ops])


# The manifest's optional bounding-box columns: fractions of the image's width and height (so a box fits the
# resized copy as well as the original); empty for images without a box (generated images).
BOX_COLUMNS = ("box_left", "box_top", "box_right", "box_bottom")


def crop_to_box(image: Image.Image, box: Sequence[float] | None) -> Image.Image:
    """``image`` cut to ``box`` (fractions of its size), or as it is without one."""
    if box is None or any(v != v for v in box):  # no box (NaN)
        return image
    width, height = image.size
    left, top, right, bottom = (round(f * n) for f, n in zip(box, (width, height, width, height)))
    if right - left < 1 or bottom - top < 1:
        return image
    return image.crop((left, top, right, bottom))


def _split(item: Any) -> tuple[int, int | None]:
    """A sampler gives an index, or (index, seed) through :class:`SeededSampler`."""
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), None


def _seeded(seed: int | None, draw: Callable[[], Any]) -> Any:
    if seed is None:
        return draw()
    # The transforms draw from the global (CPU) torch stream: give it this sample's seed, then restore it.
    # (torch.manual_seed would also queue a CUDA seeding, which costs more than a crop.)
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        return draw()
    finally:
        torch.set_rng_state(state)


class ImageError(DataError):
    """An image of a manifest cannot be read."""


# What to tell the user about an unreadable image that no ``fixes`` entry covers.
DEFAULT_FIX = "the dataset folder is damaged: delete it and prepare the dataset again"
# What PIL raises on a file that is not a (whole) image.
UNREADABLE = (OSError, UnidentifiedImageError, SyntaxError, ValueError)


def _unreadable(file: str, exc: Exception, fixes: Mapping[str, str]) -> ImageError:
    return ImageError(f"cannot read image {file} ({exc}); {fixes.get(file, DEFAULT_FIX)}")


class ImageDataset(Dataset):
    """Images from files with integer targets; small datasets are held in memory."""

    def __init__(
        self,
        files: Sequence[str],
        targets: Sequence[int],
        image_mode: str,
        transform: Callable,
        cache: bool = False,
        fixes: Mapping[str, str] | None = None,
        boxes: Sequence[Sequence[float] | None] | None = None,
    ):
        if len(files) != len(targets):
            raise ValueError("files and targets differ in length")
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.image_mode = image_mode
        self.transform = transform
        # What to tell the user when an image cannot be read (default: prepare the dataset again).
        self.fixes = dict(fixes or {})
        # Each image's bounding box (fractions of its size), cut before the transform; None: whole images.
        self.boxes = list(boxes) if boxes is not None else None
        if self.boxes is not None and len(self.boxes) != len(self.files):
            raise ValueError("files and boxes differ in length")
        self._cache = [self._open(i) for i in range(len(self.files))] if cache else None

    def _open(self, index: int) -> Image.Image:
        file = self.files[index]
        try:
            with Image.open(file) as image:
                return crop_to_box(image.convert(self.image_mode), self.boxes[index] if self.boxes is not None else None)
        except UNREADABLE as exc:
            raise _unreadable(file, exc, self.fixes) from exc

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: Any) -> tuple[torch.Tensor, int]:
        index, seed = _split(item)
        image = self._cache[index] if self._cache is not None else self._open(index)
        return _seeded(seed, lambda: self.transform(image)), self.targets[index]


class EncodedImageDataset(Dataset):
    """JPEG bytes and the crop to take from them; :class:`DecodeOnDevice` decodes and crops the batch.

    Each item is ``((bytes, crop), target)`` with ``crop = [top, left, height,
    width, flip]`` in the original image's pixels for training, and all ``-1``
    for evaluation (resize and center crop on the device).
    """

    def __init__(
        self,
        files: Sequence[str],
        targets: Sequence[int],
        image_size: int,
        train: bool,
        fixes: Mapping[str, str] | None = None,
    ):
        if len(files) != len(targets):
            raise ValueError("files and targets differ in length")
        self.files = list(files)
        self.targets = [int(t) for t in targets]
        self.image_size = image_size
        self.train = train
        self.fixes = dict(fixes or {})
        self._crop = v2.RandomResizedCrop(image_size, antialias=True)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        index, seed = _split(item)
        file = self.files[index]
        try:
            with open(file, "rb") as handle:
                data = handle.read()
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                kind, mode, (width, height) = image.format, image.mode, image.size
                progressive = bool(image.info.get("progressive") or image.info.get("progression"))
        except UNREADABLE as exc:
            raise _unreadable(file, exc, self.fixes) from exc
        if kind != "JPEG" or mode not in ("RGB", "L") or progressive:
            what = f"a {kind} image in mode {mode}" + (" (progressive)" if progressive else "")
            raise ImageError(
                f"{file} is {what}; training.image_decoding: device decodes baseline RGB or grayscale JPEG only. "
                "Use image_decoding: workers, or the resized copy (dataset_settings cache_short_side), whose "
                "images all are"
            )
        if self.train:

            def draw() -> list[int]:
                # make_params reads only the size: a zero-stride stand-in of the image allocates nothing.
                box = self._crop.make_params([torch.empty(1, 1, 1, dtype=torch.uint8).expand(1, height, width)])
                flip = bool(torch.rand(1) < 0.5)
                return [box["top"], box["left"], box["height"], box["width"], int(flip)]

            crop = torch.tensor(_seeded(seed, draw), dtype=torch.int64)
        else:
            crop = torch.full((5,), -1, dtype=torch.int64)
        return (torch.frombuffer(bytearray(data), dtype=torch.uint8), crop), self.targets[index]


def collate_encoded(batch: Sequence[tuple[tuple[torch.Tensor, torch.Tensor], int]]) -> tuple[tuple[list[torch.Tensor], torch.Tensor], torch.Tensor]:
    """JPEGs differ in length: keep them as a list; stack the crops and targets."""
    data = [item[0][0] for item in batch]
    crops = torch.stack([item[0][1] for item in batch])
    return (data, crops), torch.tensor([item[1] for item in batch], dtype=torch.int64)


class SeededSampler(Sampler):
    """Yields ``(index, seed)`` for every index of ``sampler``; the seed fixes that sample's augmentation.

    The seeds of an epoch are drawn from the global torch stream when the
    epoch's iteration starts, in the main process.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.sampler)
        seeds = torch.randint(0, 2**62, (len(indices),), dtype=torch.int64).tolist()
        return iter(list(zip(indices, seeds)))


class _DeviceNormalizer:
    """ImageNet normalisation of 0..255 values, with the constants kept on each device used."""

    def __init__(self):
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # The arithmetic of ToTensor + Normalize, in the same order: the same numbers on CPU.
        if images.device not in self._constants:
            mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
            std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
            self._constants[images.device] = (mean, std)
        mean, std = self._constants[images.device]
        return images.to(torch.float32).div_(255).sub_(mean).div_(std)


class DecodeOnDevice:
    """Decode a batch of JPEGs on ``device`` and crop, flip and resize each image there."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.normalize = _DeviceNormalizer()

    def __call__(self, batch: tuple[list[torch.Tensor], torch.Tensor], device: torch.device) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2 import functional as F

        data, crops = batch
        with warnings.catch_warnings():
            # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work.
            warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision", category=DeprecationWarning)
            decoded = decode_jpeg([d.cpu() for d in data], mode=ImageReadMode.RGB, device=device)
        size = [self.image_size, self.image_size]
        out = torch.empty((len(decoded), 3, *size), dtype=torch.float32, device=device)
        for i, (image, (top, left, height, width, flip)) in enumerate(zip(decoded, crops.tolist())):
            image = image.to(torch.float32)
            if height < 0:  # evaluation: resize the short side, then the center crop
                image = F.center_crop(F.resize(image, [eval_resize(self.image_size)], antialias=True), size)
            else:
                image = F.resized_crop(image, top, left, height, width, size, antialias=True)
                if flip:
                    image = image.flip(-1)
            out[i] = image
        return self.normalize(out.clamp_(0, 255))


class ImageInput:
    """How the images of one dataset become model inputs (see the module docstring)."""

    def __init__(self, image_mode: str, image_size: int, decoding: str = "workers", preprocessing: Preprocessing | None = None):
        if decoding not in DECODINGS:
            raise ValueError(f"image decoding {decoding!r} is not one of {DECODINGS}")
        self.preprocessing = preprocessing or Preprocessing()
        if decoding == "device" and image_mode != "L" and not self.preprocessing.is_default:
            raise ValueError(
                "training.image_decoding: device crops with the default transforms only; use image_decoding: workers "
                "with train_transform, eval_transform, square_resize, crop_scale or bounding_boxes"
            )
        self.image_mode = image_mode
        self.image_size = int(image_size)
        # Grayscale images are tiny and held in memory: they are always decoded by PIL.
        self.decoding = decoding if image_mode != "L" else "workers"
        self._normalize = _DeviceNormalizer()
        self._decode = DecodeOnDevice(self.image_size) if self.decoding == "device" else None

    @property
    def seeded(self) -> bool:
        """Augmentation draws from per-sample seeds (:class:`SeededSampler`): photos; digits keep the global stream."""
        return self.image_mode != "L"

    def dataset(
        self,
        files: Sequence[str],
        targets: Sequence[int],
        train: bool,
        in_memory: bool = False,
        fixes: Mapping[str, str] | None = None,
        boxes: Sequence[Sequence[float] | None] | None = None,
    ) -> Dataset:
        """``fixes``: what to tell the user about an unreadable file (e.g. a generated image: delete its part);
        ``boxes``: each image's bounding box, with ``bounding_boxes`` on."""
        if self.decoding == "device":
            return EncodedImageDataset(files, targets, self.image_size, train, fixes)
        transform = build_transform(self.image_mode, self.image_size, train=train, preprocessing=self.preprocessing)
        return ImageDataset(files, targets, self.image_mode, transform, cache=in_memory, fixes=fixes, boxes=boxes)

    @property
    def collate_fn(self) -> Callable | None:
        return collate_encoded if self.decoding == "device" else None

    def to_model_parts(self, parts: Sequence[Any], device: torch.device) -> torch.Tensor:
        """Loader batches that make one training batch, joined on ``device`` (the same numbers as one batch)."""
        if len(parts) == 1:
            return self.to_model(parts[0], device)
        if self._decode is not None:
            return self._decode(([d for data, _ in parts for d in data], torch.cat([crops for _, crops in parts])), device)
        images = torch.cat([part.to(device, non_blocking=True) for part in parts])
        return images if self.image_mode == "L" else self._normalize(images)

    def to_model(self, batch: Any, device: torch.device) -> torch.Tensor:
        """A loader batch (without targets) as the float input of the model, on ``device``."""
        if self._decode is not None:
            return self._decode(batch, device)
        images = batch.to(device, non_blocking=True)
        if self.image_mode == "L":
            return images  # normalised by the transform in the loader
        return self._normalize(images)
