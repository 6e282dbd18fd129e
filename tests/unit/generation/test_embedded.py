"""The embedded generator trained and sampled end to end on a tiny budget, through the per-class jobs."""

import json

import numpy as np
import torch
import pandas as pd
import pytest
from PIL import Image

from dmlsynth.data.manifest import read_manifest
from dmlsynth.methods.blender import mix_synthetic
from dmlsynth.generation.embedded import load_embedded, train_embedded
from dmlsynth.generation.prompts import build_prompts, read_prompts, write_prompts
from dmlsynth.generation.run import GenerationError, generate_class, merge_parts
from dmlsynth.generation.settings import generation_settings
from dmlsynth.config import filled
from dmlsynth.config import config_defaults

DEFAULTS = generation_settings(filled({}), "digits")
TINY = {**config_defaults(["digits"])["generation"]["digits"]["embedded"], "train_steps": 6, "batch_size": 16, "unet_channels": [8, 16], "text_width": 16, "text_layers": 1, "warmup_steps": 1}
SETS = ["blender", "plain"]


@pytest.fixture(scope="module")
def real(digits_manifest):
    frame = read_manifest(digits_manifest)
    train = frame[frame.split == "train"]
    # 12 images per training class keep the test fast.
    return train.groupby("label").head(12).reset_index(drop=True), frame


@pytest.fixture(scope="module")
def trained(real, tmp_path_factory):
    train, _ = real
    folder = tmp_path_factory.mktemp("gen") / "generator"
    metadata = train_embedded(train, folder, TINY, seed=0)
    return folder, metadata


@pytest.fixture(scope="module")
def prompts_file(real, tmp_path_factory):
    train, _ = real
    return write_prompts(build_prompts("digits", train), tmp_path_factory.mktemp("p") / "prompts.yaml")


def settings(**over):
    # Unfiltered: these tests count the images generation makes (filtering: test_filtering.py).
    return {**DEFAULTS, "images_per_class": 3, "batch_size": 2, "steps": 2, "filter": {"scorer": "none"}, **over}


def test_trains_on_training_classes_only_and_saves_safetensors(real, trained):
    train, frame = real
    folder, metadata = trained
    assert set(metadata["classes"]) == {str(l) for l in sorted(train.label.unique())}
    assert metadata["train_images"] == len(train)
    assert np.isfinite(metadata["final_loss"])
    for part in ("unet", "text_encoder"):
        assert list((folder / part).glob("*.safetensors")), part
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert not folder.with_name("generator.partial").exists()
    with pytest.raises(ValueError, match="training split only"):
        train_embedded(frame[frame.split == "test"].head(20), folder.parent / "bad", TINY)


def test_prompts_cover_training_classes_with_measured_attributes(real, prompts_file):
    train, _ = real
    entries = read_prompts(prompts_file, sorted(train.label.unique()))
    assert sorted(entries) == sorted(train.label.unique())
    zero = entries[0]
    assert zero["plain"] == "a digit zero"
    assert all(p.startswith("a digit zero") for p in zero["prompts"])
    assert any("strokes" in p for p in zero["prompts"])
    with pytest.raises(Exception, match="not training classes"):
        read_prompts(prompts_file, [0, 1])


