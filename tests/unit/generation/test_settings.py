"""Generation settings: the paper recipe per dataset, the training-class count, which settings regenerate a class."""


from dmlsynth.config import config_defaults
from dmlsynth.config import filled
from dmlsynth import config as cfg
from dmlsynth import registry
from dmlsynth import jobs
from dmlsynth.generation.settings import describe, generation_settings

from tests.conftest import ROOT


def test_paper_config_sets_the_stable_diffusion_recipe_per_dataset():
    paper = cfg.load(ROOT / "config" / "paper.yaml")
    # As Snakemake runs it: config/paper.yaml merged over params.yaml (which sets no generation block:
    # the digits recipe is the registry's default).
    merged = cfg.load_layered(ROOT / "params.yaml", ROOT / "config" / "paper.yaml")
    assert {"cub200", "cars196"} <= set(merged["generation"])
    assert generation_settings(merged, "digits")["guidance_scale"] == config_defaults(["digits"])["generation"]["digits"]["guidance_scale"]
    for config in (paper, merged):
        for dataset in ("cub200", "cars196"):
            settings = generation_settings(config, dataset)
            assert settings["generator"] == "stable-diffusion"
            assert settings["model_id"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
            assert (settings["scheduler"], settings["steps"], settings["guidance_scale"]) == ("dpm-solver", 25, 7.5)
            assert settings["images_per_class"] == 150 and settings["fp16"] and settings["device"] == "auto"
            assert settings["gpu_memory_gib"] == 16  # the default that peaks below 20 GiB
    # Not the digits recipe (guidance 3.0, 15 steps) that photo datasets silently got before.
    assert generation_settings(paper, "cub200")["guidance_scale"] != config_defaults(["digits"])["generation"]["digits"]["guidance_scale"]


def generate_identity(dataset: str, **generation) -> str:
    """The identity of the first class's generation job (what re-runs it) under ``generation.<dataset>``."""
    config = cfg.validate({**cfg.load(ROOT / "params.yaml"), "datasets": [dataset], "methods": ["blender"],
                           "generation": {dataset: generation}})  # fmt: skip
    return jobs.Jobs(config).generate(dataset, 0).identity()


def test_the_operator_rules_regenerate_every_class():
    """A new intersection rule or strength control makes every class's images again (the job's identity)."""
    settings = generation_settings(filled({"methods": ["blender"]}), "digits")
    assert (settings["intersection_rule"], settings["guidance_norm"]) == ("principal_component", "mean")
    for key, other in (("intersection_rule", "elementwise"), ("guidance_norm", "none")):
        assert generate_identity("digits", **{key: other}) != generate_identity("digits")


def test_describe_says_what_generation_makes_and_what_training_adds(default_params):
    config = cfg.validate({**default_params, "methods": ["baseline", "blender", "sd_plain"],
                           "method_params": {"sd_plain": {"synthetic_per_real": 0.5}}})  # fmt: skip
    lines = describe(config)
    assert lines[0].startswith("generation.digits: embedded, 80 images per training class and image set (blender, plain)")
    assert "attribute prompts; intersection_rule principal_component, guidance_norm mean" in lines[0]
    assert lines[1:] == [
        "blender: trains on the real images plus, per class, every generated image the filter kept of image set 'blender'",
        "sd_plain: trains on the real images plus, per class, round(0.5 x its real images) generated images of image set 'plain'",
    ]
    assert describe({**config, "methods": ["baseline", "symm"]}) == []


def test_fine_tuning_regenerates_only_when_on():
    assert generate_identity("digits", fine_tuning={"steps": 7}) == generate_identity("digits")  # off: not read
    on = {"method": "lora", "rank": 8}
    assert generate_identity("cub200", fine_tuning={**on, "steps": 7}) != generate_identity("cub200", fine_tuning=on)
    # The checkpoint interval changes neither the weights nor the images.
    assert generate_identity("cub200", fine_tuning={**on, "checkpoint_every": 3}) == generate_identity("cub200", fine_tuning=on)


def test_training_classes_follow_a_smaller_copy_of_the_dataset():
    from dmlsynth.data.split import split_class_count

    assert split_class_count({}, "cub200") == 100 and split_class_count({}, "digits") == 5
    assert split_class_count({"dataset_settings": {"cub200": {"expected": {"classes": 8}}}}, "cub200") == 4
