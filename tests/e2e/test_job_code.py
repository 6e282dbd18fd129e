"""Every module a job imports is in its code digest: what decides its re-runs is what it runs.

Each kind of job of a tiny workflow (data, generation, training, evaluation, table, comparison) is run
again through the command line, as a rule runs it, with its record; the ``dmlsynth`` modules the process
imported are recorded. Each must be among the modules its code digest hashes (the closure that
:meth:`dmlsynth.jobs.Job.code_digest` follows from its command, the runtime and the registry
entries it uses), bookkeeping modules aside; and the digest follows little else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from dmlsynth import jobs as job_records
from dmlsynth import provenance
from tests.helpers.workflow import copy_of

pytestmark = pytest.mark.slow

# What the process imports to parse the record (the command line, the record builder and their module-level
# imports: bookkeeping, whose decisions are in the record's params) is set apart: the job's own imports follow.
RECORD_IMPORTS = """
import json, sys
from dmlsynth import cli, jobs
cli.build_parser()
before = set(sys.modules)
try:
    code = cli.main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as out:
        json.dump(sorted(m for m in set(sys.modules) - before if m == "dmlsynth" or m.startswith("dmlsynth.")), out)
sys.exit(code)
"""


def run_recorded(job: job_records.Job, out, cwd) -> set[str]:
    command = [sys.executable, "-c", RECORD_IMPORTS, str(out), job.rule.replace("_", "-"), "--job", job.to_json()]
    for name in job.arguments:
        command += [str(path) for path in job.inputs[name]]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{job.rule} {job.name}:\n{result.stderr[-3000:]}"
    return set(json.loads(out.read_text()))


def test_every_module_a_job_imports_is_in_its_code_digest(finished_embedded, tmp_path):
    # Each kind of job run again in a copy of the finished embedded workflow (its outputs deleted first, as
    # Snakemake does): one job of a kind whose jobs differ only in their class or image set, every method's
    # training (a method's code is imported by its runs alone).
    from dmlsynth import config as cfg

    config, finished = finished_embedded
    copy_of(finished, tmp_path)
    config["tracking"] = {"enabled": False}  # its tracking store is the shared run's (an absolute path)
    jobs = job_records.Jobs(cfg.validate(config))
    runs = {run["method"]: run for run in jobs.runs if run["loss"] == config["losses"][0] and run["seed"] == 0}
    order = [
        jobs.prepare_data("digits"), jobs.prompts("digits"), jobs.train_generator("digits"),
        jobs.generate("digits", 0), jobs.filter_generated("digits", 0),
        *[jobs.merge_generated("digits", s) for s in jobs.image_sets()], jobs.generation_report(),
        *[jobs.train(**run) for run in runs.values()], *[jobs.evaluate(**run) for run in runs.values()],
        jobs.table(), jobs.compare(),
    ]  # fmt: skip
    assert set(runs) == {"baseline", "blender", "sd_plain"} and set(jobs.image_sets()) == {"blender", "plain"}
    checked = {}
    for number, job in enumerate(order):
        for made in (tmp_path / path for path in job.made()):  # (an earlier job may have removed it: stale)
            shutil.rmtree(made) if made.is_dir() else made.unlink(missing_ok=True)
        imported = run_recorded(job, tmp_path / f"imports-{number}.json", tmp_path)
        assert all((tmp_path / made).exists() for made in job.made()), f"{job.rule} {job.name} did not run"
        digest = set(provenance.hashed_modules(job.code_modules))
        # Bookkeeping modules (recording, writing, layout, the record and the command line) change no number.
        missing = sorted(imported - digest - provenance.BOOKKEEPING)
        assert not missing, f"{job.rule} imports {missing}, which its code digest does not cover"
        checked[job.rule] = sorted(digest - imported)
    assert set(checked) == {
        "prepare_data", "prompts", "train_generator", "generate", "filter_generated", "merge_generated",
        "generation_report", "train", "evaluate", "table", "compare",
    }  # fmt: skip
    # The digests follow little that the jobs do not run (modules imported on another device or generator).
    assert all(len(extra) <= 12 for extra in checked.values()), checked
