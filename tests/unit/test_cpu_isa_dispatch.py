"""dmlsynth.cpu_isa on its own: reading the CPU's flags, the variables each level sets, and the record's level
taken from a command line before any numeric library loads."""

from __future__ import annotations

import json
import sys
import types

import pytest

from dmlsynth import cpu_isa

PINNED = cpu_isa.VARIABLES["avx2"]


@pytest.fixture
def clean_environment(monkeypatch):
    for name in PINNED:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_flags_are_read_from_the_first_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU: with a colon\nflags\t\t: fpu sse2 avx2 fma\n"
        "bugs\t\t: spectre\nflags\t\t: other\n"
    )
    assert cpu_isa.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "fma"}


def test_unreadable_or_flagless_cpuinfo_gives_no_flags(tmp_path):
    assert cpu_isa.cpu_flags(str(tmp_path / "absent")) == set()
    flagless = tmp_path / "cpuinfo"
    flagless.write_text("processor\t: 0\nfeatures\t: fp asimd\n")  # an ARM machine's layout
    assert cpu_isa.cpu_flags(str(flagless)) == set()


def test_missing_flags_names_each_lacking_one_in_order():
    assert cpu_isa.missing_flags("avx2", {"avx", "sse4_2"}) == ["avx2", "fma"]
    assert cpu_isa.missing_flags("avx2", {"avx2"}) == ["fma"]
    assert cpu_isa.missing_flags("avx2", {"avx2", "fma", "avx512f"}) == []
    # Flags that cannot be read (not x86 Linux) do not block a level.
    assert cpu_isa.missing_flags("avx2", set()) == []
    assert cpu_isa.missing_flags("native", {"sse2"}) == []


def test_missing_flags_reads_this_machine_when_not_given(monkeypatch):
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: {"sse2"})
    assert cpu_isa.missing_flags("avx2") == ["avx2", "fma"]


def test_an_unknown_level_names_the_known_ones():
    with pytest.raises(cpu_isa.CpuIsaError, match=r"'avx512'; one of avx2, native"):
        cpu_isa.environment("avx512", {"avx2", "fma"})


def test_the_pinned_level_sets_every_library_s_variable():
    assert cpu_isa.environment("avx2", {"avx2", "fma"}) == {
        "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2", "OPENBLAS_CORETYPE": "Haswell",
    }  # fmt: skip
    # A copy: the caller cannot change the table.
    environment = cpu_isa.environment("avx2", {"avx2", "fma"})
    environment["MKL_CBWR"] = "AUTO"
    assert cpu_isa.VARIABLES["avx2"]["MKL_CBWR"] == "AVX2"


def test_apply_sets_the_variables_and_is_applied_sees_them(clean_environment):
    clean_environment.setattr(cpu_isa, "cpu_flags", lambda: {"avx2", "fma"})
    assert not cpu_isa.is_applied("avx2")
    cpu_isa.apply("avx2")
    assert cpu_isa.is_applied("avx2")
    assert all(cpu_isa.os.environ[name] == value for name, value in PINNED.items())
    assert cpu_isa.is_applied("native")  # nothing to set


def test_apply_refuses_a_level_this_cpu_cannot_run(clean_environment):
    clean_environment.setattr(cpu_isa, "cpu_flags", lambda: {"sse2"})
    with pytest.raises(cpu_isa.CpuIsaError, match="lacks avx2, fma"):
        cpu_isa.apply("avx2")
    assert not any(name in cpu_isa.os.environ for name in PINNED)


@pytest.mark.parametrize(
    "argv, level",
    [
        (["train", "--job", json.dumps({"cpu_isa": "native"})], "native"),
        (["train", "--job=" + json.dumps({"cpu_isa": "avx2"})], "avx2"),
        (["train", "--config", "p.yaml", "--job", json.dumps({"cpu_isa": "avx2"}), "x"], "avx2"),
        (["train", "--job"], None),  # no record after the option
        (["train", "--job", "{not json"], None),
        (["train", "--job", "[1, 2]"], None),  # JSON, but not a record
        (["train", "--job", json.dumps({"rule": "train"})], None),
        (["train", "--jobs", json.dumps({"cpu_isa": "avx2"})], None),
        ([], None),
    ],
)
def test_level_of_record(argv, level):
    assert cpu_isa.level_of_record(argv) == level


def test_only_the_first_record_counts():
    first, second = json.dumps({"cpu_isa": "native"}), json.dumps({"cpu_isa": "avx2"})
    assert cpu_isa.level_of_record(["--job", first, "--job", second]) == "native"


def test_pin_process_applies_the_record_s_level(clean_environment):
    clean_environment.setattr(cpu_isa, "cpu_flags", lambda: {"avx2", "fma"})
    cpu_isa.pin_process(["train", "--job", json.dumps({"cpu_isa": "avx2"})])
    assert cpu_isa.in_effect() == "avx2"


@pytest.mark.parametrize("record", [{"cpu_isa": "avx512"}, {"cpu_isa": None}, {}])
def test_pin_process_leaves_an_unknown_level_to_the_job(clean_environment, record):
    cpu_isa.pin_process(["train", "--job", json.dumps(record)])
    assert cpu_isa.in_effect() == "native"


def test_pin_process_leaves_a_cpu_that_cannot_run_it_to_the_job(clean_environment):
    clean_environment.setattr(cpu_isa, "cpu_flags", lambda: {"sse2"})
    cpu_isa.pin_process(["train", "--job", json.dumps({"cpu_isa": "avx2"})])  # no exception: the job reports it
    assert cpu_isa.in_effect() == "native"


def test_loaded_libraries_lists_the_numeric_ones_in_sys_modules(monkeypatch):
    for name in cpu_isa.NUMERIC_LIBRARIES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert cpu_isa.loaded_libraries() == []
    monkeypatch.setitem(sys.modules, "scipy", types.ModuleType("scipy"))
    monkeypatch.setitem(sys.modules, "numpy", types.ModuleType("numpy"))
    assert cpu_isa.loaded_libraries() == ["numpy", "scipy"]
    for name in ("torch", "faiss", "sklearn"):  # each library whose dispatch the variables decide
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    assert cpu_isa.loaded_libraries() == ["numpy", "torch", "faiss", "sklearn", "scipy"]


def test_effective_records_the_variables_set_and_torch_s_dispatch(clean_environment):
    clean_environment.setenv("MKL_CBWR", "AVX2")
    fake_torch = types.SimpleNamespace(backends=types.SimpleNamespace(cpu=types.SimpleNamespace(get_cpu_capability=lambda: "AVX2")))
    clean_environment.setitem(sys.modules, "torch", fake_torch)
    assert cpu_isa.effective() == {"MKL_CBWR": "AVX2", "torch_dispatch": "AVX2"}
    clean_environment.delitem(sys.modules, "torch")
    assert cpu_isa.effective() == {"MKL_CBWR": "AVX2"}


@pytest.mark.skipif(not (sys.platform == "linux" and __import__("platform").machine() == "x86_64"), reason="reads an x86-64 Linux cpuinfo")
def test_this_machine_s_flags_are_read_by_default():
    assert "sse2" in cpu_isa.cpu_flags()  # every x86-64 CPU has it
