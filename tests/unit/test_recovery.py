"""The recovery commands, read by Snakemake's own argument parser: the targets are targets, the options stay."""

import json
import shlex

from snakemake.cli import get_argument_parser

from dmlsynth import recovery

TARGET = "results/runs/digits/baseline/multi_similarity/seed0/metrics.json"
OPTIONS = {recovery.VARIABLE: json.dumps(["--configfile", "/p/tiny.yaml", "/p/more.yaml", "--config", "seeds=[0]"])}


def parsed(command: str):
    words = shlex.split(command)
    assert words[0] == "snakemake"
    return get_argument_parser().parse_args(words[1:])


def test_remake_forces_the_job_of_its_target_with_the_users_config():
    args = parsed(recovery.remake(TARGET, environ=OPTIONS))
    assert args.targets == [TARGET] and args.force and not args.forcerun and not args.forceall
    assert args.cores == 1  # a job at a time: what it prints is the one job's
    assert [str(f) for f in args.configfile] == ["/p/tiny.yaml", "/p/more.yaml"] and args.config == ["seeds=[0]"]


def test_make_builds_its_target_without_forcing_it():
    args = parsed(recovery.make(TARGET, cores=8, environ=OPTIONS))
    assert args.targets == [TARGET] and not args.force and args.cores == 8
    by_hand = parsed(recovery.make(TARGET, environ={}))
    assert not by_hand.configfile and by_hand.cores == 1  # run by hand: the command alone


def test_rerun_forces_one_rule_and_keeps_the_options_apart():
    args = parsed(recovery.rerun("table", environ=OPTIONS))
    assert set(args.forcerun) == {"table"} and not args.targets and args.config == ["seeds=[0]"] and args.cores == 1


def test_the_workflow_options_name_a_snakefile_only_where_it_is_not_the_folders_own(tmp_path):
    (tmp_path / "Snakefile").write_text("")
    assert recovery.workflow_options(tmp_path / "Snakefile", tmp_path, [], None) == []
    other = tmp_path / "elsewhere" / "Snakefile"
    options = recovery.workflow_options(other, tmp_path, [tmp_path / "c.yaml"], ["a=1"])
    assert options == ["--snakefile", str(other), "--directory", str(tmp_path), "--configfile", str(tmp_path / "c.yaml"),
                       "--config", "a=1"]  # fmt: skip
