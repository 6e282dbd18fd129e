"""Filtering generated images: the keep rule, the CLIP and fidelity scores, and generation -> filtering -> manifest."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dmlsynth.data.manifest import read_manifest
from dmlsynth.generation.filtering import (
    KEPT,
    REJECTED,
    UNUSED,
    clip_scores,
    fidelity_scores,
    filter_part,
    keep_statuses,
)
from dmlsynth.generation.generators import load_generator
from dmlsynth.generation.prompts import write_prompts
from dmlsynth.generation.run import generate_class, merge_parts
from dmlsynth.generation.settings import filter_scorer, generation_settings, images_generated
from dmlsynth.config import filled

from tests.helpers.generation import save_tiny_clip, save_tiny_stable_diffusion


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def random_images(folder, count, seed=0, size=20):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        files.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(files[-1])
    return files


def test_keep_rule_takes_the_first_passing_images_of_each_set():
    sets = ["a", "a", "b", "a", "a", "b", "b", "a"]
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.6, 0.9, 0.95])
    statuses = keep_statuses(sets, scores, threshold=0.5, budget=2)
    # set a: 0.9 kept, 0.1 rejected, 0.8 kept, 0.7 and 0.95 passed after the budget was full.
    assert [s for s, n in zip(statuses, sets) if n == "a"] == [KEPT, REJECTED, KEPT, UNUSED, UNUSED]
    assert [s for s, n in zip(statuses, sets) if n == "b"] == [REJECTED, KEPT, KEPT]
    # No scorer (NaN scores): the first `budget` images of each set.
    assert keep_statuses(["a"] * 3, np.full(3, np.nan), float("nan"), 2) == [KEPT, KEPT, UNUSED]


def test_a_score_equal_to_the_threshold_passes():
    # "reaches the threshold": score >= threshold, at the float the CLIP score is compared as.
    threshold = 0.2
    scores = np.array([np.nextafter(threshold, 0.0), threshold, np.nextafter(threshold, 1.0)])
    assert keep_statuses(["a"] * 3, scores, threshold, budget=3) == [REJECTED, KEPT, KEPT]


def test_a_short_set_keeps_what_passed_and_warns(tmp_path, caplog):
    part = pd.DataFrame({"image_set": ["a"] * 4, "label": 3, "path": [f"{i}.png" for i in range(4)]})
    filtered = filter_part(part, np.array([0.1, 0.9, 0.2, 0.3]), "clip", 0.5, 2, tmp_path / "f.csv")
    assert list(filtered.status) == [REJECTED, KEPT, REJECTED, REJECTED]
    assert "only 1 of 4" in caplog.text and "filter.extra" in caplog.text
    written = pd.read_csv(tmp_path / "f.csv")
    assert list(written.status) == list(filtered.status) and list(written.score) == [0.1, 0.9, 0.2, 0.3]


def test_extra_images_only_when_filtering_and_a_threshold_change_regenerates_nothing():
    config = {"generation": {"digits": {"images_per_class": 10, "filter": {"extra": 0.25}}}}
    settings = generation_settings(filled(config), "digits")
    assert filter_scorer(settings) == "fidelity" and images_generated(settings) == 13
    off = generation_settings(filled({"generation": {"digits": {"images_per_class": 10, "filter": {"scorer": "none"}}}}), "digits")
    assert images_generated(off) == 10
    stricter = generation_settings(filled({"generation": {"digits": {"images_per_class": 10, "filter": {"extra": 0.25,
                                   "fidelity_threshold": 0.9}}}}), "digits")  # fmt: skip
    assert images_generated(stricter) == images_generated(settings)
    from tests.unit.generation.test_settings import generate_identity

    filtered = {"images_per_class": 10, "filter": {"extra": 0.25}}
    assert generate_identity("digits", **filtered) == generate_identity("digits", **{**filtered, "filter": {"extra": 0.25, "fidelity_threshold": 0.9}})
    assert generate_identity("digits", **filtered) != generate_identity("digits", images_per_class=10, filter={"scorer": "none"})
    sd = generation_settings(filled({"generation": {"cub200": {}}}), "cub200")
    assert filter_scorer(sd) == "clip"


def test_clip_score_is_the_cosine_similarity_clip_itself_computes(clip_dir, tmp_path, device):
    from transformers import AutoProcessor, CLIPModel

    files = random_images(tmp_path / "img", 5)
    texts = ["a photo of a bird"] * 3 + ["a digit zero"] * 2
    scores = clip_scores(files, texts, str(clip_dir), device, batch_size=2)
    # CLIP's own forward pass: logits_per_image = exp(logit_scale) x cosine similarity.
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    processor = AutoProcessor.from_pretrained(str(clip_dir))
    inputs = processor(text=["a photo of a bird", "a digit zero"], images=[Image.open(f).convert("RGB") for f in files],
                       return_tensors="pt", padding=True)  # fmt: skip
    with torch.no_grad():
        logits = model(**inputs).logits_per_image / model.logit_scale.exp()
    expected = np.array([logits[i, 0 if i < 3 else 1].item() for i in range(5)])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    # The batch does not change a score.
    np.testing.assert_allclose(clip_scores(files, texts, str(clip_dir), device, batch_size=5), scores, atol=1e-5)


def test_a_missing_clip_model_is_a_clear_error(tmp_path):
    files = random_images(tmp_path / "img", 1)
    with pytest.raises(FileNotFoundError, match="filter.clip_model"):
        clip_scores(files, ["x"], str(tmp_path / "no-such-model"), "cpu")


def test_fidelity_score_prefers_the_intended_class(digits_manifest):
    frame = read_manifest(digits_manifest)
    train = frame[frame.split == "train"].groupby("label").head(30).reset_index(drop=True)
    held_out = frame[frame.split == "train"].groupby("label").tail(5).reset_index(drop=True)
    labels = held_out.label.to_numpy()
    right = fidelity_scores(train, held_out.file.tolist(), labels, "L", 8, pretrained=False)
    classes = sorted(set(labels))
    other = [classes[(classes.index(l) + 1) % len(classes)] for l in labels]  # another training class
    wrong = fidelity_scores(train, held_out.file.tolist(), other, "L", 8, pretrained=False)
    assert ((right >= 0) & (right <= 1)).all()
    assert right.mean() > 0.8 > 0.2 > wrong.mean()


def test_generation_then_filtering_keeps_each_sets_budget(sd_dir, clip_dir, tmp_path, device):
    """Tiny Stable Diffusion -> extra images -> CLIP scores -> each set keeps its first passing images."""
    config = {"methods": ["blender"], "generation": {"cub200": {
        "generator": "stable-diffusion", "model_id": str(sd_dir), "device": device, "images_per_class": 3,
        "batch_size": 4, "steps": 2, "scheduler": "ddim", "filter": {"clip_model": str(clip_dir), "extra": 1.0},
    }}}  # fmt: skip
    settings = generation_settings(filled(config), "cub200")
    components = load_generator(settings, None)
    prompts = write_prompts(
        {"dataset": "cub200", "classes": [{"label": 1, "class_name": "001.Black_footed_Albatross",
         "plain": "a photo of a black footed albatross, a bird", "prompts": ["a photo of a bird", "a photo of a bird, laysan"]}]},
        tmp_path / "prompts.yaml",
    )  # fmt: skip
    sets = ["blender", "plain"]
    part = generate_class(components, prompts, 1, [1], sets, settings, tmp_path / "gen", tmp_path / "parts/class0.csv")
    assert len(part) == 2 * 6  # budget 3 + extra 3 per set

    files = [tmp_path / "gen" / s / p for s, p in zip(part.image_set, part.path)]
    scores = clip_scores(files, ["a photo of a black footed albatross, a bird"] * len(files), str(clip_dir), device)
    threshold = float(np.median(scores))  # half of the images fail
    filtered = filter_part(part, scores, "clip", threshold, 3, tmp_path / "filtered/class0.csv", tmp_path / "parts/class0.csv")
    for image_set in sets:
        rows = filtered[filtered.image_set == image_set]
        assert ((rows.status == REJECTED) == (rows.score < threshold)).all()
        passing = rows[rows.score >= threshold]
        assert list(rows[rows.status == KEPT].path) == list(passing.path[:3])
        manifest = tmp_path / "gen" / image_set / "manifest.csv"
        merged = merge_parts([tmp_path / "filtered/class0.csv"], image_set, manifest)
        assert list(merged.path) == list(passing.path[:3]) and (merged.score >= threshold).all()
        assert set(merged.part) == {"../../parts/class0.csv"}  # the generation job that made the images
        assert len(read_manifest(manifest)) == min(3, len(passing))

    # Same seed, same kept images.
    again = generate_class(components, prompts, 1, [1], sets, settings, tmp_path / "gen2", tmp_path / "parts2/class0.csv")
    files2 = [tmp_path / "gen2" / s / p for s, p in zip(again.image_set, again.path)]
    scores2 = clip_scores(files2, ["a photo of a black footed albatross, a bird"] * len(files2), str(clip_dir), device)
    np.testing.assert_allclose(scores2, scores, atol=1e-4 if device == "cuda" else 1e-6)
    assert filter_part(again, scores2, "clip", threshold, 3, tmp_path / "f2.csv").status.tolist() == filtered.status.tolist()


def test_the_committed_filtering_measurement_matches_the_default_recipe():
    """benchmarks/results/filtering_digits.csv (docs/generation.md, "Filtering") was made with today's defaults and keep rule."""
    from dmlsynth.config import load
    from tests.conftest import ROOT

    frame = pd.read_csv(ROOT / "benchmarks/results/filtering_digits.csv")
    settings = generation_settings(load(ROOT / "params.yaml"), "digits")
    budget, classes = settings["images_per_class"], int(frame.classes.iloc[0])
    assert (frame.budget == budget).all() and (frame.generated == classes * images_generated(settings)).all()
    assert (frame.kept + frame.rejected + frame.unused == frame.generated).all()
    assert (frame.kept == classes * budget).all()  # every set reached its budget
    assert (frame.sampling_seconds_all > frame.sampling_seconds_budget).all()
