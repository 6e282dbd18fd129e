"""Every module a job imports is in its code digest: what decides its re-runs is what it runs.

Each kind of job of a tiny workflow (data, generation, training, evaluation, table, comparison) is run
through the command line, as a rule runs it, with its record; the ``dmlsynth`` modules the process
imported are recorded. Each must be among the modules its code digest hashes (the closure that
:meth:`dmlsynth.jobs.Job.code_digest` follows from its command, the runtime and the registry
entries it uses), bookkeeping modules aside; and the digest follows little else.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dmlsynth import jobs as job_records
from dmlsynth import provenance
from tests.conftest import small_config

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


def test_every_module_a_job_imports_is_in_its_code_digest(default_params, tmp_path):
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=2)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config["tracking"] = {"enabled": False}
    config.update(methods=["baseline", "blender"], seeds=[0])
    from dmlsynth import config as cfg

    jobs = job_records.Jobs(cfg.validate(config))
    classes = range(jobs.training_classes("digits"))
    order = [
        jobs.prepare_data("digits"), jobs.prompts("digits"), jobs.train_generator("digits"),
        *[jobs.generate("digits", i) for i in classes], *[jobs.filter_generated("digits", i) for i in classes],
        *[jobs.merge_generated("digits", s) for s in jobs.image_sets()], jobs.generation_report(),
        *[jobs.train(**run) for run in jobs.runs], *[jobs.evaluate(**run) for run in jobs.runs], jobs.table(), jobs.compare(),
    ]  # fmt: skip
    checked = {}
    for number, job in enumerate(order):
        imported = run_recorded(job, tmp_path / f"imports-{number}.json", tmp_path)
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
