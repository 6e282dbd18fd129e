"""End to end: the example plugin (examples/) installed as a user installs it, checked by `dmlsynth
check-method`, and benchmarked on the example image-folder dataset by the real workflow, paired with its
control in the table; editing its module re-runs only its runs, their evaluations and the table.

The plugin goes into a temporary folder (``pip install --no-deps --target``) put on ``PYTHONPATH`` for the
commands and Snakemake's jobs: the test environment itself is left as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT
from tests.helpers.workflow import snakemake, tiny_workflow

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "dmlsynth-example-mixup"
PACKAGE = "dmlsynth_example_mixup"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The example plugin installed into a temporary folder; the environment that sees it."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, tmp / "source")  # pip's build files stay out of the repository
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    path = os.pathsep.join(p for p in (str(site), str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "SITE": str(site)}


def dmlsynth(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dmlsynth", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": env["PYTHONPATH"]},
    )  # fmt: skip


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run: rule -> jobs."""
    stats = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.MULTILINE) if m[1] != "total"}


def test_the_example_plugin_is_listed_and_passes_the_contract(installed):
    listed = dmlsynth(installed, "plugins")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"method\s+example_mixup\s+dmlsynth-example-mixup 0\.1\.0", listed.stdout), listed.stdout
    assert re.search(r"dataset\s+example_shapes\s+dmlsynth-example-mixup 0\.1\.0", listed.stdout), listed.stdout
    assert "example_mixup" in dmlsynth(installed, "list", "methods").stdout
    checked = dmlsynth(installed, "check-method", "example_mixup")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout and "off params train bit-identically to the control" in checked.stdout


def test_the_workflow_pairs_the_example_method_with_its_control_and_edits_rerun_only_its_jobs(
    installed, default_params, tmp_path
):
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_image_folder.py"), str(tmp_path / "shapes")], check=True)
    # The tutorial's config over params.yaml (tiny budget, paths here), and over that its folder's place here.
    tiny_workflow(default_params, tmp_path, seeds=[0, 1], losses=["multi_similarity"])
    example = ROOT / "examples" / "example_shapes.yaml"
    here = tmp_path / "here.yaml"
    here.write_text(yaml.safe_dump({"dataset_settings": {"example_shapes": {"root": str(tmp_path / "shapes")}}}))
    env = {"PYTHONPATH": installed["PYTHONPATH"]}

    configs = ("--configfile", str(example), str(here))
    snakemake(tmp_path, "results/table.csv", *configs, env=env)

    table = pd.read_csv(tmp_path / "results" / "table.csv", keep_default_na=False).set_index(["method", "loss"])
    assert table.loc[("example_mixup", "multi_similarity"), "control"] == "baseline"
    assert "example_mixup" in (tmp_path / "results" / "summary.md").read_text()
    run = yaml.safe_load(next((tmp_path / "results" / "runs").rglob("example_mixup/*/seed0/run.yaml")).read_text())
    assert run["code"]["plugins"] == {"method.example_mixup": "dmlsynth-example-mixup 0.1.0", "dataset.example_shapes": "dmlsynth-example-mixup 0.1.0"}
    assert snakemake(tmp_path, "-n", "results/table.csv", *configs, env=env).output.count("Nothing to be done") == 1

    # An edit of the plugin's method module: its two runs, their evaluations and the table, nothing else.
    method = Path(installed["SITE"]) / PACKAGE / "method.py"
    method.write_text(method.read_text() + "\n# edited\n")
    counts = job_counts(snakemake(tmp_path, "-n", "results/table.csv", *configs, env=env).output)
    assert counts.get("train") == 2 and counts.get("evaluate") == 2 and counts.get("table") == 1, counts
    assert set(counts) <= {"train", "evaluate", "table"}, counts
