"""DVC and Snakemake run one pipeline: dvc.yaml is generated from the same definitions."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import resolve
from dmlsynth.pipeline import dvc_yaml
from dmlsynth.config import filled
from tests.conftest import small_config
from tests.helpers.workflow import project_copy

BIN = Path(sys.executable).parent


def test_committed_dvc_yaml_is_generated_from_params(repo_root):
    expected = dvc_yaml(cfg.load(repo_root / "params.yaml"))
    assert (repo_root / "dvc.yaml").read_text() == expected, (
        "dvc.yaml is out of date with params.yaml / the pipeline: run `dmlsynth dvc-yaml > dvc.yaml`"
    )


def _snakemake_outputs(repo_root, workdir) -> set[str]:
    """Every file Snakemake's DAG would produce, from its own summary."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(repo_root / "Snakefile"), "--directory", str(workdir),
         "--cores", "1", "--summary"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    header = lines[0]
    column = header.index("output_file")
    return {row[column] for row in lines[1:]}


# Stable Diffusion fine-tuned per class (its fine_tune jobs' folders are outputs of the generation stage).
FINE_TUNED_SD = {"digits": {"generator": "stable-diffusion", "fine_tuning": {"method": "lora"}}}


@pytest.mark.parametrize(
    "methods, generation",
    [
        (["baseline"], None),
        (None, None),
        (["baseline", "blender", "sd_plain"], None),
        (["blender"], FINE_TUNED_SD),
    ],
)
def test_dvc_stages_declare_exactly_what_snakemake_produces(repo_root, default_params, tmp_path, methods, generation):
    config = small_config(default_params, tmp_path, tmp_path)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config["losses"] = ["multi_similarity", "triplet"]
    if methods:
        config["methods"] = methods
    if generation:
        config["generation"] = generation
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    stages = yaml.safe_load(dvc_yaml(cfg.validate(config)))["stages"]
    declared = set()
    for stage in stages.values():
        declared |= {next(iter(o)) for o in stage.get("outs", [])}
        declared |= {next(iter(m)) for m in stage.get("metrics", [])}
    produced = _snakemake_outputs(repo_root, tmp_path)
    # DVC versions the image folders; Snakemake knows only the manifests that mark them complete.
    image_dirs = {o for o in declared if o.endswith("/images")}
    assert "data/digits/images" in image_dirs
    assert produced == declared - image_dirs
    if generation:
        assert "data/digits/fine_tuned/class0" in declared


@pytest.mark.slow
def test_dvc_repro_makes_what_snakemake_would_make(repo_root, default_params, tmp_path):
    """`dvc repro` from nothing runs every stage and leaves the results Snakemake itself would make: a dry
    run of the workflow in the same folder has nothing to do (every job's record — params, code digest,
    inputs — is the one Snakemake would write), and the same params give the same numbers (tests of
    determinism: test_reproducibility.py, test_embedded_default_numbers.py)."""
    config = small_config(default_params, tmp_path, tmp_path, epochs=1, batches_per_epoch=2)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    # Every kind of stage (dvc.yaml's stages are `snakemake --until` steps): generated images (blender), a
    # control with its own loss params (iaa's baseline+beta=40: '+' and '=' in its files' paths). The default's
    # other methods and seeds run the same stages with other method code or seeds (test_workflow.py).
    config["methods"] = ["baseline", "iaa", "blender"]
    config["seeds"] = [0]
    config["tracking"] = {"enabled": False}
    project = project_copy(tmp_path / "dvc")
    (project / "params.yaml").write_text(yaml.safe_dump(config))
    (project / "dvc.yaml").write_text(dvc_yaml(cfg.validate(config)))
    # The project's copy runs its own copy of the package (the workflow refuses another checkout's).
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(project / "src")}

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900, env=env)
        assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    run("git", "init", "-q")
    run(str(BIN / "dvc"), "init", "-q")
    run(str(BIN / "dvc"), "repro")
    assert "baseline R@1" in run(str(BIN / "dvc"), "metrics", "show", "--json")  # the headline metrics
    table = pd.read_csv(project / "results" / "table.csv")
    runs = {(r["method"], r["loss"]) for r in resolve.runs(cfg.validate(config))}
    assert set(zip(table.method, table.loss)) == runs and (table.seeds == 1).all()
    assert "up to date" in run(str(BIN / "dvc"), "status").lower()
    # Snakemake finds every job's output current: a stage that ran with other params, code or inputs than
    # the workflow's (or left a job out) would be planned again here.
    planned = run(sys.executable, "-m", "snakemake", "--cores", "1", "--dry-run", "all")
    assert "Nothing to be done" in planned, planned


def _dvc_project(folder: Path, env: dict) -> None:
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"


