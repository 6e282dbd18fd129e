"""config/paper.yaml: valid on its own, and its dry run lists the whole job matrix."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import registry

from tests.conftest import ROOT
PAPER = ROOT / "config" / "paper.yaml"


@pytest.fixture(scope="module")
def paper() -> dict:
    return cfg.load(PAPER)


def test_paper_config_is_the_protocol(paper):
    assert paper["datasets"] == ["cub200", "cars196"]
    assert paper["losses"] == ["multi_similarity", "proxy_anchor", "contrastive", "triplet", "potential_field"]
    assert paper["seeds"] == [0, 1, 2]
    for name in paper["datasets"]:
        settings = registry.dataset_settings(paper, name)
        assert (settings["backbone"], settings["pretrained"], settings["embedding_dim"], settings["image_size"]) == (
            "resnet50", True, 512, 224
        )
        assert settings["resources"]["gpu"] == 1
        assert settings["validation_classes"] == 20  # the epoch is chosen on held-out training classes
        assert registry.DATASETS[name].image_mode == "RGB"
    assert paper["training"]["num_workers"] > 0
    # What the runs resolve to (the registry's defaults where the config states nothing).
    run = lambda loss: cfg.run_params(paper, "cub200", "baseline", loss, 0)  # noqa: E731
    assert run("triplet")["training"]["device"] == "auto" and run("triplet")["training"]["mixed_precision"] == "auto"
    assert run("multi_similarity")["loss_params"] == {"alpha": 2.0, "beta": 50.0, "base": 0.5, "miner_epsilon": 0.1}
    assert run("proxy_anchor")["loss_params"] == {"margin": 0.1, "alpha": 32.0, "proxy_lr_multiplier": 100.0, "projection_head": False}
    assert run("potential_field")["loss_params"]["proxies_per_class"] == 15


def test_paper_config_over_params_yaml_is_valid(paper):
    """Snakemake merges --configfile over params.yaml: the merge must be valid and equal paper.yaml's choices."""
    merged = cfg.load_layered(ROOT / "params.yaml", PAPER)
    assert merged["training"] == paper["training"]
    for name in paper["datasets"]:
        assert cfg.run_params(merged, name, "baseline", "triplet", 0) == cfg.run_params(paper, name, "baseline", "triplet", 0)


def test_dataset_settings_overrides_are_validated(paper):
    bad = dict(paper, dataset_settings={"cub200": {"urls": {"archives": "https://example.org/x.tgz"}}})
    with pytest.raises(cfg.ConfigError, match="archives"):
        cfg.validate(bad)
    bad = dict(paper, dataset_settings={"cars196": {"md5": {"images": "not-an-md5"}}})
    with pytest.raises(cfg.ConfigError, match="not-an-md5"):
        cfg.validate(bad)
    bad = dict(paper, dataset_settings={"cars196": {"urls": {"images": "car_ims.tgz"}}})
    with pytest.raises(cfg.ConfigError, match="car_ims.tgz"):
        cfg.validate(bad)


