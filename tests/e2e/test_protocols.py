"""Each paper's protocol config (config/protocols/, and the common one, config/paper.yaml): it validates on
its own and over params.yaml, sets what its paper does, and its Snakemake dry run lists the expected jobs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmlsynth import config as cfg
from dmlsynth import registry, resolve
from dmlsynth.data.split import training_class_count
from dmlsynth.generation.settings import generation_settings
from tests.conftest import ROOT

# The job counts each protocol's dry run must list (rule -> jobs), worked out by hand from the configs:
# datasets x methods x losses x seeds less the excluded pairs; per training class one fine_tune, generate
# and filter_generated job for the BLenDeR methods.
EXPECTED_JOBS = {
    # 2 datasets x (8 methods x 5 losses - 2 excluded) x 3 seeds, and IAA's two controls (its Multi-Similarity
    # beta = 40, its contrastive batch_sum) x 2 datasets x 3 seeds; generation for the 80 + 78 classes left
    # after the validation classes.
    "config/paper.yaml": {"train": 240, "evaluate": 240, "prepare_data": 2, "fine_tune": 158, "generate": 158, "filter_generated": 158},
    # 4 datasets x 2 methods x 3 losses x 3 seeds.
    "config/protocols/iaa.yaml": {"train": 72, "evaluate": 72, "prepare_data": 4, "cache_images": 4},
    # 3 datasets x (2 methods x 5 losses - symm with semi-hard and lifted) x 3 seeds, and symm's controls
    # with the unit-softmax N-pair and angular (2 losses x 3 datasets x 3 seeds).
    "config/protocols/symm.yaml": {"train": 90, "evaluate": 90, "prepare_data": 3, "cache_images": 3},
    # 4 datasets x (2 methods + sgar's control baseline+projection_head=true) x 1 loss x 3 seeds.
    "config/protocols/sgar.yaml": {"train": 36, "evaluate": 36, "prepare_data": 4, "cache_images": 4},
    # 2 datasets x 5 methods x 2 losses x 3 seeds; every one of the 100 + 98 training classes is generated for.
    "config/protocols/blender.yaml": {"train": 60, "evaluate": 60, "prepare_data": 2, "fine_tune": 198, "generate": 198, "filter_generated": 198},
}
PROTOCOLS = list(EXPECTED_JOBS)


def merged(path: str) -> dict:
    """The config Snakemake runs: the protocol merged over params.yaml (dicts merged key by key)."""
    return cfg.load_layered(ROOT / "params.yaml", ROOT / path)


@pytest.mark.parametrize("path", PROTOCOLS)
def test_protocol_validates_alone_and_over_params_yaml(path):
    alone = cfg.load(ROOT / path)
    config = merged(path)
    assert config["training"] == {**config["training"], **alone["training"]}
    for dataset in alone["datasets"]:
        for method in alone["methods"]:
            for loss in alone["losses"]:
                if registry.METHODS[method].is_compatible(loss):
                    assert cfg.run_params(config, dataset, method, loss, 0) == cfg.run_params(alone, dataset, method, loss, 0)
    # The job matrix the counts below are made of.
    runs = resolve.runs(config)
    assert len(runs) == EXPECTED_JOBS[path]["train"]


def test_protocols_set_their_papers_settings():
    iaa, symm, sgar, blender = (cfg.load(ROOT / f"config/protocols/{name}.yaml") for name in ("iaa", "symm", "sgar", "blender"))
    settings = lambda config, dataset: registry.dataset_settings(config, dataset)  # noqa: E731
    assert {settings(iaa, d)["backbone"] for d in iaa["datasets"]} == {"googlenet"}
    assert iaa["training"]["lr_scheduler"] == "multistep" and iaa["training"]["lr_milestones"] == [40, 60, 80]
    assert settings(iaa, "cars196")["square_resize"] and not settings(iaa, "cub200")["square_resize"]
    assert cfg.run_params(iaa, "sop", "baseline", "multi_similarity", 0)["loss_params"]["beta"] == 40.0  # its ReImp baseline too
    # Symmetrical Synthesis: 10,000 steps of 128 at 227 px, Cars cut to its boxes, resize-only evaluation.
    params = cfg.run_params(symm, "cars196", "symm", "n_pairs", 0)
    assert params["training"]["batches_per_epoch"] * params["training"]["epochs"] == 10_000
    assert params["dataset_settings"]["bounding_boxes"] and params["dataset_settings"]["eval_transform"] == "resize"
    assert params["dataset_settings"]["image_size"] == 227 and params["training"]["embedding_gradient_multiplier"] == 10.0
    assert params["training"]["optimizer"] == "adam" and params["training"]["weight_decay"] == 0.005
    assert {(e["method"], e["loss"]) for e in symm["exclude"]} == {("symm", "semihard_triplet"), ("symm", "lifted_structure")}
    for loss in ("semihard_triplet", "lifted_structure"):
        assert not registry.METHODS["symm"].is_compatible(loss)
    # SGAR: the official code's variant and recipe (Liuzt1999/SCAR train.py): BN-Inception, frozen-backbone
    # warm-up, batch 150 of random batches, gradients clipped at 10; its control has the same head.
    assert {settings(sgar, d)["backbone"] for d in sgar["datasets"]} == {"bn_inception"}
    assert sgar["training"]["warmup_epochs"] == 1 and sgar["training"]["lr_scheduler"] == "step"
    assert (sgar["training"]["batch_size"], sgar["training"]["batch_sampling"], sgar["training"]["grad_clip_value"]) == (150, "random", 10)
    params = cfg.run_params(sgar, "cub200", "sgar", "proxy_anchor", 0)
    assert params["method_params"]["variant"] == "official" and params["method_params"]["weight"] == 0.23
    assert params["loss_params"]["projection_head"] and params["control"] == "baseline+projection_head=true"
    assert cfg.run_params(sgar, "cub200", "baseline+projection_head=true", "proxy_anchor", 0)["loss_params"] == params["loss_params"]
    # BLenDeR: CUB and Cars only, every training class generated for.
    assert blender["datasets"] == ["cub200", "cars196"] and set(blender["losses"]) == {"proxy_anchor", "potential_field"}
    assert [training_class_count(blender, d) for d in blender["datasets"]] == [100, 98]
    # Its prompts are captions (the paper's attributes come from captions), its classes fine-tuned for the
    # one figure known (20,000 steps per category, second-hand); the common protocol captions too.
    for config in (blender, cfg.load(ROOT / "config/paper.yaml")):
        for dataset in config["datasets"]:
            assert generation_settings(config, dataset)["prompts"]["source"] == "captions"
    assert {generation_settings(blender, d)["fine_tuning"]["steps"] for d in blender["datasets"]} == {20_000}
    # Symmetrical Synthesis's triplet searches the anchor against the other pair (the paper's figure).
    assert cfg.run_params(symm, "cub200", "symm", "triplet", 0)["method_params"]["candidates"] == "by_loss"
    # SOP reports R@1/10/100/1000 wherever it is a dataset.
    for config in (iaa, sgar):
        assert {1, 10, 100, 1000} <= set(config["evaluation"]["ks"])


def test_every_protocol_value_has_its_source():
    """Every setting line of a protocol says where its value comes from, or that the project chose it."""
    for path in PROTOCOLS[1:]:
        text = (ROOT / path).read_text()
        assert "[project definition]" in text, path
        body = text.split("\n# Paired comparison")[0]
        blocks = re.split(r"\n(?=\S)", body)
        for before, block in zip(["#"] + blocks, blocks):
            if block.startswith(("paths:", "statistics:", "#")):
                continue
            commented = "#" in block or before.lstrip().startswith("#")  # an inline comment, or the comment above it
            assert commented, f"{path}: the block {block.splitlines()[0]!r} has no comment saying where its values come from"


JOB = re.compile(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", re.S | re.M)


@pytest.mark.parametrize("path", PROTOCOLS)
def test_dry_run_lists_the_expected_jobs(tmp_path, path):
    for name in ("Snakefile", "rules", "params.yaml", "config", "profiles"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, tmp_path / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [str(Path(sys.executable).with_name("snakemake")), "-n", "--cores", "16", f"--configfile={path}", "results/table.csv"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    counts: dict[str, int] = {}
    for rule, _ in JOB.findall(result.stdout):
        counts[rule] = counts.get(rule, 0) + 1
    for rule, expected in EXPECTED_JOBS[path].items():
        assert counts.get(rule, 0) == expected, (rule, counts)
    config = merged(path)
    if not any(registry.METHODS[m].synthetic_images for m in config["methods"]):
        assert not {"fine_tune", "generate", "filter_generated"} & set(counts)
    assert not (ROOT / "results" / "runs").exists() or not any((ROOT / "results" / "runs").iterdir())
