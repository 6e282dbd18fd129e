"""generate_class's batching: any batch size, out-of-memory halving and speed settings give the same images."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dmlsynth.generation.prompts import write_prompts
from dmlsynth.generation.run import GenerationError, generate_class
from dmlsynth.generation.settings import generation_settings
from dmlsynth.config import filled

DEFAULTS = generation_settings(filled({}), "digits")

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


def generate(components, prompts, root, identity=None, **over):
    return generate_class(components, prompts, 0, [0], ["union", "plain"], settings(**over), root, root / "part.csv", identity=identity)


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
        "out of GPU memory with 5 class 0 union images at once; halving the batch to 2",
        "out of GPU memory with 5 class 0 plain images at once; halving the batch to 2",  # plain: 2 samples per image
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


def test_a_class_is_made_again_only_under_another_identity_or_prompts(components, prompts, tmp_path):
    # The skip key is the generate job's identity (dmlsynth.jobs.Job.identity) and the class's prompts.
    first = generate(components, prompts, tmp_path, identity="job-a", batch_size=5)
    stamp = (tmp_path / "part.csv").stat().st_mtime_ns
    again = generate(components, prompts, tmp_path, identity="job-a", batch_size=5)
    assert (tmp_path / "part.csv").stat().st_mtime_ns == stamp and again.equals(first)
    generate(components, prompts, tmp_path, identity="job-b", batch_size=5)  # another job (e.g. another batch size)
    stamp_b = (tmp_path / "part.csv").stat().st_mtime_ns
    assert stamp_b != stamp
    # The prompts file is an input the identity does not hash: other prompts of the class make it again.
    document = {"dataset": "digits", "classes": [{"label": 0, "class_name": "0", "plain": "a digit zero", "prompts": PROMPTS[::-1]}]}
    generate(components, write_prompts(document, tmp_path / "other.yaml"), tmp_path, identity="job-b", batch_size=5)
    assert (tmp_path / "part.csv").stat().st_mtime_ns != stamp_b
    stamp_b = (tmp_path / "part.csv").stat().st_mtime_ns
    # Without an identity (a call outside a job) a class is always made.
    generate(components, prompts, tmp_path, batch_size=5)
    assert (tmp_path / "part.csv").stat().st_mtime_ns != stamp_b


def test_the_part_records_each_images_guidance_statistics_of_its_sampling_run(components, prompts, tmp_path):
    """Per image: the means over its denoising steps of blend.guidance_statistics, as the sampling run saw them;
    merge_parts carries them into the set's manifest and quality_rows averages them per operator."""
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.generation.blend import STATISTICS, guidance_statistics
    from dmlsynth.generation.prompts import read_prompts
    from dmlsynth.generation.quality import quality_rows
    from dmlsynth.generation.run import _conditions, image_seed, initial_noise, merge_parts, plan_image
    from dmlsynth.generation.sampler import encode_prompts, sample
    from dmlsynth.generation.settings import set_recipe

    # One image per sampler call, as the reference below: the same float sums (a batch of 5 moves the
    # strength-controlled share, ~1e-5 on this random UNet, by about 1 %).
    chosen = settings(batch_size=1, intersection_rule="elementwise", guidance_norm="mean")
    part = generate_class(components, prompts, 0, [0], ["union", "plain"], chosen, tmp_path, tmp_path / "part.csv")
    union = part[part.image_set == "union"].reset_index(drop=True)
    # Image 3 of the union set, sampled alone with its own seed, recording every step's residuals.
    entry = read_prompts(prompts, [0])[0]
    seed = image_seed(chosen["seed"], 0, "union", 3)
    plan = plan_image(entry, set_recipe("union", chosen), seed)
    steps = []
    sample(components, _conditions(components, [plan], {}), encode_prompts(components, [""])[0], [plan["operator"]],
           initial_noise(components, seed)[None], guidance_scale=chosen["guidance_scale"], steps=chosen["steps"],
           scheduler=chosen["scheduler"], intersection_rule="elementwise", guidance_norm="mean",
           on_step=lambda step, d: steps.append(guidance_statistics(d, [plan["operator"]], "elementwise", "mean")))  # fmt: skip
    assert len(steps) == chosen["steps"]
    for name in STATISTICS:
        alone = float(torch.stack([s[name] for s in steps]).mean())
        assert union.loc[3, name] == pytest.approx(alone, rel=1e-5)  # written with 6 significant digits
        assert (union[name] - alone).abs().idxmin() == 3, name
    assert union.loc[3, "guidance_ratio"] > 1  # the union before rescaling: stronger than the mean residual
    # The class prompt alone is ordinary guidance: ratio 1, no union-intersection difference.
    plain = part[part.image_set == "plain"]
    assert (plain.guidance_ratio == 1).all() and plain.difference_along_mean.isna().all()
    # Into the manifest and, per operator, into the report's rows.
    sets = {}
    for image_set in ("union", "plain"):
        merge_parts([tmp_path / "part.csv"], image_set, tmp_path / image_set / "manifest.csv")
        sets[image_set] = read_manifest(tmp_path / image_set / "manifest.csv")
    assert sets["union"].guidance_ratio.tolist() == union.guidance_ratio.tolist()
    real = pd.DataFrame({"file": list(sets["plain"].file) * 2, "label": [0] * 5 + [1] * 5})
    rows = quality_rows("digits", real, sets, "L", 8, "embedded", pretrained=False).set_index("image_set")
    for name in STATISTICS:
        assert rows.loc["union", name] == pytest.approx(union[name].mean())
    assert rows.loc["plain", "guidance_ratio"] == 1 and np.isnan(rows.loc["plain", "difference_along_mean"])
