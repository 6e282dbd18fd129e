"""After a reduced run, the results read as the README says: its report command works (with the same
overrides, as the README tells), and `dvc plots show` renders the figures offline.

The commands are taken from the README, so the README stays true.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.helpers.workflow import snakemake, tiny_workflow

BIN = Path(sys.executable).parent


def readme_block(containing: str) -> list[str]:
    """The commands of the README's bash block that contains ``containing``."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        if containing in block:
            return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    raise AssertionError(f"the README has no command block with {containing!r}")


def _report_data(html: str) -> tuple[str, dict]:
    """The workflow description (HTML) and the results (path -> entry) the report embeds as JavaScript values."""
    description = json.loads(re.search(r"var workflow_desc = (.*?);\n", html, re.S).group(1))
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html, re.S).group(1))
    return description, results


def _shown(entry: dict) -> str:
    """A result's content as the report holds it (a base64 data URI)."""
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode("utf-8")


def assert_the_report_opens_on_the_answer(html: str, results_dir: Path) -> None:
    """The first page says what was compared and shows the summary's numbers; the summary, the comparison (with
    its forest plots) and the table are pages the report shows (text/html), not downloads; the figures have captions."""
    description, results = _report_data(html)
    summary = pd.read_csv(results_dir / "summary.csv", keep_default_na=False)
    numbers = [f"{float(v):.1f}" for v in summary["R@1 %"]] + [f"{float(v):+.1f}" for v in summary["R@1 Δ"] if v != "n/a"]
    assert "What was compared" in description and all(m in description for m in ("symm", "iaa", "multi_similarity"))
    text = re.sub(r"<[^>]+>", " ", description)
    assert all(f" {number} " in text or f" {number}" in text for number in numbers), (numbers, text[:3000])
    assert "<table" in description  # the summary's table itself, not a link to it
    pages = {Path(path).name: entry for path, entry in results.items()}
    for name in ("summary.html", "comparison.html", "table.html"):
        assert pages[name]["mime_type"] == "text/html", name  # the report shows it in its own page
    assert all(number in _shown(pages["summary.html"]) for number in numbers)
    comparison = _shown(pages["comparison.html"])
    assert comparison.count("data:image/png;base64,") == 1 and "Methods vs their controls" in comparison  # its forest plot inside
    assert "<table" in _shown(pages["table.html"]) and "recall@1_mean" in _shown(pages["table.html"])
    assert not {"summary.md", "table.csv", "summary.csv", "comparison.md"} & set(pages)  # no download-only twin
    for name in ("recall_at_1.png", "training_loss.png", "forest_digits_multi_similarity.png"):
        assert pages[name]["caption"].strip(), name
    # A job's parameters read as name=value pairs, not as the record's escaped JSON on one line.
    params = pages["summary.html"]["job_properties"]["params"]
    assert "statistics.confidence=0.95" in params and '\\"' not in params, params


def screenshot(page: Path, shot: Path) -> None:
    """The report's first page in a headless browser (where one is installed): drawn, not blank."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    from PIL import Image

    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20


@pytest.mark.slow
def test_the_readme_report_command_follows_a_reduced_run_and_dvc_plots_render_offline(default_params, tmp_path):
    run, report = readme_block("snakemake --report results/report.html --config")
    assert run.startswith("snakemake --cores all --config") and report.startswith("snakemake --report results/report.html")
    assert shlex.split(run)[3:] == shlex.split(report)[3:], "the README's report command repeats the run's overrides"
    tiny_workflow(default_params, tmp_path, methods=["baseline", "symm", "iaa"], seeds=[0, 1, 2])

    snakemake(tmp_path, *shlex.split(run)[1:], timeout=1500)  # the default target: table and comparison
    for name in ("summary.md", "summary.csv", "table.csv", "metrics.json", "comparison.md", "figures/training_loss.png"):
        assert (tmp_path / "results" / name).is_file(), name
    assert "seed2" not in (tmp_path / "results" / "table.csv").read_text()  # the reduced run: seeds 0 and 1

    made = snakemake(tmp_path, *shlex.split(report)[1:], timeout=600)
    html = (tmp_path / "results" / "report.html").read_text()
    assert "Report created" in made.output
    assert "comparison.html" in html and html.count("seed1/train_curve.png") >= 1 and "seed2/train_curve.png" not in html
    assert_the_report_opens_on_the_answer(html, tmp_path / "results")
    screenshot(tmp_path / "results" / "report.html", tmp_path / "report.png")
    # Without the overrides the report asks for the runs of the folder's params.yaml (seed 2 too), as the README says.
    (tmp_path / "results" / "report.html").unlink()
    plain = readme_block("snakemake --report results/report.html")[0]
    failed = snakemake(tmp_path, *shlex.split(plain)[1:], check=False, timeout=600)
    assert failed.returncode != 0 and "marked for report but does not exist" in failed.output

    # DVC: the plots of dvc.yaml are images; the page needs no script from a CDN and names both.
    from dmlsynth import config as cfg
    from dmlsynth.pipeline import dvc_yaml

    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    (tmp_path / "dvc.yaml").write_text(dvc_yaml(cfg.load(tmp_path / "params.yaml")))
    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], [str(BIN / "dvc"), "plots", "show"]):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "<script" not in page and "http" not in page  # renders offline
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 2 and all((tmp_path / "dvc_plots" / src).read_bytes()[:4] == b"\x89PNG" for src in images)
    assert {"recall_at_1", "training_loss"} == {name for src in images for name in ("recall_at_1", "training_loss") if name in src}
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:  # a headless browser without network draws the page with both images loaded
        shot = tmp_path / "plots.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600", f"--screenshot={shot}",
             (tmp_path / "dvc_plots" / "index.html").as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        from PIL import Image

        with Image.open(shot) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # the figures' colours, not a blank page
