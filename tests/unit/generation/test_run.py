"""generate_class's batching: any batch size, out-of-memory halving and speed settings give the same images."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from dmlsynth.generation.prompts import write_prompts
from dmlsynth.generation.run import GenerationError, generate_class
from dmlsynth.generation.settings import generation_settings

DEFAULTS = generation_settings({}, "digits")

from tests.helpers.generation import tiny_pixel_components

PROMPTS = ["a digit zero, thin strokes", "a digit zero, slanted left", "a digit zero, large", "a digit zero, upright"]


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return tiny_pixel_components(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    document = {"dataset": "digits", "classes": [{"label": 0, "class_name": "0", "plain": "a digit zero", "prompts": PROMPTS}]}
    return write_prompts(document, tmp_path_factory.mktemp("p") / "prompts.yaml")


def settings(**over):
    # Unfiltered: these tests count the images generation makes (filtering: test_filtering.py).
    return {**DEFAULTS, "images_per_class": 5, "steps": 3, "scheduler": "dpm-solver", "filter": {"scorer": "none"}, **over}


def pixels(root, image_set, part):
    return [np.asarray(Image.open(root / image_set / path), dtype=int) for path in part.path]


class FailsAbove(torch.nn.Module):
    """A UNet that runs out of memory above ``limit`` samples per call, as a full GPU would."""

    def __init__(self, unet, limit):
        super().__init__()
        self.inner, self.limit, self.batches = unet, limit, []

    @property
    def config(self):
        return self.inner.config

    def forward(self, sample, *args, **kwargs):
        self.batches.append(sample.shape[0])
        if sample.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (test: {sample.shape[0]} > {self.limit} samples)")
        return self.inner(sample, *args, **kwargs)


def generate(components, prompts, root, **over):
    return generate_class(components, prompts, 0, [0], ["union", "plain"], settings(**over), root, root / "part.csv")


def test_out_of_memory_halves_the_batch_logs_it_and_makes_the_unsplit_images(components, prompts, tmp_path, caplog):
    whole = generate(components, prompts, tmp_path / "whole", batch_size=5)
    unet = components.unet
    components.unet = FailsAbove(unet, limit=8)  # union: K + 1 = 4 samples per image, so at most 2 images
    try:
        with caplog.at_level(logging.WARNING, logger="dmlsynth.generation.batching"):
            split = generate(components, prompts, tmp_path / "split", batch_size=5)
    finally:
        components.unet = unet
    halvings = [m for m in caplog.messages if "halving" in m]
    assert halvings == [
        "out of GPU memory with 5 union images at once; halving the batch to 2",
        "out of GPU memory with 5 plain images at once; halving the batch to 2",  # plain: 2 samples per image
    ]
    assert list(whole.batch) == [5] * 10
    assert list(split.batch) == [2, 2, 2, 2, 1] * 2  # the part records the size of each image's sampler call
    assert split[["image_set", "path", "operator", "prompts", "seed"]].equals(whole[["image_set", "path", "operator", "prompts", "seed"]])
    for image_set in ("union", "plain"):
        for a, b in zip(pixels(tmp_path / "whole", image_set, whole[whole.image_set == image_set]),
                        pixels(tmp_path / "split", image_set, split[split.image_set == image_set])):  # fmt: skip
            # Float rounding could move a pixel across a rounding boundary; another image would differ everywhere.
            assert np.abs(a - b).max() <= 1


def test_out_of_memory_for_one_image_is_a_generation_error(components, prompts, tmp_path):
    unet = components.unet
    components.unet = FailsAbove(unet, limit=1)
    try:
        with pytest.raises(GenerationError, match="single image"):
            generate(components, prompts, tmp_path, batch_size=2)
    finally:
        components.unet = unet
    assert not (tmp_path / "part.csv").exists()


def test_batch_size_and_speed_settings_do_not_make_a_class_again(components, prompts, tmp_path):
    first = generate(components, prompts, tmp_path, batch_size=5)
    stamp = (tmp_path / "part.csv").stat().st_mtime_ns
    again = generate(
        components, prompts, tmp_path, batch_size=2, gpu_memory_gib=4, compile="off", vae_slicing="on", threads=2
    )
    assert (tmp_path / "part.csv").stat().st_mtime_ns == stamp and again.equals(first)
    generate(components, prompts, tmp_path, batch_size=2, guidance_scale=5.0)  # what the images depend on does
    assert (tmp_path / "part.csv").stat().st_mtime_ns != stamp