def test_generate_classes_merge_and_mix(real, trained, prompts_file, tmp_path):
    train, _ = real
    folder, _ = trained
    components = load_embedded(folder)
    labels = sorted(int(l) for l in train.label.unique())
    generated = tmp_path / "generated"
    parts = []
    for index in (0, 1):
        part = generate_class(components, prompts_file, labels[index], labels, SETS, settings(), generated, tmp_path / f"parts/class{index}.csv")
        parts.append(tmp_path / f"parts/class{index}.csv")
        assert len(part) == 3 * len(SETS)
    for image_set in SETS:
        manifest = generated / image_set / "manifest.csv"
        merged = merge_parts(parts, image_set, manifest)
        frame = read_manifest(manifest)  # a regular manifest, files checked
        assert len(frame) == 6 and set(frame.label) == {labels[0], labels[1]} and set(frame.split) == {"train"}
        for file in frame.file:
            with Image.open(file) as image:
                assert image.mode == "L" and image.size == (8, 8)
        if image_set == "plain":
            assert set(merged.operator) == {"conjunction"}
            assert all(json.loads(p)["prompts"] == [["a digit zero"]] or json.loads(p)["prompts"] == [["a digit one"]] for p in merged.prompts)
        else:
            assert set(merged.operator) <= {"union", "intersection"}
            plan = json.loads(merged.prompts.iloc[0])
            assert len(plan["prompts"]) == 3 and all(len(c) == 2 for c in plan["prompts"])
            assert all(abs(sum(w) - 1) < 1e-6 for w in plan["weights"])
    # Only the generated classes are mixed in; train.py reads the result like any training frame.
    two = train[train.label.isin(labels[:2])]
    mixed = mix_synthetic(two, read_manifest(generated / "blender" / "manifest.csv"), {"synthetic_per_real": 0.25}, 0)
    assert mixed.synthetic.sum() == 6 and set(mixed.label) == set(labels[:2])


def test_same_seed_same_images_and_complete_class_not_redone(real, trained, prompts_file, tmp_path):
    train, _ = real
    components = load_embedded(trained[0])
    labels = sorted(int(l) for l in train.label.unique())
    a = generate_class(components, prompts_file, labels[2], labels, ["union"], settings(), tmp_path / "a", tmp_path / "a.csv", identity="job")
    b = generate_class(components, prompts_file, labels[2], labels, ["union"], settings(), tmp_path / "b", tmp_path / "b.csv")
    for path in a.path:
        assert (tmp_path / "a/union" / path).read_bytes() == (tmp_path / "b/union" / path).read_bytes()
    # Batching does not change an image: each image has its own seed.
    c = generate_class(components, prompts_file, labels[2], labels, ["union"], settings(batch_size=3), tmp_path / "c", tmp_path / "c.csv")
    for path in c.path:
        pixels = lambda root: np.asarray(Image.open(tmp_path / root / "union" / path), dtype=int)
        assert np.abs(pixels("a") - pixels("c")).max() <= 1
    stamp = (tmp_path / "a.csv").stat().st_mtime_ns
    again = generate_class(components, prompts_file, labels[2], labels, ["union"], settings(), tmp_path / "a", tmp_path / "a.csv", identity="job")
    assert (tmp_path / "a.csv").stat().st_mtime_ns == stamp and again.equals(a)
    other_seed = generate_class(components, prompts_file, labels[2], labels, ["union"], settings(seed=5), tmp_path / "d", tmp_path / "d.csv")
    assert any(
        (tmp_path / "a/union" / p).read_bytes() != (tmp_path / "d/union" / p).read_bytes() for p in other_seed.path
    )


