"""The job record and its identity (:mod:`dmlsynth.jobs`): a job re-runs when, and only when, something that
can change its numbers changed.

The edits go through the real digest code path: a module's source is edited where a digest reads it
(:func:`dmlsynth.provenance.read_source`), a registry entry is replaced in its table, a setting is changed
in the record's params; then every record of the config is built again and the identities compared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import jobs, pipeline, provenance, registry, resolve
from tests.conftest import ROOT, small_config

TRAINED = ("compare", "evaluate", "table", "train")  # a training and everything that reads its run
GENERATION = ("filter_generated", "generate", "generation_report", "prompts", "train_generator")
EVERY = tuple(sorted({*TRAINED, *GENERATION, "merge_generated", "prepare_data"}))


def tiny_config(root: Path) -> dict[str, Any]:
    config = small_config(yaml.safe_load((ROOT / "params.yaml").read_text()), root / "data", root / "results")
    config.update(methods=["baseline", "blender"], seeds=[0])
    return cfg.validate(config)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Any]:
    return tiny_config(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def paper() -> dict[str, Any]:
    return cfg.validate(cfg.load(ROOT / "config" / "paper.yaml"))


def identities(config) -> dict[tuple[str, str], str]:
    """(rule, name) -> identity of every job of ``config``, built afresh."""
    provenance._digest.cache_clear()
    return {(job.rule, job.name): job.identity() for stage in pipeline.stage_jobs(config).values() for job in stage}


def changed(before: dict, after: dict) -> list[tuple[str, str]]:
    return sorted(key for key in before if before[key] != after[key])


def kinds(keys) -> tuple[str, ...]:
    return tuple(sorted({rule for rule, _ in keys}))


def edit(monkeypatch, *modules: str) -> None:
    """A comment appended to each of ``modules`` where every digest reads the source."""
    files = {provenance.module_file(m) for m in modules}
    original = provenance.read_source
    monkeypatch.setattr(provenance, "read_source", lambda file: original(file) + (b"\n# an edit\n" if file in files else b""))


def module_name(file: Path) -> str:
    relative = file.relative_to(provenance.PACKAGE_DIR).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join((provenance.PACKAGE, *parts))


# Which kinds of job of the tiny config (baseline and blender on digits, the embedded generator) a comment in
# each module re-runs. Bookkeeping (the record builder, the command line, scheduling, tracking, files) and
# code this config does not run (other methods, datasets, fine-tuning) re-run nothing.
EXPECTED_TINY: dict[tuple[str, ...], set[str]] = {
    (): {
        "__main__", "catalog", "cli", "cluster", "commands", "commands.cache_images", "commands.fine_tune", "config",
        "config_reference", "contract", "data.archive", "defaults", "data.cars", "data.csv_manifest", "data.cub", "data.declared",
        "data.download", "data.image_folder", "data.inshop", "data.sop", "data.sources", "docblocks", "errors",
        "gpu_slots", "heartbeat", "io", "jobs", "layout", "machine", "methods.iaa", "methods.sgar", "methods.symm",
        "pipeline", "plugins", "prefetch", "provenance", "recovery", "registry", "resolve", "run_lock", "tracking",
        "workflow",
    },
    # The package's own __init__ runs first in every job; cpu_isa pins the instruction set every job computes with.
    EVERY: {"", "cpu_isa", "data"},
    tuple(sorted({*EVERY} - {"prepare_data"})): {"device"},
    # The split of the training classes (validation classes) is computed by every job that reads training rows.
    tuple(sorted({*TRAINED, *GENERATION})): {"data.split"},
    ("compare",): {"commands.compare", "compare", "published"},
    ("compare", "evaluate", "table"): {"commands.evaluate", "evaluation"},
    TRAINED: {
        "commands.train", "data.errors", "data.image_cache", "data.images", "data.preprocessing", "losses",
        "methods", "methods.base", "methods.baseline", "methods.blender", "metrics", "models", "training",
        "training.build", "training.checkpoint", "training.loop", "training.outputs", "training.validation", "weights",
    },
    ("compare", "table"): {"commands.table", "cost", "figures", "html_pages", "stats", "table"},
    ("filter_generated",): {"commands.filter_generated"},
    ("filter_generated", "generate", "generation_report", "merge_generated"): {"generation.settings"},
    ("filter_generated", "generate", "generation_report", "merge_generated", "prompts", "train_generator"): {
        "generation", "generation.prompts",
    },
    ("filter_generated", "generate", "prompts", "train_generator"): {"commands._classes"},
    ("filter_generated", "generation_report"): {"generation.features", "generation.filtering"},
    ("generate",): {"commands.generate", "generation.generators"},
    ("generate", "generation_report", "merge_generated"): {"generation.fine_tuning", "generation.stable_diffusion"},
    ("generate", "generation_report", "merge_generated", "train_generator"): {"generation.blend", "generation.sampler"},
    ("generate", "merge_generated"): {"generation.batching", "generation.run"},
    ("generate", "train_generator"): {"generation.embedded", "generation.tokenizer"},
    ("generation_report",): {"commands.generation_report", "generation.quality"},
    ("merge_generated",): {"commands.merge_generated"},
    ("prepare_data",): {"commands.prepare_data", "data.digits", "data.manifest", "data.prepare"},
    ("prompts",): {"commands.prompts"},
    ("train_generator",): {"commands.train_generator"},
}


def test_each_module_edit_reruns_exactly_the_jobs_that_compute_with_it(tiny, monkeypatch):
    before = identities(tiny)
    assert len(before) == 21 and set(kinds(before)) == set(EVERY)
    expected = {f"{provenance.PACKAGE}.{m}".rstrip("."): rules for rules, modules in EXPECTED_TINY.items() for m in modules}
    found = {}
    for file in sorted(provenance.PACKAGE_DIR.rglob("*.py")):
        module = module_name(file)
        with monkeypatch.context() as patch:
            edit(patch, module)
            found[module] = kinds(changed(before, identities(tiny)))
    provenance._digest.cache_clear()
    unexpected = {m: rules for m, rules in found.items() if expected.get(m) != rules}
    assert not unexpected, (
        "a comment in these modules re-runs other jobs than expected (add a new module to EXPECTED_TINY with the "
        f"jobs that compute with it): {unexpected}"
    )


def test_bookkeeping_edits_rerun_none_of_the_paper_jobs_and_a_method_only_its_own(paper, monkeypatch):
    before = identities(paper)
    assert len(before) == 971
    with monkeypatch.context() as patch:  # was: 971 of 971 jobs for a comment in jobs.py or cli.py
        edit(patch, *(f"dmlsynth.{m}" for m in ("jobs", "cli", "commands", "workflow", "machine", "gpu_slots", "pipeline", "config")))
        assert changed(before, identities(paper)) == []
    with monkeypatch.context() as patch:
        edit(patch, "dmlsynth.methods.symm")
        symm = changed(before, identities(paper))
    runs = [name for rule, name in symm if rule in ("train", "evaluate")]
    assert kinds(symm) == TRAINED and runs and all(name.split("/")[1] == "symm" for name in runs)
    assert len(symm) == 2 * len([r for r in resolve.runs(paper) if r["method"] == "symm"]) + 2
    provenance._digest.cache_clear()


def test_the_union_image_sets_recipe_reruns_its_generation(paper, tiny, monkeypatch):
    # Was: nothing re-ran. The generate jobs make every set of their class; the report describes the sets.
    before, before_tiny = identities(paper), identities(tiny)
    union = registry.IMAGE_SETS["union"]
    monkeypatch.setitem(registry.IMAGE_SETS, "union", dataclasses.replace(union, operators={"union": 0.9, "intersection": 0.1}))
    rerun = changed(before, identities(paper))
    classes = sum(jobs.Jobs(paper).training_classes(d) for d in paper["datasets"])
    assert kinds(rerun) == ("generate", "generation_report") and len(rerun) == classes + 1 == 159
    assert changed(before_tiny, identities(tiny)) == []  # the tiny config makes only the blender set
    # Its help text changes no number.
    monkeypatch.setitem(registry.IMAGE_SETS, "union", dataclasses.replace(union, description="another text"))
    assert changed(before, identities(paper)) == []
    provenance._digest.cache_clear()


def replaced(table: dict, name: str, **fields) -> dict:
    return {**table, name: dataclasses.replace(table[name], **fields)}


@pytest.mark.parametrize(
    "table,name,fields,expected",
    [
        ("DATASETS", "digits", {"bounding_boxes": True},
         ("compare", "evaluate", "filter_generated", "generation_report", "prepare_data", "prompts", "table", "train")),
        ("LOSSES", "multi_similarity", {"negative_pairs": False}, TRAINED),
        ("LOSSES", "triplet", {"negative_pairs": False}, ()),  # a loss the config does not train with
        ("BACKBONES", "small_cnn", {"build": "dmlsynth.models:small_cnn_other"}, TRAINED),
        ("METHODS", "blender", {"off_params": {"synthetic_per_real": 0}}, TRAINED),
        ("METHODS", "symm", {"off_params": {"x": 1}}, ()),
        ("GENERATORS", "embedded", {"load": "dmlsynth.generation.embedded:another_loader"},
         ("filter_generated", "generate", "generation_report", "train_generator")),
        ("IMAGE_SETS", "blender", {"conditions": "plain"}, ("generate", "generation_report")),
        ("METHODS", "blender", {"description": "a help text"}, ()),
        ("LOSSES", "multi_similarity", {"description": "a help text"}, ()),
    ],
)  # fmt: skip
def test_a_registry_entry_reruns_the_jobs_that_read_it(tiny, monkeypatch, table, name, fields, expected):
    before = identities(tiny)
    monkeypatch.setattr(registry, table, replaced(getattr(registry, table), name, **fields))
    rerun = changed(before, identities(tiny))
    assert kinds(rerun) == expected
    if table == "METHODS" and expected:  # the blender runs, not the baseline's
        assert all("/blender/" in job for rule, job in rerun if rule in ("train", "evaluate"))
    provenance._digest.cache_clear()


def test_resource_numbers_and_tracking_rerun_nothing(tmp_path):
    before = identities(tiny_config(tmp_path))
    config = small_config(yaml.safe_load((ROOT / "params.yaml").read_text()), tmp_path / "data", tmp_path / "results")
    config.update(methods=["baseline", "blender"], seeds=[0])
    config["dataset_settings"]["digits"]["resources"] = {"mem_mb": 12345, "runtime": 999}
    config["tracking"] = {"enabled": False, "runs": "as_evaluated"}
    config["generation"] = {"digits": {**config["generation"]["digits"], "fine_tuning": {"checkpoint_every": 7}}}
    config["dataset_settings"]["digits"]["urls"] = {"archive": "https://mirror.example/digits.zip"}
    config = cfg.validate(config)
    assert identities(config) == before
    assert jobs.Jobs(config).train("digits", "baseline", "multi_similarity", 0).mem_mb == 12345


# The generation settings a stage reads ------------------------------------------------------------------


def leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [prefix[:-1]]


def other(value: Any) -> Any:
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    if isinstance(value, dict):
        return {**value, "other": 1}
    return 3  # None


def with_value(params: dict, path: str, value: Any) -> dict:
    head, _, rest = path.partition(".")
    return {**params, head: with_value(params[head], rest, value) if rest else value}


def value_at(params: dict, path: str) -> Any:
    for part in path.split("."):
        params = params[part]
    return params


# The generation settings each stage compares (of the paper config's Stable Diffusion with fine-tuning); every
# other key of the block it reads cannot change its outputs: it reaches the stage through an input whose own
# job compares it (the prompts file, the trained generator, the part file), or the stage does not read it, or
# it counts elsewhere (device: by its kind; threads: where they change numbers). A realistic slip either way
# fails: the generation batch size measurably changes a generated pixel; the memory budget chooses the batch
# on a GPU; slicing and compiling reorder float sums.
COMPARED = {
    "generate": {
        "model_id", "scheduler", "steps", "guidance_scale", "images_per_class", "batch_size", "gpu_memory_gib",
        "prompts_per_image", "prompts_per_condition", "operators.union", "operators.intersection", "intersection_rule",
        "guidance_norm", "seed", "fp16", "attention_slicing", "vae_slicing", "compile", "textual_inversion", "lora",
        "filter.scorer", "filter.extra", "generator", *(f"fine_tuning.{k}" for k in ("method", *jobs.FINE_TUNING_OFF)),
    },
    "fine_tune": {"model_id", "seed", "attention_slicing", *(f"fine_tuning.{k}" for k in ("method", *jobs.FINE_TUNING_OFF))},
    "filter_generated": {
        "images_per_class", "seed", "generator",
        *(f"filter.{k}" for k in ("scorer", "clip_model", "clip_threshold", "fidelity_threshold", "extra", "batch_size")),
    },
}  # fmt: skip


def generation_jobs(paper) -> list[jobs.Job]:
    records = jobs.Jobs(paper)
    return [records.generate("cub200", 0), records.fine_tune("cub200", 0), records.filter_generated("cub200", 0)]


@pytest.mark.parametrize("rule", ["generate", "fine_tune", "filter_generated"])
def test_each_generation_setting_a_stage_reads_is_compared_or_declared_unable_to_change_it(paper, rule):
    job = next(j for j in generation_jobs(paper) if j.rule == rule)
    block = job.params["generation"]
    assert COMPARED[rule] <= set(leaves(block))
    compared = set()
    for key in leaves(block):
        edited = dataclasses.replace(job, params=with_value(job.params, f"generation.{key}", other(value_at(block, key))))
        if edited.identity() != job.identity():
            compared.add(key)
    assert compared == COMPARED[rule], (sorted(compared - COMPARED[rule]), sorted(COMPARED[rule] - compared))


def test_a_datasets_preparation_compares_what_it_reads_not_the_training_settings(paper, tmp_path):
    job = jobs.Jobs(paper).prepare_data("cub200")
    block = {**job.params["dataset_settings"], "md5": {"images": "0" * 32}, "expected": {"images": 11788}}
    job = dataclasses.replace(job, params={**job.params, "dataset_settings": block})
    # A built-in dataset's preparation reads the files it accepts (md5, expected); where they come from (urls)
    # changes none, the training settings it is handed change none. A new key is compared until declared.
    compared = {"md5", "expected"}
    assert "resources" not in block  # its resources are the record's own (mem_mb, runtime)
    for key in block:
        edited = dataclasses.replace(job, params=with_value(job.params, f"dataset_settings.{key}", other(block[key])))
        assert (edited.identity() != job.identity()) == (key in compared), f"dataset_settings.{key}"
    # Through the config: a new embedding size re-trains, and prepares nothing again.
    config = small_config(yaml.safe_load((ROOT / "params.yaml").read_text()), tmp_path / "data", tmp_path / "results")
    before = jobs.Jobs(cfg.validate(config))
    config["dataset_settings"]["digits"]["embedding_dim"] = 24
    after = jobs.Jobs(cfg.validate(config))
    assert after.prepare_data("digits").identity() == before.prepare_data("digits").identity()
    run = ("digits", "baseline", "multi_similarity", 0)
    assert after.train(*run).identity() != before.train(*run).identity()


def test_fine_tuning_counts_for_generation_only_where_it_is_on(paper, tiny):
    off = jobs.Jobs(tiny).generate("digits", 0)  # the embedded generator: no fine-tuning
    on = jobs.Jobs(paper).generate("cub200", 0)
    for job, compared in ((off, False), (on, True)):
        edited = dataclasses.replace(job, params=with_value(job.params, "generation.fine_tuning.steps", 7))
        assert (edited.identity() != job.identity()) == compared
        method = dataclasses.replace(job, params=with_value(job.params, "generation.fine_tuning.method", "lora-other"))
        assert method.identity() != job.identity()


# One-line bugs of the record ---------------------------------------------------------------------------


def a_job(**fields) -> jobs.Job:
    return jobs.Job(**{"rule": "evaluate", "name": "x", "params": {"a": 1}, "inputs": {}, "outputs": {}, "log": "", **fields})


def test_params_are_canonical_integral_floats_and_key_order():
    assert jobs.canonical({"b": [2.0, 0.5], "a": {"c": 3.0}}) == {"b": [2, 0.5], "a": {"c": 3}}
    assert isinstance(jobs.canonical(2.0), int) and isinstance(jobs.canonical(2.0**60), float)
    same = a_job(params={"lr": 1.0, "epochs": 2, "nested": {"x": 1, "y": 2}})
    assert a_job(params={"nested": {"y": 2, "x": 1}, "epochs": 2.0, "lr": 1}).identity() == same.identity()
    assert a_job(params={"lr": 1.5, "epochs": 2, "nested": {"x": 1, "y": 2}}).identity() != same.identity()
    # The hash itself does not depend on the order keys were inserted in.
    assert provenance.params_hash({"a": 1, "b": {"c": 2, "d": 3}}) == provenance.params_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert jobs.canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_neutral_keys_leave_the_identity_and_only_those():
    assert jobs.without({"a": {"b": 1, "c": 2}, "d": {"e": {"b": 3}}}, ["a.b", "*.e.b"]) == {"a": {"c": 2}, "d": {"e": {}}}
    assert jobs.without({"a": 1}, ["a.b", "x"]) == {"a": 1}  # a path through a value, or a missing key, drops nothing
    job = a_job(params={"ks": [1, 2], "tracking": {"uri": "a"}})
    assert dataclasses.replace(job, params={"ks": [1, 2], "tracking": {"uri": "b"}}).identity() == job.identity()
    assert dataclasses.replace(job, params={"ks": [1, 4], "tracking": {"uri": "a"}}).identity() != job.identity()


def test_the_thread_count_counts_where_it_changes_numbers(tiny):
    assert a_job(threads=1).identity() == a_job(threads=4).identity()
    assert a_job(threads=1, threads_change_numbers=True).identity() != a_job(threads=4, threads_change_numbers=True).identity()
    records = jobs.Jobs(tiny)
    train = records.train("digits", "baseline", "multi_similarity", 0)
    assert train.threads_change_numbers and dataclasses.replace(train, threads=train.threads + 1).identity() != train.identity()
    # The embedded generator's jobs run on the CPU (float sums depend on the threads); a Stable Diffusion job on a GPU not.
    generate = records.generate("digits", 0)
    assert generate.threads_change_numbers and generate.gpus == 0
    assert not jobs.Jobs(cfg.validate(cfg.load(ROOT / "config" / "paper.yaml"))).generate("cub200", 0).threads_change_numbers


def test_device_kind_and_instruction_set_are_part_of_the_identity():
    assert a_job(device="cpu").identity() != a_job(device="cuda").identity()
    assert a_job(device="cpu", cpu_isa="avx2").identity() != a_job(device="cpu", cpu_isa="native").identity()


def test_the_code_digest_holds_the_registry_entries_a_job_uses(tiny):
    records = jobs.Jobs(tiny)
    train = records.train("digits", "blender", "multi_similarity", 0)
    specs = (registry.METHODS["blender"], registry.LOSSES["multi_similarity"], registry.BACKBONES["small_cnn"], registry.dataset("digits"))
    assert set(train.entries) == {provenance.stable_repr(s) for s in specs}
    generate = records.generate("digits", 0)
    assert provenance.stable_repr(registry.IMAGE_SETS["blender"]) in generate.entries
    assert provenance.stable_repr(registry.GENERATORS["embedded"]) in generate.entries
    assert dataclasses.replace(train, entries=train.entries[:-1]).identity() != train.identity()
    # A plugin-style field left at its default keeps the entry's text (and so every identity) as it was.
    loss = registry.LOSSES["multi_similarity"]
    assert provenance.stable_repr(loss) == provenance.stable_repr(dataclasses.replace(loss, build=None))
    assert "description" not in provenance.stable_repr(loss)


def test_the_record_a_job_reads_back_keeps_its_identity_and_code(tiny):
    job = jobs.Jobs(tiny).generate("digits", 1)
    back = jobs.Job.from_json(job.to_json(), "generate")
    assert back.identity() == job.identity() and back.code_digest() == job.code_digest()
    assert back.params == jobs.canonical(job.params) and back.params["generation"]["batch_size"] == tiny["generation"]["digits"]["batch_size"]
    with pytest.raises(jobs.JobError):
        jobs.Job.from_json(job.to_json(), "train")


def test_inputs_present_needs_every_input_lists_included(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    job = a_job(inputs={"one": str(tmp_path / "a"), "many": [str(tmp_path / "b"), str(tmp_path / "a")]})
    assert job.inputs_present() and job.input_files() == [str(tmp_path / n) for n in ("a", "b", "a")]
    assert not dataclasses.replace(job, inputs={**job.inputs, "many": [str(tmp_path / "b"), str(tmp_path / "c")]}).inputs_present()
    assert not dataclasses.replace(job, inputs={**job.inputs, "one": str(tmp_path / "c")}).inputs_present()


def test_a_starting_training_removes_what_it_makes_out_of_date_before_it_trains(tiny, tmp_path, monkeypatch):
    import dmlsynth.contract
    import dmlsynth.training.loop
    from dmlsynth.commands import train as train_command

    job = jobs.Jobs(tiny).train("digits", "baseline", "multi_similarity", 0)
    run = Path(job.outputs["record"]).parent
    # Its evaluation, the table and the comparison (all the files of jobs downstream) are stale.
    assert {str(run / "metrics.json"), *jobs.Jobs(tiny).layout.table_outputs()} <= set(job.stale)
    stale = [Path(p) for p in job.stale]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("old")
    seen = {}

    def train_run(params, **kwargs):
        seen["left"] = [p for p in stale if p.exists()]
        seen["key"] = (kwargs["identity"], kwargs["code_digest"])

    monkeypatch.setattr(dmlsynth.training.loop, "train_run", train_run)
    monkeypatch.setattr(dmlsynth.contract, "gate", lambda method, loss: None)
    train_command.run(job, progress=False)
    assert seen["left"] == [] and seen["key"] == (job.identity(), job.code_digest())
