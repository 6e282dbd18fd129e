"""Every rule is a thin rule (the Snakemake workflow template's shape): a log, a benchmark file beside
it, threads, resources from the job's record and one `dmlsynth` call."""

from __future__ import annotations

import re

import pytest

from dmlsynth.layout import Layout
from tests.conftest import ROOT

RULE = re.compile(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", re.M)


def _rules() -> dict[str, str]:
    rules = {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        rules.update({name: body for name, body in RULE.findall(path.read_text())})
    return rules


RULES = _rules()


def test_the_rules_are_found():
    assert {"prepare_data", "train", "evaluate", "table", "compare", "generate"} <= set(RULES)


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_rule_is_thin_and_measured(name):
    body = RULES[name]
    for directive in ("log:", "benchmark:", "threads:", "resources:", "shell:"):
        assert f"\n    {directive}" in f"\n{body}", f"rule {name} has no {directive}"
    shell = body.split("shell:", 1)[1]
    assert len(re.findall(r"\bdmlsynth [a-z-]+ --job \{params\.job:jsonq\}", shell)) == 1, f"rule {name}: one dmlsynth call"
    # The benchmark file names the same job as the log: one per job, never shared between jobs.
    log = re.search(r"log:\n\s+LAYOUT\.log\((.*)\),", body)
    benchmark = re.search(r"benchmark:\n\s+LAYOUT\.benchmark\((.*)\),", body)
    assert benchmark, f"rule {name}: benchmark: LAYOUT.benchmark(...)"
    if log:
        assert log.group(1) == benchmark.group(1)
    else:  # a job-level log (table, compare, generation report): the rule's own name
        assert benchmark.group(1) == f'"{name}"'


def test_benchmark_files_lie_beside_the_logs_one_per_job():
    layout = Layout(data="d", results="r", logs="logs")
    assert layout.benchmark("train", "digits", "iaa", "triplet", "seed0") == "logs/benchmarks/train/digits/iaa/triplet/seed0.tsv"
    assert layout.benchmark("table") == "logs/benchmarks/table.tsv"
    assert layout.benchmark("train", "digits", "iaa", "triplet", "seed0") != layout.benchmark("train", "digits", "iaa", "triplet", "seed1")


def test_the_shell_gets_the_record_and_the_report_readable_params():
    """`{params.job:jsonq}` formats the record's JSON, shell-quoted, as Snakemake's shell formatter does; plain
    formatting — the Snakemake report's "Job parameters" — gives the params as name=value pairs that wrap."""
    import json
    import shlex

    from snakemake.utils import QuotedFormatter

    from dmlsynth import config as cfg
    from dmlsynth.jobs import Job, Jobs

    jobs = Jobs(cfg.load(ROOT / "params.yaml"))
    argument = jobs.train("digits", "iaa", "multi_similarity", 0).argument()
    quoted = QuotedFormatter().format("dmlsynth train --job {job:jsonq}", job=argument)
    text = shlex.split(quoted)[-1]
    assert Job.from_json(text, "train").params == json.loads(str(argument))["params"]
    shown = f"{argument}"  # how the report formats a param (snakemake.logging.format_dict)
    assert shown.startswith("train ") and "method=iaa" in shown and "seed=0" in shown and "training.epochs=" in shown
    assert '"' not in shown and "{" not in shown  # no JSON (which the report escapes into one unbroken line)
