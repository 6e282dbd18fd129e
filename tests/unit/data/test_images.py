"""How images become model inputs: uint8 photo batches, normalisation on the device, decoding on the device, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, SequentialSampler
from torchvision import transforms as T

from dmlsynth.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageError, ImageInput, SeededSampler
from dmlsynth.data.manifest import read_manifest
from tests.helpers.images import write_photo_dataset

SIZES = [(320, 240), (240, 320), (300, 300), (200, 150), (280, 210), (330, 250)]


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> list[str]:
    frame = read_manifest(write_photo_dataset(tmp_path_factory.mktemp("photos"), SIZES))
    return frame["file"].tolist()


def test_device_normalisation_is_the_arithmetic_of_totensor_and_normalize(device):
    pixels = torch.randint(0, 256, (2, 3, 20, 24), dtype=torch.uint8)
    expected = torch.stack(
        [T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(Image.fromarray(p.permute(1, 2, 0).numpy()))) for p in pixels]
    )
    result = ImageInput("RGB", 20).to_model(pixels, torch.device(device))
    assert result.device.type == device
    if device == "cpu":
        assert torch.equal(result, expected)  # bit for bit: photo runs on the CPU keep their numbers
    else:
        torch.testing.assert_close(result.cpu(), expected)


def test_grayscale_batches_are_only_moved(device):
    images = ImageInput("L", 8)
    batch = torch.randn(4, 1, 8, 8)
    assert images.decoding == "workers" and ImageInput("L", 8, "device").decoding == "workers"
    moved = images.to_model(batch, torch.device(device))
    assert moved.device.type == device and torch.equal(moved.cpu(), batch)


@pytest.mark.parametrize("train", [True, False])
def test_photo_items_are_uint8_crops(photo_files, train):
    dataset = ImageInput("RGB", 64).dataset(photo_files, list(range(len(photo_files))), train=train)
    image, target = dataset[(2, 7)] if train else dataset[2]
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64) and target == 2


def test_a_seed_fixes_the_crop_and_leaves_the_global_stream_alone(photo_files):
    dataset = ImageInput("RGB", 64).dataset(photo_files, [0] * len(photo_files), train=True)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = dataset[(1, 123)][0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)  # another global state: same seed, same crop
    assert torch.equal(dataset[(1, 123)][0], a)
    assert not torch.equal(dataset[(1, 124)][0], a)


def test_decoding_on_the_device_gives_the_workers_crops(photo_files, device):
    targets = list(range(len(photo_files)))
    items = [(i, 1000 + i) for i in range(len(photo_files))]
    workers, on_device = ImageInput("RGB", 64, "workers"), ImageInput("RGB", 64, "device")
    for train in (True, False):
        a = workers.dataset(photo_files, targets, train=train)
        b = on_device.dataset(photo_files, targets, train=train)
        x = workers.to_model(torch.stack([a[i][0] for i in items]), torch.device(device))
        (encoded, labels) = on_device.collate_fn([b[i] for i in items])
        y = on_device.to_model(encoded, torch.device(device))
        assert y.device.type == device and y.shape == x.shape == (len(items), 3, 64, 64)
        assert labels.tolist() == targets
        # The same boxes and flips; only rounding to uint8 and the JPEG decoders differ (about one level).
        level = 1 / (255 * min(IMAGENET_STD))
        assert (x - y).abs().max() <= 3 * level
        assert (x - y).abs().mean() <= 0.5 * level


def test_decoding_on_the_device_refuses_what_nvjpeg_cannot_read_with_advice(tmp_path):
    pixels = np.zeros((40, 40, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).save(tmp_path / "p.jpg", progressive=True)
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "c.jpg")
    files = [str(tmp_path / name) for name in ("a.png", "p.jpg", "c.jpg")]
    dataset = ImageInput("RGB", 32, "device").dataset(files, [0, 0, 0], train=True)
    for i, what in enumerate(["PNG image", r"\(progressive\)", "mode CMYK"]):
        with pytest.raises(ImageError, match=f"{what}.*image_decoding: workers, or the resized copy"):
            dataset[(i, 1)]


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    for decoding in ("workers", "device"):
        dataset = ImageInput("RGB", 32, decoding).dataset([str(tmp_path / "bad.jpg")], [0], train=False)
        with pytest.raises(ImageError, match="bad.jpg.*prepare the dataset again"):
            dataset[0]


def test_seeded_sampler_pairs_each_index_with_a_seed_from_the_global_stream():
    sampler = SeededSampler(SequentialSampler(range(5)))
    torch.manual_seed(3)
    first = list(sampler)
    torch.manual_seed(3)
    assert list(sampler) == first
    assert [i for i, _ in first] == [0, 1, 2, 3, 4] and len(sampler) == 5
    assert len({s for _, s in first}) == 5


@pytest.mark.parametrize("decoding", ["workers", "device"])
def test_crops_do_not_depend_on_the_worker_that_loads_them(photo_files, decoding):
    images = ImageInput("RGB", 48, decoding)
    dataset = images.dataset(photo_files, list(range(len(photo_files))), train=True)

    def epoch(workers: int) -> torch.Tensor:
        torch.manual_seed(5)
        loader = DataLoader(
            dataset, batch_size=3, sampler=SeededSampler(SequentialSampler(dataset)), num_workers=workers,
            collate_fn=images.collate_fn, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        return torch.cat([images.to_model(batch, torch.device("cpu")) for batch, _ in loader])

    assert torch.equal(epoch(0), epoch(2))
