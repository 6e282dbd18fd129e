"""The code digest: which source a job executes, and a change to it re-runs exactly the jobs that execute it."""

import shutil

import pytest

from dmlsynth import config as cfg
from dmlsynth import jobs, provenance


def train_code(config, method) -> str:
    """The code digest of the ``train`` job of ``method`` (digits, multi-similarity, seed 0)."""
    config = cfg.validate(dict(config, methods=[method]))
    return jobs.Jobs(config).train("digits", method, "multi_similarity", 0).code_digest()


def test_training_closure_holds_what_training_executes_and_nothing_else():
    closure = provenance.module_closure([provenance.TRAINING_MODULE])
    for module in ("dmlsynth.training.build", "dmlsynth.training.checkpoint", "dmlsynth.losses", "dmlsynth.models",
                   "dmlsynth.methods.base", "dmlsynth.data.images"):
        assert module in closure, module
    # Method modules come from the run's own registry entry; generation never runs in training.
    assert not any(m.startswith(("dmlsynth.methods.symm", "dmlsynth.methods.iaa", "dmlsynth.generation")) for m in closure)
    # Validation ranks epochs with the metrics, not with the evaluation job's plots and files.
    assert "dmlsynth.metrics" in closure and "dmlsynth.evaluation" not in closure
    files = {f.name for f in provenance.source_files([provenance.TRAINING_MODULE])}
    assert "io.py" not in files and "provenance.py" not in files and "registry.py" not in files  # bookkeeping


def test_relative_and_function_level_imports_are_followed():
    closure = provenance.module_closure(["dmlsynth.commands.generate"])
    assert "dmlsynth.generation.run" in closure  # imported inside a function
    assert "dmlsynth.generation.blend" in closure  # through dmlsynth.generation.sampler
    assert "dmlsynth.generation.generators" in closure  # the generator loaders
    # Bookkeeping is not followed: the command line's subcommands and the record builder's resolvers.
    assert "dmlsynth.table" not in provenance.module_closure(["dmlsynth.commands.train"])
    assert "dmlsynth.config" not in provenance.module_closure(["dmlsynth.commands.train"])


def test_editing_a_method_changes_the_digest_of_its_runs_only(config, tmp_path, monkeypatch):
    copy = tmp_path / "dmlsynth"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)
    provenance._direct_imports.cache_clear()
    provenance._digest.cache_clear()
    before = train_code(config, "symm"), train_code(config, "iaa")
    assert before[0] != before[1]

    (copy / "methods" / "symm.py").write_text((copy / "methods" / "symm.py").read_text() + "\n# a comment\n")
    provenance._digest.cache_clear()
    after = train_code(config, "symm"), train_code(config, "iaa")
    assert after[0] != before[0] and after[1] == before[1]

    (copy / "losses.py").write_text((copy / "losses.py").read_text() + "\n# shared by every run\n")
    provenance._digest.cache_clear()
    assert train_code(config, "iaa") != after[1]
    provenance._direct_imports.cache_clear()
    provenance._digest.cache_clear()


def test_code_version_reads_the_project_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.PROJECT_DIR_VARIABLE, str(tmp_path))
    version = provenance.code_version()
    assert version["project_dir"] == str(tmp_path) and version["git_commit"] == "unknown"  # not a git folder


def test_a_module_outside_the_package_is_refused():
    with pytest.raises(ValueError, match="not a module of dmlsynth"):
        provenance.module_file("torch.nn")


def test_the_digest_is_the_same_in_every_process():
    # Registry entries hold frozensets, whose order follows per-process string hashing.
    import subprocess
    import sys

    script = (
        "import yaml; from dmlsynth import config as c, jobs as j;"
        "cfg = c.validate(dict(yaml.safe_load(open('params.yaml')), methods=['symm']));"
        "print(j.Jobs(cfg).train('digits', 'symm', 'multi_similarity', 0).identity())"
    )
    from tests.conftest import ROOT

    digests = {
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()
        for seed in (1, 2, 3)
    }  # fmt: skip
    assert len(digests) == 1