def test_dvc_metrics_show_of_the_embedded_default_fits_200_columns(repo_root, tmp_path):
    """The headline metrics of params.yaml's rows (every method, its control), as `dvc metrics show` prints them."""
    import os

    import numpy as np

    from dmlsynth import registry, resolve
    from dmlsynth.layout import Layout, TableFiles
    from dmlsynth.table import write_table
    from tests.helpers.runs import make_run, simulated_hits

    config = cfg.load(repo_root / "params.yaml")
    rng = np.random.default_rng(0)
    for run in resolve.runs(config):
        label, loss = run["method"], run["loss"]
        control = None if label.startswith(registry.BASELINE) else registry.control_label(config, label, loss)
        make_run(tmp_path, run["dataset"], label, loss, run["seed"], simulated_hits(rng, 0.9, 0.0), control=control)
    layout = Layout.of(config)  # results/... as in the project folder
    write_table([tmp_path / "runs"], TableFiles.under(str(tmp_path / layout.results)), filled({"statistics": {"bootstrap_samples": 100}})["statistics"])
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "1000"}
    _dvc_project(tmp_path, env)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"metrics": [layout.headline_metrics()]}))
    shown = subprocess.run([str(BIN / "dvc"), "metrics", "show"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if line.strip()]
    assert lines[0].split()[0] == "Path" and len(lines) == 2  # a header and one row of numbers
    rows = {(r["method"], r["loss"]) for r in resolve.runs(config)}
    assert all(method in lines[0] for method, _ in rows)  # every method and control has its number
    width = max(map(len, lines))
    assert width <= 200, f"dvc metrics show is {width} columns wide:\n{shown.stdout}"
    print(f"dvc metrics show: {width} columns")


def _headline_of_the_default(repo_root, folder: Path, config) -> None:
    """results/metrics.json of params.yaml's rows (every method, its control), from simulated runs."""
    import numpy as np

    from dmlsynth import registry, resolve
    from dmlsynth.layout import Layout, TableFiles
    from dmlsynth.table import write_table
    from tests.helpers.runs import make_run, simulated_hits

    rng = np.random.default_rng(0)
    runs = folder / "simulated"
    for run in resolve.runs(config):
        label, loss = run["method"], run["loss"]
        control = None if label.startswith(registry.BASELINE) else registry.control_label(config, label, loss)
        make_run(runs, run["dataset"], label, loss, run["seed"], simulated_hits(rng, 0.9, 0.0), control=control)
    files = TableFiles.under(str(folder / "simulated" / "results"))
    write_table([runs / "runs"], files, filled({"statistics": {"bootstrap_samples": 100}})["statistics"])
    headline = folder / Layout.of(config).headline_metrics()
    headline.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files.headline, headline)
    shutil.rmtree(runs)


def readme_exp_show_command(repo_root) -> list[str]:
    """The `dvc exp show` command the README gives for a terminal."""
    import re
    import shlex

    found = re.findall(r"`(dvc exp show [^`]+)`", (repo_root / "README.md").read_text())
    assert len(found) == 1, f"the README gives one `dvc exp show ...` command, not {found}"
    return shlex.split(found[0])


def test_the_readmes_dvc_exp_show_of_the_quick_start_fits_200_columns(repo_root, tmp_path):
    """`dvc exp show` after the quick start's stages (every dependency and output of dvc.yaml in place, recorded
    in dvc.lock by `dvc commit`): the README's command shows the headline metrics in 200 columns."""
    import os

    config = cfg.load(repo_root / "params.yaml")
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    shutil.copyfile(repo_root / "params.yaml", tmp_path / "params.yaml")
    shutil.copyfile(repo_root / "dvc.yaml", tmp_path / "dvc.yaml")
    _headline_of_the_default(repo_root, tmp_path, config)
    for stage in stages.values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            path = tmp_path / (next(iter(entry)) if isinstance(entry, dict) else entry)
            if path.exists():
                continue
            if (repo_root / path.relative_to(tmp_path)).is_file():  # the code: as it is
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(repo_root / path.relative_to(tmp_path), path)
            elif not path.suffix:  # a folder output (images, the generator)
                path.mkdir(parents=True, exist_ok=True)
                (path / "made").write_text(str(path))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(str(path))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "200", "LINES": "50"}
    _dvc_project(tmp_path, env)
    for command in ([str(BIN / "dvc"), "commit", "-f", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "quick start"]):  # fmt: skip
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"

    def shown(arguments: list[str]) -> list[str]:
        result = subprocess.run([str(BIN / "dvc"), *arguments, "--no-pager"], cwd=tmp_path, capture_output=True, text=True,
                                env=env, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return [line.rstrip() for line in result.stdout.splitlines() if line.strip()]

    # An experiment with one param changed, in the workspace: the params that differ get their column.
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["training"]["epochs"] = 2 * params["training"]["epochs"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    everything = shown(["exp", "show", "--csv"])[0].split(",")
    command = readme_exp_show_command(repo_root)
    lines = shown(command[1:])
    width = max(map(len, lines))
    print(f"dvc exp show: {len(everything)} columns in all; the README's command: {width} characters wide\n" + "\n".join(lines))
    assert width <= 200, "\n".join(lines)
    headline = json.loads((tmp_path / "results" / "metrics.json").read_text())
    header = " ".join(lines[:3])
    assert all(name in header for name in headline), (list(headline), header)  # each headline metric has its column
    assert "training.epochs" in header and "training.lr" not in header  # the param that differs, not the others
    assert "…" not in "".join(lines) and "src/" not in header  # nothing cut; no per-file dependency
