"""What every job of the workflow asks a cluster for (docs/cluster.md), read from Snakemake's dry runs."""

import functools
import re
import shutil

import pytest
import yaml

from tests.conftest import ROOT
from tests.helpers.workflow import snakemake

pytestmark = pytest.mark.slow

PAPER = str(ROOT / "config" / "paper.yaml")
PLACED = "cluster={gpu_partition: gpu, gpu_model: a100, partition: cpu}"


@functools.cache
def _dry_run(workdir, *args) -> str:
    return snakemake(workdir, "-n", "--cores", "8", *args).output


def jobs(workdir, *args) -> dict[tuple[str, str], dict[str, str]]:
    """(rule, wildcards) -> resources of every job a dry run lists."""
    output = _dry_run(workdir, *args)
    found, rule, wildcards = {}, None, ""
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule, wildcards = match[1], ""
        elif rule and (match := re.match(r"^\s+wildcards: (.*)$", line)):
            wildcards = match[1]
        elif rule and (match := re.match(r"^\s+resources: (.*)$", line)):
            found[(rule, wildcards)] = dict(item.split("=", 1) for item in match[1].split(", "))
            rule = None
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("dry-runs")
    shutil.copy(ROOT / "params.yaml", tmp_path)
    # Captions: the prompts job runs a model then, on the GPU.
    captions = {"prompts": {"source": "captions", "captioner": "Salesforce/blip-image-captioning-base"}}
    (tmp_path / "captions.yaml").write_text(yaml.safe_dump({"generation": {"cub200": captions}}))
    return tmp_path


def all_rules(workdir) -> set[str]:
    return set(snakemake(workdir, "--list-rules").stdout.split()) - {"all"}


@pytest.mark.parametrize("configs", [[], ["--configfile", PAPER, "captions.yaml"]], ids=["embedded", "paper"])
def test_every_job_asks_for_more_memory_and_time_on_each_try(workdir, configs):
    first, third = jobs(workdir, *configs), jobs(workdir, *configs, "--attempt", "3")
    assert first.keys() == third.keys()
    for job, resources in first.items():
        if job[0] == "all":
            continue
        for name in ("mem_mb", "runtime"):
            assert int(third[job][name]) == 3 * int(resources[name]), (job, name)


def test_both_configs_cover_every_rule(workdir):
    covered = {rule for rule, _ in jobs(workdir)} | {rule for rule, _ in jobs(workdir, "--configfile", PAPER, "captions.yaml")}
    assert all_rules(workdir) <= covered


@pytest.mark.parametrize("configs", [[], ["--configfile", PAPER, "captions.yaml"]], ids=["embedded", "paper"])
def test_one_setting_sends_every_gpu_job_to_the_gpu_partition(workdir, configs):
    placed = jobs(workdir, *configs, "--config", PLACED)
    gpu_rules = set()
    for (rule, wildcards), resources in placed.items():
        if rule == "all":
            continue
        if int(resources.get("gpu", 0)):
            gpu_rules.add(rule)
            assert (resources["slurm_partition"], resources.get("gpu_model")) == ("gpu", "a100"), (rule, wildcards)
        else:
            assert resources["slurm_partition"] == "cpu" and "gpu_model" not in resources, (rule, wildcards, resources)
    if configs:  # the paper config with captions: every rule that can take a GPU does
        assert gpu_rules == {"train", "fine_tune", "generate", "filter_generated", "generation_report", "prompts"}
    # Without the settings the jobs carry no placement: the profile's default-resources decide.
    for resources in jobs(workdir, *configs).values():
        assert "slurm_partition" not in resources and "gpu_model" not in resources


def test_a_partition_set_twice_is_refused(workdir):
    result = snakemake(
        workdir, "-n", "--default-resources", "slurm_partition=cpu", "--config", PLACED, check=False
    )  # fmt: skip
    assert result.returncode != 0
    assert "the SLURM partition is set twice" in result.output and "cluster.partition" in result.output


def test_the_lint_shows_only_what_the_docs_explain(workdir):
    lint = snakemake(workdir, "--lint", check=False).output
    titles = set(re.findall(r"^\s+\* (.+?)(?: in line \d+)?\.?:$", lint, re.M))
    docs = (ROOT / "docs" / "cluster.md").read_text().split("## `snakemake --lint`")[1]
    explained = set(re.findall(r"^\| (?!finding )([^|]+?) \|", docs, re.M)) - {"---"}
    assert titles <= explained, f"findings the docs do not explain: {titles - explained}"
    if not explained:  # the docs say the lint is clean: so must it be
        assert "your workflow is in a good condition" in lint, lint


def test_the_generator_takes_a_gpu_when_its_device_asks_for_one(workdir):
    def generator(*configs):
        ((_, resources),) = [(job, r) for job, r in jobs(workdir, "--config", PLACED, *configs).items() if job[0] == "train_generator"]
        return resources

    assert int(generator().get("gpu", 0)) == 0 and generator()["slurm_partition"] == "cpu"
    on_gpu = generator("generation={digits: {device: cuda}}")
    assert int(on_gpu["gpu"]) == 1 and (on_gpu["slurm_partition"], on_gpu["gpu_model"]) == ("gpu", "a100")
