"""The resized JPEG copy of a photo dataset: sizes, reuse, invalidation, and what training gets from it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dmlsynth.data import image_cache
from dmlsynth.data.image_cache import ImageCacheError, build_cache, open_cache, resized_size
from dmlsynth.data.images import ImageInput
from dmlsynth.data.manifest import read_manifest, write_manifest
from tests.helpers.images import photo, write_photo_dataset

SIZES = [(500, 375), (375, 500), (320, 300), (200, 150), (256, 400)]


@pytest.fixture
def photos(tmp_path):
    return write_photo_dataset(tmp_path / "ds", SIZES)


@pytest.mark.parametrize("size", SIZES + [(257, 256), (256, 257), (1000, 999)])
def test_resized_size_is_torchvision_resize(size):
    image = Image.new("RGB", size)
    expected = T.Resize(256)(image).size if min(size) > 256 else size
    assert resized_size(*size, 256) == expected


def test_copies_are_rgb_jpegs_of_the_resized_size(photos):
    index = build_cache(photos, 256, threads=2, progress=False)
    assert index == photos.parent / "resized" / "index.csv"
    table = pd.read_csv(index)
    frame = read_manifest(photos)
    assert table["path"].tolist() == frame["path"].tolist()
    for (width, height), cached in zip(SIZES, table["cached"]):
        with Image.open(index.parent / cached) as copy:
            assert copy.format == "JPEG" and copy.mode == "RGB" and "progressive" not in copy.info  # nvJPEG reads it
            assert copy.size == resized_size(width, height, 256)
    assert json.loads((index.parent / "settings.json").read_text())["short_side"] == 256


def test_grayscale_and_png_sources_become_rgb_jpegs(tmp_path):
    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.asarray(photo(300, 280, 1).convert("L"))).save(folder / "images" / "gray.jpg", quality=90)
    photo(300, 280, 2).save(folder / "images" / "png.png")
    frame = pd.DataFrame(
        {"path": ["images/gray.jpg", "images/png.png"], "label": [1, 2], "class_name": ["a", "b"], "split": ["train", "test"]}
    )
    manifest = write_manifest(frame, folder / "manifest.csv")
    table = pd.read_csv(build_cache(manifest, 256, progress=False))
    for cached in table["cached"]:
        with Image.open(folder / "resized" / cached) as copy:
            assert (copy.format, copy.mode, copy.size) == ("JPEG", "RGB", (274, 256))


def test_evaluating_on_the_copy_is_evaluating_on_the_original_up_to_jpeg(photos):
    build_cache(photos, 256, progress=False)
    frame = read_manifest(photos)
    cache = open_cache(photos, 256, frame)
    images = ImageInput("RGB", 224)
    original = images.dataset(frame["file"].tolist(), frame["label"].tolist(), train=False)
    copied = images.dataset(cache.lookup(frame["file"]), frame["label"].tolist(), train=False)
    for i in range(len(frame)):
        a = original[i][0].float()
        b = copied[i][0].float()
        assert a.shape == b.shape == (3, 224, 224)
        # Same resize, same crop: only the re-encoding (quality 95) differs, by about 2 of 255 levels on
        # these noisy test images (PIL's and torchvision's resizing differ by 0.002).
        assert (a - b).abs().mean() < 3.0


def test_rebuild_reuses_unchanged_copies_and_drops_stale_ones(photos, caplog):
    index = build_cache(photos, 256, progress=False)
    first = pd.read_csv(index)
    kept = index.parent / first["cached"][0]
    stamp = kept.stat().st_mtime_ns
    stray = index.parent / "images" / "00" / ".left.tmp123.jpg"  # what a killed build leaves
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"partial")
    # One image changes, one leaves the dataset.
    frame = read_manifest(photos, check_files=False)
    photo(500, 375, seed=99).save(photos.parent / frame["path"][1], quality=90)
    write_manifest(frame.drop(index=4), photos)
    with caplog.at_level("INFO", logger="dmlsynth.data.image_cache"):
        second = pd.read_csv(build_cache(photos, 256, progress=False))
    assert "3 reused" in caplog.text
    assert kept.stat().st_mtime_ns == stamp  # not rewritten
    assert second["cached"][1] != first["cached"][1]
    assert not (index.parent / first["cached"][1]).exists()
    assert not (index.parent / first["cached"][4]).exists()
    assert not stray.exists()
    files = {p.relative_to(index.parent).as_posix() for p in (index.parent / "images").rglob("*") if p.is_file()}
    assert files == set(second["cached"])


def test_other_short_side_makes_new_copies(photos):
    a = pd.read_csv(build_cache(photos, 256, progress=False))
    b = pd.read_csv(build_cache(photos, 300, progress=False))
    assert set(a["cached"]).isdisjoint(b["cached"])
    assert b["width"][0] == 400 and b["height"][0] == 300


def test_interrupted_build_leaves_no_index_and_the_next_one_reuses_its_copies(photos, monkeypatch, caplog):
    real = image_cache._copy_one
    calls = []

    def failing(source, out_dir, settings):
        calls.append(source)
        if len(calls) == 4:
            raise KeyboardInterrupt  # a kill in the middle
        return real(source, out_dir, settings)

    monkeypatch.setattr(image_cache, "_copy_one", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(photos, 256, threads=1, progress=False)
    assert not (photos.parent / "resized" / "index.csv").exists()
    with pytest.raises(ImageCacheError, match="missing or incomplete"):
        open_cache(photos, 256)
    done = [p for p in (photos.parent / "resized" / "images").rglob("*") if p.is_file()]
    assert 3 <= len(done) < len(SIZES)
    monkeypatch.setattr(image_cache, "_copy_one", real)
    with caplog.at_level("INFO", logger="dmlsynth.data.image_cache"):
        build_cache(photos, 256, progress=False)
    assert f"{len(done)} reused" in caplog.text
    assert len(open_cache(photos, 256).files) == len(SIZES)


def test_damaged_image_is_named(photos):
    frame = read_manifest(photos)
    bad = photos.parent / frame["path"][2]
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ImageCacheError, match=frame["path"][2].split("/")[-1]):
        build_cache(photos, 256, progress=False)
    assert not (photos.parent / "resized" / "index.csv").exists()


def test_open_cache_maps_dataset_files_and_passes_others_through(photos):
    build_cache(photos, 256, progress=False)
    frame = read_manifest(photos)
    cache = open_cache(photos, 256, frame)
    generated = "/elsewhere/generated/images/x.jpg"
    mapped = cache.lookup([*frame["file"], generated])
    assert mapped[-1] == generated
    assert all(m.startswith(str(photos.parent / "resized" / "images")) for m in mapped[:-1])


def test_open_cache_refuses_a_copy_of_other_images_or_settings(photos):
    with pytest.raises(ImageCacheError, match="snakemake .*resized/index.csv --cores 8"):
        open_cache(photos, 256)
    build_cache(photos, 256, progress=False)
    with pytest.raises(ImageCacheError, match="asks for short side 288"):
        open_cache(photos, 288)
    frame = read_manifest(photos)
    changed = photos.parent / frame["path"][0]
    photo(480, 360, seed=7).save(changed, quality=70)
    with pytest.raises(ImageCacheError, match="changed after its resized copy was made"):
        open_cache(photos, 256)
    # A manifest with an image the copy does not have.
    build_cache(photos, 256, progress=False)
    extra = frame.drop(columns="file")
    extra.loc[len(extra)] = ["images/new.jpg", 9, "c9", "test"]
    photo(300, 300, seed=5).save(photos.parent / "images" / "new.jpg")
    write_manifest(extra, photos)
    with pytest.raises(ImageCacheError, match="has no copy of images/new.jpg"):
        open_cache(photos, 256)


def test_photo_batches_from_the_copy_reach_the_model_normalised(photos, device):
    build_cache(photos, 256, progress=False)
    frame = read_manifest(photos)
    files = open_cache(photos, 256, frame).lookup(frame["file"])
    images = ImageInput("RGB", 64)
    dataset = images.dataset(files, frame["label"].tolist(), train=True)
    batch = torch.stack([dataset[(i, 100 + i)][0] for i in range(len(files))])
    assert batch.dtype == torch.uint8 and batch.shape == (len(files), 3, 64, 64)
    model_input = images.to_model(batch, torch.device(device))
    assert model_input.device.type == device and model_input.dtype == torch.float32
    assert -2.2 < model_input.min() and model_input.max() < 2.7  # ImageNet-normalised 0..255