JOB = re.compile(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", re.S | re.M)


def dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake -n`` on a copy of the workflow, so .snakemake/ and the effective config stay out of the repo."""
    if not (ROOT / "Snakefile").exists():
        pytest.skip("the Snakefile is not on this branch yet")
    for name in ("Snakefile", "rules", "params.yaml", "config", "profiles", "environment.yml", "environment.post-deploy.sh"):
        if not (workdir / name).exists():
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, workdir / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # `--configfile=` with "=": the option takes several values and would swallow the target otherwise.
    command = [str(Path(sys.executable).with_name("snakemake")), "-n", *args, "--configfile=config/paper.yaml", "results/table.csv"]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_dry_run_lists_every_training_job(tmp_path, paper):
    result = dry_run(tmp_path, "--cores", "16")
    jobs = [(rule, body) for rule, body in JOB.findall(result.stdout)]
    train = {}
    for rule, body in jobs:
        if rule != "train":
            continue
        wildcards = dict(kv.split("=", 1) for kv in re.search(r"wildcards: (.*)", body).group(1).split(", "))
        resources = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", body).group(1).split(", "))
        threads = re.search(r"threads: (\d+)", body)
        key = (wildcards["dataset"], wildcards["method"], wildcards["loss"], int(wildcards["seed"]))
        assert f"results/runs/{key[0]}/{key[1]}/{key[2]}/seed{key[3]}/embeddings.npz" in body
        # Validation tracking: the epoch is chosen on validation classes, the last epoch is kept beside it.
        assert f"results/runs/{key[0]}/{key[1]}/{key[2]}/seed{key[3]}/embeddings_last_epoch.npz" in body
        train[key] = (resources, int(threads.group(1)) if threads else 1)
    excluded = {(e["method"], e["loss"]) for e in paper.get("exclude", [])}
    # Every configured run, and the controls of IAA's published loss params (registry.control_label).
    controls = {("baseline+beta=40", "multi_similarity"), ("baseline+reduction=batch_sum", "contrastive")}
    expected = {
        job
        for job in itertools.product(paper["datasets"], [*paper["methods"], *{c for c, _ in controls}], paper["losses"], paper["seeds"])
        if (job[1], job[2]) not in excluded and (job[1] in paper["methods"] or (job[1], job[2]) in controls)
    }
    assert set(train) == expected
    assert ("symm", "proxy_anchor") in excluded  # the one pair that makes no sense
    configured = len(paper["datasets"]) * (len(paper["methods"]) * len(paper["losses"]) - len(excluded)) * 3
    assert len(train) == configured + len(controls) * len(paper["datasets"]) * 3
    for (dataset, *_), (resources, threads) in train.items():
        wanted = paper["dataset_settings"][dataset]["resources"]
        assert resources["gpu"] == str(wanted["gpu"])
        assert resources["mem_mb"] == str(wanted["mem_mb"])
        assert resources["runtime"] == str(wanted["runtime"])
        assert threads == wanted["threads"]
    # Generation only for the training classes left after the validation classes (80 CUB, 78 Cars).
    # One generate and one filter job per dataset x training class (CLIP filtering, on a GPU).
    for wanted in ("generate", "filter_generated"):
        generated = {}
        for rule, body in jobs:
            if rule == wanted:
                dataset = re.search(r"dataset=(\w+)", body).group(1)
                generated[dataset] = generated.get(dataset, 0) + 1
                if wanted == "filter_generated":
                    assert "gpu=1" in re.search(r"resources: (.*)", body).group(1)
        assert generated == {"cub200": 80, "cars196": 78}, wanted
    # Every one of those classes is fine-tuned first (LoRA + textual inversion), on a GPU, and its
    # generate job reads the weights.
    fine_tuned = {}
    for rule, body in jobs:
        if rule == "fine_tune":
            dataset, index = re.search(r"dataset=(\w+), class_index=(\d+)", body).groups()
            fine_tuned[dataset] = fine_tuned.get(dataset, 0) + 1
            assert "gpu=1" in body and f"data/{dataset}/fine_tuned/class{index}" in body
        if rule == "generate":
            dataset, index = re.search(r"class_index=(\d+), dataset=(\w+)|dataset=(\w+), class_index=(\d+)", body).groups()[2:]
            assert f"data/{dataset}/fine_tuned/class{index}" in body  # an input: the job waits for the weights
    assert fine_tuned == {"cub200": 80, "cars196": 78}
    for name in paper["datasets"]:
        assert paper["generation"][name]["fine_tuning"]["method"] == "both"
    prepared = {re.search(r"wildcards: dataset=(\w+)", body).group(1) for rule, body in jobs if rule == "prepare_data"}
    assert prepared == set(paper["datasets"])
    assert not (ROOT / "results" / "runs" / "cub200").exists()  # nothing written into the repo


def test_slurm_profile_is_accepted_by_snakemake(tmp_path, paper):
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1 and profile["latency-wait"] >= 30
    # Every key of the profile is a Snakemake option (a typo fails the parse). With the SLURM
    # plugin installed (pip install -e '.[slurm]') the profile runs as is, otherwise the
    # executor is overridden for the dry run.
    plugin = importlib.util.find_spec("snakemake_executor_plugin_slurm") is not None
    if not plugin:  # the plugin's own options (slurm-*) exist only with it: the rest is checked
        (tmp_path / "profiles" / "slurm").mkdir(parents=True)
        core = {key: value for key, value in profile.items() if not key.startswith("slurm-")}
        (tmp_path / "profiles" / "slurm" / "config.yaml").write_text(yaml.safe_dump(core))
    result = dry_run(tmp_path, "--profile", "profiles/slurm", *([] if plugin else ["--executor", "local"]))
    assert "Using profile profiles/slurm" in result.stdout + result.stderr
    from dmlsynth import config as cfg, resolve

    assert re.search(rf"^train\s+{len(resolve.runs(cfg.validate(paper)))}$", result.stdout, re.M)


def test_paper_config_gives_iaa_its_published_loss_settings(paper):
    """IAA's MS beta = 40 and its official contrastive reduction apply to IAA's runs only."""
    iaa = cfg.run_params(paper, "cub200", "iaa", "multi_similarity", 0)
    assert iaa["loss_params"]["beta"] == 40.0 and iaa["method_params"]["variant"] == "official"
    assert iaa["method_params"]["start_fraction"] == 0.3
    assert cfg.run_params(paper, "cub200", "baseline", "multi_similarity", 0)["loss_params"]["beta"] == 50.0
    assert cfg.run_params(paper, "cub200", "iaa", "contrastive", 0)["loss_params"]["reduction"] == "batch_sum"
    assert cfg.run_params(paper, "cub200", "symm", "contrastive", 0)["loss_params"]["reduction"] == "mean_nonzero"


BLENDER_METHODS = [name for name, spec in registry.METHODS.items() if spec.synthetic_images]


def test_paper_config_generates_with_the_papers_rules_and_volume(paper):
    """The principal-component intersection, caption prompts and every kept generated image (docs/methods.md §7)."""
    from dmlsynth.generation.settings import describe, generation_settings

    for name in paper["datasets"]:
        settings = generation_settings(paper, name)
        assert settings["intersection_rule"] == "principal_component" and settings["guidance_norm"] == "mean"
        assert settings["prompts"]["source"] == "captions" and settings["prompts"]["captioner"]
    for method in BLENDER_METHODS:
        assert cfg.run_params(paper, "cub200", method, "proxy_anchor", 0)["method_params"]["synthetic_per_real"] == "all"
    # What `dmlsynth check-config --config config/paper.yaml` prints beside the matrix.
    result = subprocess.run([sys.executable, "-m", "dmlsynth", "check-config", "--config", str(PAPER)], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), check=True)  # fmt: skip
    lines = result.stdout.splitlines()
    assert [line.strip() for line in lines[1:]] == describe(paper)
    for name in paper["datasets"]:
        line = next(l for l in lines if l.strip().startswith(f"generation.{name}:"))
        assert "intersection_rule principal_component" in line and "guidance_norm mean" in line
        assert "captions of 8 training images per class by Salesforce/blip-image-captioning-large" in line
    for method in BLENDER_METHODS:
        assert any(l.strip().startswith(f"{method}: ") and "every generated image the filter kept" in l for l in lines)


SHELL_JOB = re.compile(r"^rule (\w+):\n(.*?)^Shell command: (.*?)$", re.S | re.M)


def test_dry_run_jobs_read_the_papers_generation_rules(tmp_path, paper):
    """In the dry run, the prompts jobs caption on a GPU, and the config every generation and training job
    reads resolves to the principal-component rule, caption prompts and the full generated set."""
    from dmlsynth.generation.settings import generation_settings

    result = dry_run(tmp_path, "--cores", "16", "--printshellcmds")
    jobs = SHELL_JOB.findall(result.stdout)
    prompts = [body for rule, body, _ in jobs if rule == "prompts"]
    assert len(prompts) == len(paper["datasets"])
    for body in prompts:  # the captioner runs on a GPU, with room for its weights
        assert "gpu=1" in body and "mem_mb=8000" in body
    import json
    import shlex

    def record(shell):  # the job's resolved record, as its command line hands it over
        words = shlex.split(shell)
        return json.loads(words[words.index("--job") + 1])

    records = [(rule, record(shell)) for rule, _, shell in jobs if rule in ("prompts", "generate", "train")]
    for rule, job in records:
        if rule == "generate":
            settings = job["params"]["generation"]
            assert (settings["intersection_rule"], settings["guidance_norm"]) == ("principal_component", "mean")
        if rule == "prompts":
            assert job["params"]["prompts"] == {**job["params"]["prompts"], "source": "captions",
                                                "captioner": "Salesforce/blip-image-captioning-large", "images_per_class": 8}  # fmt: skip
    trained = {job["params"]["method"]: job for rule, job in records if rule == "train"}
    for method in BLENDER_METHODS:
        assert trained[method]["params"]["method_params"]["synthetic_per_real"] == "all"
    assert {rule for rule, _ in records} == {"prompts", "generate", "train"}
