"""reproducibility.cpu_isa: every job's record carries the instruction set, it decides the job's identity, and a
CPU that cannot run it is told so."""

from __future__ import annotations

import copy
import json

import pytest

from dmlsynth import config as cfg
from dmlsynth import cpu_isa, jobs
from dmlsynth.config import config_defaults


def _jobs(default_params, **reproducibility) -> jobs.Jobs:
    config = copy.deepcopy(default_params)
    if reproducibility:
        config["reproducibility"] = reproducibility
    return jobs.Jobs(cfg.validate(config))


def test_the_default_pins_avx2_in_every_job_record(default_params):
    assert config_defaults()["reproducibility"]["cpu_isa"] == "avx2"
    records = _jobs(default_params)
    run = records.runs[0]
    for job in (records.prepare_data("digits"), records.train(**run), records.evaluate(**run), records.table()):
        assert job.cpu_isa == "avx2"
        assert json.loads(job.to_json())["cpu_isa"] == "avx2"
    train = records.train(**run)
    assert jobs.Job.from_json(train.to_json(), "train").cpu_isa == "avx2"


def test_the_instruction_set_is_part_of_the_identity(default_params):
    pinned, native = _jobs(default_params), _jobs(default_params, cpu_isa="native")
    run = pinned.runs[0]
    assert pinned.train(**run).identity() != native.train(**run).identity()
    # ... and so of the evaluation, which names its training's identity.
    assert pinned.evaluate(**run).params["run"] != native.evaluate(**run).params["run"]


def test_an_unknown_level_is_refused_by_the_schema(default_params):
    config = copy.deepcopy(default_params)
    config["reproducibility"] = {"cpu_isa": "avx512"}
    with pytest.raises(cfg.ConfigError, match="cpu_isa"):
        cfg.validate(config)


def test_a_cpu_without_avx2_is_told_what_to_do():
    flags = {"sse4_2", "avx"}
    with pytest.raises(cpu_isa.CpuIsaError, match="lacks avx2, fma.*cpu_isa: native"):
        cpu_isa.environment("avx2", flags)
    assert cpu_isa.environment("native", flags) == {}
    assert cpu_isa.environment("avx2", {"avx2", "fma"})["ATEN_CPU_CAPABILITY"] == "avx2"


def test_the_record_on_the_command_line_is_read_without_any_library():
    record = json.dumps({"rule": "train", "cpu_isa": "avx2"})
    assert cpu_isa.level_of_record(["train", "--job", record]) == "avx2"
    assert cpu_isa.level_of_record(["train", f"--job={record}"]) == "avx2"
    assert cpu_isa.level_of_record(["train", "--config", "params.yaml"]) is None


def test_in_effect_reads_the_environment(monkeypatch):
    for name in cpu_isa.VARIABLES["avx2"]:
        monkeypatch.delenv(name, raising=False)
    assert cpu_isa.in_effect() == "native"
    for name, value in cpu_isa.VARIABLES["avx2"].items():
        monkeypatch.setenv(name, value)
    assert cpu_isa.in_effect() == "avx2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")  # one variable off: not pinned
    assert cpu_isa.in_effect() == "native"