def test_test_classes_never_get_synthetic_images(real, trained, prompts_file, tmp_path):
    train, frame = real
    components = load_embedded(trained[0])
    labels = sorted(int(l) for l in train.label.unique())
    test_label = int(frame[frame.split == "test"].label.iloc[0])
    with pytest.raises(GenerationError, match="not a training class"):
        generate_class(components, prompts_file, test_label, labels, ["union"], settings(), tmp_path, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_training_is_reproducible(real, trained, tmp_path):
    from safetensors.torch import load_file

    train, _ = real
    folder, metadata = trained
    again = train_embedded(train, tmp_path / "again", TINY, seed=0)
    assert again["final_loss"] == metadata["final_loss"]
    first = load_file(str(next((folder / "unet").glob("*.safetensors"))))
    second = load_file(str(next((tmp_path / "again" / "unet").glob("*.safetensors"))))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_trains_and_generates_on_the_device(real, trained, prompts_file, device, tmp_path):
    """The generator trains on the configured device from the CPU's draws, and samples there."""
    from safetensors.torch import load_file

    train, _ = real
    cpu_folder, cpu_metadata = trained
    metadata = train_embedded(train, tmp_path / "generator", TINY, seed=0, device=device)
    assert metadata["device"].startswith(device) and np.isfinite(metadata["final_loss"])
    assert metadata["threads"] == (1 if device == "cpu" else None)
    first = load_file(str(next((cpu_folder / "unet").glob("*.safetensors"))))
    second = load_file(str(next((tmp_path / "generator" / "unet").glob("*.safetensors"))))
    # Same initial weights, batches and noise as on the CPU: on CUDA only float arithmetic differs (Adam's
    # steps of 0.002 on near-zero gradients may go either way), a different start would differ by ~0.1.
    assert max((first[k] - second[k]).abs().mean().item() for k in first) < 1e-3
    components = load_embedded(tmp_path / "generator", device)
    assert components.device.type == device
    labels = sorted(int(l) for l in train.label.unique())
    part = generate_class(components, prompts_file, labels[0], labels, ["blender"], settings(), tmp_path / "gen", tmp_path / "p.csv")
    assert len(part) == 3 and all((tmp_path / "gen/blender" / p).is_file() for p in part.path)


def test_unknown_device_is_explained(real, tmp_path, monkeypatch):
    import torch

    train, _ = real
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="generation.<dataset>.device is 'cuda'"):
        train_embedded(train, tmp_path / "g", TINY, device="cuda")


# A plain `pip install -e .` has neither accelerate nor peft (the stable-diffusion extra brings them).
WITHOUT_ACCELERATE = '''
import importlib.machinery, importlib.metadata
_find, _version = importlib.machinery.PathFinder.find_spec, importlib.metadata.version
def find_spec(name, path=None, target=None):
    return None if name.split(".")[0] in ("accelerate", "peft") else _find(name, path, target)
def version(name):
    if name in ("accelerate", "peft"):
        raise importlib.metadata.PackageNotFoundError(name)
    return _version(name)
importlib.machinery.PathFinder.find_spec = staticmethod(find_spec)
importlib.metadata.version = version
'''


def test_loading_the_generator_without_accelerate_warns_of_no_missing_package(trained, tmp_path):
    """The embedded default installs no accelerate; diffusers then told every generate job to install it."""
    import os
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text(WITHOUT_ACCELERATE)
    script = (
        "from diffusers.utils import is_accelerate_available\n"
        "assert not is_accelerate_available()\n"
        "from dmlsynth.generation.embedded import load_embedded\n"
        f"load_embedded({str(trained[0])!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "accelerate" not in result.stderr + result.stdout


def test_a_generation_job_logs_a_progress_line_per_batch(real, trained, prompts_file, tmp_path, caplog):
    """Sampling a class takes minutes on the CPU; the job's log says how far it is after every sampler call."""
    import logging
    import re

    train, _ = real
    labels = sorted(int(l) for l in train.label.unique())
    with caplog.at_level(logging.INFO, logger="dmlsynth"):
        part = generate_class(load_embedded(trained[0]), prompts_file, labels[1], labels, SETS,
                              settings(images_per_class=5, batch_size=2), tmp_path / "generated", tmp_path / "part.csv")  # fmt: skip
    for image_set in SETS:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"class {labels[1]} {image_set} images: ")]
        done = [int(re.search(r": (\d+)/5 in ", line).group(1)) for line in lines]
        sizes = part.loc[part.image_set == image_set, "batch"].tolist()  # each image: the size of its sampler call
        calls = []
        while sizes:
            calls.append(sizes[0])
            sizes = sizes[sizes[0]:]
        assert done == list(np.cumsum(calls)) and done[-1] == 5 and len(calls) == 3  # 2 + 2 + 1 images
        assert all(re.search(r"in \d+\.\ds \(\d+\.\d\ds each\), about \d+s left$", line) for line in lines)
