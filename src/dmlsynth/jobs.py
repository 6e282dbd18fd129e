"""One resolved record per job: what it computes with, what re-runs it, where its files are.

Every job of the workflow — a Snakemake rule applied to its wildcards — is described once, here,
by a :class:`Job`: its resolved ``params`` (the config's settings over the registry's defaults,
:mod:`dmlsynth.registry`), the files it reads and writes (:mod:`dmlsynth.layout`), its log, the
threads, memory, time and GPU it takes, and the code it runs. The rules (``rules/*.smk``), the DVC
stages (through the rules) and the command line (``dmlsynth <rule> --job …``) read this record;
the job itself receives it whole (:meth:`Job.to_json`) and its stage functions take what it holds,
never the raw config.

**Identity** (:meth:`Job.identity`) decides re-runs, and it is the one key of the project: a stage skips
or resumes only work made under the same identity. It hashes the canonical form of the params (key order,
restated defaults and the spelling of a number never matter) less the keys its kind declares unable to
change an output (:data:`NEUTRAL`: where data comes from, tracking, a checkpoint interval), the digest of
the code that can change its numbers — followed from its command module (:mod:`dmlsynth.commands`) and
the registry entries it uses, not hand-listed (:func:`dmlsynth.provenance.code_digest`); the record
builder and the command line are not part of it, what they decide is in the params — its thread count
where the numbers depend on it, the kind of device it computes on and the CPU instruction set. Snakemake
compares the identity, so a job re-runs exactly when one of them changes.

Torch-free: the Snakefile builds its DAG from these records.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from dmlsynth import layout as layout_module
from dmlsynth import provenance, registry
from dmlsynth.data import split
from dmlsynth.errors import DmlsynthError

COMMANDS = "dmlsynth.commands"
# What every job runs besides its command that can change a number: the CPU instruction set is pinned by it
# (the command line, which calls it, and this module, which builds the record, change none).
RUNTIME_MODULES = ("dmlsynth.cpu_isa",)

# The training-only keys of dataset_settings.<d>: a dataset's preparation never reads them.
TRAINING_ONLY = (
    "backbone", "pretrained", "embedding_dim", "image_size", "cache_short_side", "weights", "weights_sha256",
    "train_transform", "eval_transform", "square_resize", "crop_scale", "bounding_boxes", "validation_classes",
)  # fmt: skip
# Generation settings only the sampler reads (generate): the other generation jobs see their effect, if any,
# in an input file whose own job compares them.
SAMPLING = (
    "scheduler", "steps", "guidance_scale", "batch_size", "gpu_memory_gib", "prompts_per_image", "prompts_per_condition",
    "operators", "intersection_rule", "guidance_norm", "fp16", "textual_inversion", "lora", "vae_slicing", "compile",
)  # fmt: skip
# Per job kind, the keys of its params (dotted paths; ``*`` stands for any one key) that cannot change its
# outputs: in the record it reads, left out of its identity. Everything else a stage reads is compared: a
# setting nobody declared here re-runs the job. ``device`` settings count by their kind (Job.device_kind),
# thread counts by Job.threads where they change numbers; ``tracking`` and ``layout`` say where results are
# mirrored or written; generation's batch_size, gpu_memory_gib, the slicings and compile stay compared: they
# change how floats are summed, and a batch size measurably changed a generated pixel.
NEUTRAL: Mapping[str, tuple[str, ...]] = {
    "prepare_data": ("dataset_settings.urls", *(f"dataset_settings.{k}" for k in TRAINING_ONLY)),
    "prompts": ("device",),
    "fine_tune": (
        *(f"generation.{k}" for k in (*SAMPLING, "images_per_class", "threads", "device", "generator", "embedded", "filter", "prompts")),
        "generation.fine_tuning.checkpoint_every", "tracking",
    ),
    "generate": (
        *(f"generation.{k}" for k in ("threads", "device", "embedded", "prompts", "fine_tuning.checkpoint_every")),
        *(f"generation.filter.{k}" for k in ("clip_model", "clip_threshold", "fidelity_threshold", "batch_size")),
    ),
    "filter_generated": (
        *(f"generation.{k}" for k in (*SAMPLING, "attention_slicing", "model_id", "threads", "device", "embedded", "fine_tuning", "prompts")),
    ),
    "generation_report": ("datasets.*.generation.threads", "datasets.*.generation.fine_tuning.checkpoint_every", "layout", "tracking"),
    "evaluate": ("tracking",),
    "table": ("tracking",),
}
# Where fine-tuning is off, the sampler reads no fine-tuning setting but its method.
FINE_TUNING_OFF = ("steps", "rank", "learning_rate", "embedding_learning_rate", "batch_size", "resolution")

# Record outputs that name a place a job writes into, not something it makes: the dataset's folder and its raw
# downloads (prompts search them too), the folder of generated images (generate and filter write it), the
# fine-tuning checkpoint (removed when the weights are done), the results and figures folders. Neither
# Snakemake nor DVC tracks them; they track the rest (Job.made). Rule -> the names of such outputs.
PLACES = {
    "prepare_data": {"dataset_dir", "raw_dir"}, "prompts": {"search"}, "fine_tune": {"checkpoint"},
    "generate": {"generated"}, "filter_generated": {"generated"}, "table": {"results"}, "compare": {"figures"},
}


class JobError(DmlsynthError, ValueError):
    """A job record that does not fit (another version's, or not a record)."""


def canonical(value: Any) -> Any:
    """``value`` with integral floats as ints and mappings as plain dicts: the same numbers spelled
    differently (``2`` or ``2.0``, ``1e-3`` or ``0.001``) give the same record."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"))


def without(params: Mapping[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """``params`` less the keys at ``paths`` (dotted; ``*`` stands for any one key)."""

    def drop(node: Any, parts: list[str]) -> Any:
        if not isinstance(node, Mapping):
            return node
        head, rest = parts[0], parts[1:]
        return {
            k: v if head not in ("*", k) else drop(v, rest)
            for k, v in node.items()
            if rest or head not in ("*", k)
        }

    result = dict(params)
    for path in paths:
        result = drop(result, path.split("."))
    return result


def device_kind(setting: str, gpus: int) -> str:
    """The kind of device a job computes on, known before it runs: ``cuda`` when it takes a GPU, ``cpu``
    when it is told to use the CPU; ``auto`` without a GPU of its own is whatever its machine has
    (the run records the device it used, and the table never mixes kinds)."""
    if gpus or setting == "cuda":
        return "cuda"
    return "cpu" if setting == "cpu" else "auto"


def gpus_for(device: str, needs_gpu: bool) -> int:
    """The one rule for whether a job takes a GPU: it would compute on one (``needs_gpu``: e.g. Stable
    Diffusion, or a training the dataset's resources place on a GPU) and its device setting allows it
    (not ``cpu``); ``device: cuda`` always takes one."""
    if device == "cpu":
        return 0
    return int(device == "cuda" or needs_gpu)


@dataclass(frozen=True)
class Job:
    """One job: a rule with its wildcards, fully resolved."""

    rule: str
    name: str  # the wildcards' values, e.g. "digits/iaa/multi_similarity/seed0"
    params: Mapping[str, Any]  # the whole resolved block its stage reads (its identity less NEUTRAL[rule])
    inputs: Mapping[str, Any]  # name -> file (or list of files) it reads
    outputs: Mapping[str, Any]  # name -> file (or list of files) it writes
    log: str
    threads: int = 1
    mem_mb: int = 2000
    runtime: int = 30  # minutes
    gpus: int = 0
    device: str = "cpu"  # the device setting the job computes with (identity: device_kind)
    threads_change_numbers: bool = False  # float reductions of a training depend on the thread count
    # The instruction set the CPU libraries dispatch to (reproducibility.cpu_isa; dmlsynth.cpu_isa): set for
    # every job by Jobs, applied by the CLI before numpy or torch loads; part of the identity.
    cpu_isa: str = "native"
    code: Sequence[str] = ()  # modules its code starts from besides its command (registry-named ones)
    entries: Sequence[str] = ()  # the registry entries it uses (their stable repr)
    # Files of jobs that depend on this one: removed when it starts, so no output is left looking current
    # while it runs or after it fails (the workflow rebuilds them from the new outputs).
    stale: Sequence[str] = field(default_factory=tuple)
    # Keys of params that cannot change its outputs besides its kind's (NEUTRAL): where fine-tuning is off.
    neutral: Sequence[str] = ()
    # An input list that goes on the command line one path per argument instead of into the record (a shell
    # argument holds at most 128 KiB: the table of a large config reads thousands of run files) ...
    arguments: Sequence[str] = ()
    # ... and params and inputs that decide re-runs (Snakemake's inputs) but that the job does not read from
    # its record (the runs' identities; the run files it finds beside each record).
    identity_only: Sequence[str] = ()
    # A record read back by the job (from_json) carries its identity and code digest: the modules and
    # entries they were computed from are not in it.
    recorded_identity: str | None = None
    recorded_code: str | None = None

    @property
    def command_module(self) -> str:
        return f"{COMMANDS}.{self.rule}"

    @property
    def code_modules(self) -> list[str]:
        """Where its code starts: its command, the runtime every job shares, the registry-named modules."""
        return [self.command_module, *RUNTIME_MODULES, *self.code]

    def code_digest(self) -> str:
        """The digest of the code that can change its numbers (:func:`dmlsynth.provenance.code_digest`)."""
        if self.recorded_code is not None:
            return self.recorded_code
        return provenance.code_digest(self.code_modules, self.entries)

    def compared_params(self) -> dict[str, Any]:
        """Its params less the keys that cannot change its outputs (its kind's and its own)."""
        return without(self.params, [*NEUTRAL.get(self.rule, ()), *self.neutral])

    @property
    def device_kind(self) -> str:
        return device_kind(self.device, self.gpus)

    def identity(self) -> str:
        """What re-runs the job when it changes, and its stage's skip and resume key: params (canonical, less
        the neutral keys), code digest, threads (where they change numbers), device kind, the CPU instruction set."""
        if self.recorded_identity is not None:
            return self.recorded_identity
        parts = {
            "params": canonical(self.compared_params()),
            "code": self.code_digest(),
            "threads": self.threads if self.threads_change_numbers else None,
            "device": self.device_kind,
            # Which kernels float reductions take (dmlsynth.cpu_isa): another level, other digits.
            "cpu_isa": self.cpu_isa,
        }
        return provenance.params_hash(parts)

    def to_json(self) -> str:
        """The record the job receives (``dmlsynth <rule> --job``); Snakemake compares its :meth:`identity`."""
        return canonical_json(
            {
                "rule": self.rule, "name": self.name,
                "params": {k: v for k, v in self.params.items() if k not in self.identity_only},
                "inputs": {k: v for k, v in self.inputs.items() if k not in self.arguments and k not in self.identity_only},
                "outputs": self.outputs, "threads": self.threads, "device": self.device, "gpus": self.gpus,
                "cpu_isa": self.cpu_isa, "stale": list(self.stale), "identity": self.identity(), "code": self.code_digest(),
                "arguments": list(self.arguments),
                # The datasets the config declares, resolved at its validation: the job's process sees the same.
                "datasets": registry.declared_records(),
            }
        )  # fmt: skip

    def made(self) -> list[str]:
        """The files and folders the job makes (its rule's outputs, its DVC stage's outs): outputs less PLACES."""
        places = PLACES.get(self.rule, ())
        return [str(f) for k, v in self.outputs.items() if k not in places for f in (v if isinstance(v, (list, tuple)) else [v])]

    def input_files(self) -> list[str]:
        return [str(f) for value in self.inputs.values() for f in (value if isinstance(value, (list, tuple)) else [value])]

    def inputs_present(self) -> bool:
        """Whether every input of the job exists (a rule compares it: a deleted input re-runs the job)."""
        import os

        return all(os.path.exists(f) for f in self.input_files())

    def argument(self) -> "JobArgument":
        """The record as a rule's param: formatted into the job's command line, but not compared by Snakemake
        (its identity is, as a param of its own), so a speed setting re-runs nothing."""
        return JobArgument(self.to_json())

    @classmethod
    def from_json(cls, text: str, rule: str, arguments: Sequence[str] = ()) -> "Job":
        """The record of ``to_json``; ``arguments``: the paths given after it on the command line (the input
        the record names in its ``arguments``)."""
        try:
            record = json.loads(text)
            if record["rule"] != rule:
                raise JobError(f"the job record is a {record['rule']!r} job's, not a {rule!r} job's")
            inputs = dict(record["inputs"])
            registry.declare_records(record.get("datasets") or {})
            for name in record.get("arguments") or []:
                inputs[name] = [str(a) for a in arguments]
            return cls(
                rule=record["rule"], name=record["name"], params=record["params"], inputs=inputs,
                outputs=record["outputs"], log="", threads=int(record["threads"]), device=record["device"],
                gpus=int(record["gpus"]), stale=tuple(record.get("stale") or ()), cpu_isa=str(record["cpu_isa"]),
                recorded_identity=str(record["identity"]), recorded_code=str(record["code"]),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, JobError):
                raise
            raise JobError(f"--job is not a job record of this dmlsynth ({exc}); run the job through the workflow") from exc


class JobArgument:
    """A job record as a Snakemake param: ``str()`` and ``format(argument, "json")`` (the rules'
    ``{params.job:jsonq}``: its JSON, shell-quoted) are the record; Snakemake does not compare values of
    types it does not know (only the job's identity, a plain string, decides re-runs).

    Plain ``format`` is what the Snakemake report shows as the job's parameters: the record's params as
    ``name=value`` pairs (:meth:`readable`), which wrap in the report's panel, where the JSON would be one
    escaped line running past it."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        if spec == "json":
            return self.text
        return self.readable() if spec == "" else format(self.text, spec)

    def readable(self) -> str:
        """``<rule> <job>: name=value, ...``: every param of the record, nested names joined with dots."""
        record = json.loads(self.text)

        def pairs(node: Any, prefix: str = "") -> list[str]:
            if isinstance(node, Mapping) and node:
                return [pair for key, value in node.items() for pair in pairs(value, f"{prefix}{key}.")]
            value = ", ".join(map(str, node)) if isinstance(node, (list, tuple)) else node
            return [f"{prefix[:-1]}={value}"]

        return f"{record['rule']} {record['name']}: " + "; ".join(pairs(record["params"]))


class Jobs:
    """The jobs of one config: one constructor per rule, each resolved once (cached), all from the config's
    resolved tree (:func:`dmlsynth.resolve.resolve`)."""

    def __init__(self, config: Mapping[str, Any]):
        from dmlsynth.resolve import resolve  # not at module level: what resolves the config is no job's code

        self.tree = resolve(config)
        self.config = self.tree["config"]
        self.layout = layout_module.Layout.of(self.config)
        self.runs = self.tree["runs"]
        self.validation = split.uses_validation(self.config)
        self._cache: dict[tuple, Job] = {}

    def _cached(self, key: tuple, make) -> Job:
        if key not in self._cache:
            # The one place every job gets the configured instruction set (dmlsynth.cpu_isa).
            self._cache[key] = dataclasses.replace(make(), cpu_isa=self.cpu_isa)
        return self._cache[key]

    @property
    def cpu_isa(self) -> str:
        return str(self.config["reproducibility"]["cpu_isa"])

    # Settings --------------------------------------------------------------------------------------
    def dataset_settings(self, dataset: str) -> dict[str, Any]:
        return registry.dataset_settings(self.config, dataset)

    def generation_settings(self, dataset: str) -> dict[str, Any]:
        from dmlsynth.generation.settings import generation_settings

        return generation_settings(self.config, dataset)

    def image_sets(self) -> list[str]:
        return list(self.tree["image_sets"])

    def tracking(self) -> dict[str, Any]:
        """The ``tracking`` block; a job resolves it where it runs ($MLFLOW_TRACKING_URI there wins)."""
        return dict(self.config["tracking"])

    def _resources(self, dataset: str, key: str, default: int) -> int:
        return int(self.dataset_settings(dataset)["resources"].get(key, default))

    # Data ------------------------------------------------------------------------------------------
    def prepare_data(self, dataset: str) -> Job:
        def make() -> Job:
            spec = registry.dataset(dataset)
            # Its resources are the record's (mem_mb, runtime), not something it computes with.
            settings = {k: v for k, v in self.dataset_settings(dataset).items() if k != "resources"}
            return Job(
                rule="prepare_data", name=dataset, params={"dataset": dataset, "dataset_settings": settings}, inputs={},
                outputs={"manifest": self.layout.manifest(dataset), "dataset_dir": self.layout.dataset_dir(dataset),
                         "raw_dir": self.layout.raw_dir(dataset)},
                log=self.layout.log("prepare_data", dataset), mem_mb=4000, runtime=240,
                # It writes the manifest (data.manifest: the split into classes) that the other jobs only read.
                code=[registry.module_of(spec.prepare), "dmlsynth.data.manifest"], entries=[provenance.stable_repr(spec)],
            )  # fmt: skip

        return self._cached(("prepare_data", dataset), make)

    def cache_images(self, dataset: str) -> Job:
        def make() -> Job:
            return Job(
                rule="cache_images", name=dataset,
                params={"dataset": dataset, "short_side": int(self.dataset_settings(dataset)["cache_short_side"])},
                inputs={"manifest": self.layout.manifest(dataset)},
                outputs={"index": self.layout.resized_index(dataset)},
                log=self.layout.log("cache_images", dataset), threads=8, mem_mb=4000, runtime=60,
            )  # fmt: skip

        return self._cached(("cache_images", dataset), make)

    # Training and evaluation -----------------------------------------------------------------------
    def run_params(self, dataset: str, method: str, loss: str, seed: int) -> dict[str, Any]:
        from dmlsynth.config import run_params

        return run_params(self.config, dataset, method, loss, int(seed))

    def train(self, dataset: str, method: str, loss: str, seed: int | str) -> Job:
        def make() -> Job:
            params = self.run_params(dataset, method, loss, int(seed))
            trained = registry.METHODS[params["method"]]
            backbone = registry.BACKBONES[params["dataset_settings"]["backbone"]]
            run = self.layout.run(dataset, method, loss, seed)
            inputs: dict[str, Any] = {"manifest": self.layout.manifest(dataset)}
            if trained.synthetic_images is not None:
                inputs["synthetic"] = self.layout.image_set_manifest(dataset, trained.synthetic_images)
            if self.dataset_settings(dataset)["cache_short_side"]:
                inputs["resized"] = self.layout.resized_index(dataset)
            outputs = {name: getattr(run, name) for name in ("embeddings", "model", "record", "history")}
            if self.validation:
                outputs["last_epoch"] = run.last_epoch_embeddings
            device = str(params["training"]["device"])
            return Job(
                rule="train", name=f"{dataset}/{method}/{loss}/seed{seed}", params=params, inputs=inputs, outputs=outputs,
                log=self.layout.log("train", dataset, method, loss, f"seed{seed}"),
                # The torch thread count is the configured one (dataset_settings.<d>.resources.threads), even if
                # Snakemake gives the job fewer cores: float reductions, and so the numbers, depend on it.
                threads=self._resources(dataset, "threads", 1), threads_change_numbers=True,
                mem_mb=self._resources(dataset, "mem_mb", 2000), runtime=self._resources(dataset, "runtime", 60),
                gpus=gpus_for(device, bool(self._resources(dataset, "gpu", 0))), device=device,
                code=[provenance.TRAINING_MODULE, registry.module_of(trained.module), registry.module_of(backbone.build)],
                entries=[provenance.stable_repr(s) for s in (trained, registry.LOSSES[loss], backbone, registry.dataset(dataset))],
                # A new training makes the run's evaluation, the table and the comparison out of date.
                stale=[*run.evaluation_outputs(), *self.layout.table_outputs(), *self._comparison_files()],
            )  # fmt: skip

        return self._cached(("train", dataset, method, loss, str(seed)), make)

    def evaluate(self, dataset: str, method: str, loss: str, seed: int | str) -> Job:
        def make() -> Job:
            train = self.train(dataset, method, loss, seed)
            run = self.layout.run(dataset, method, loss, seed)
            return Job(
                rule="evaluate", name=train.name,
                params={"ks": list(self.config["evaluation"]["ks"]), "run": train.identity(), "tracking": self.tracking()},
                # Every file of the training (the weights too: a run whose files were deleted is trained again).
                inputs=dict(train.outputs),
                outputs={"metrics": run.metrics, "queries": run.queries, "embedding_plot": run.embedding_plot,
                         "training_curve": run.training_curve},
                log=self.layout.log("evaluate", dataset, method, loss, f"seed{seed}"), mem_mb=4000, runtime=30,
                stale=[*self.layout.table_outputs(), *self._comparison_files()],
            )  # fmt: skip

        return self._cached(("evaluate", dataset, method, loss, str(seed)), make)

    def _run_folders(self) -> list[layout_module.RunFolder]:
        return [self.layout.run(**run) for run in self.runs]

    def _method_entries(self) -> list[str]:
        """The registry entries of the runs' methods: the report reads which images each trains with (its cost)."""
        names = sorted({run["method"] for run in self.runs} & set(registry.METHODS))
        return [provenance.stable_repr(registry.METHODS[name]) for name in names]

    def _comparison_files(self) -> list[str]:
        return self.layout.comparison_outputs(self.tree["comparison_groups"])

    def table(self) -> Job:
        def make() -> Job:
            folders = self._run_folders()
            inputs: dict[str, Any] = {
                # Every file the table reads of a run; it refuses a run that lacks one.
                "records": [f.record for f in folders], "embeddings": [f.embeddings for f in folders],
                "metrics": [f.metrics for f in folders], "queries": [f.queries for f in folders],
            }  # fmt: skip
            if self.image_sets():
                inputs["generation"] = self.layout.generation_csv()
            files = self.layout.table_files()
            return Job(
                rule="table", name="table",
                params={
                    "statistics": dict(self.config["statistics"]),
                    # Which runs, of which config and code: a changed or failed run makes the table out of date.
                    "runs": {f.path: self.evaluate(**run).identity() for f, run in zip(folders, self.runs)},
                    "tracking": self.tracking(),
                },
                inputs=inputs, outputs={"files": files.all(), "results": self.layout.results},
                log=self.layout.log("table"), mem_mb=4000, runtime=30, stale=self._comparison_files(),
                # The run folders come as the records' paths on the command line; the job reads the rest of a folder.
                arguments=("records",), identity_only=("runs", "embeddings", "metrics", "queries"), entries=self._method_entries(),
            )  # fmt: skip

        return self._cached(("table",), make)

    def compare(self) -> Job:
        def make() -> Job:
            from dmlsynth import published

            folders = self._run_folders()
            inputs: dict[str, Any] = {"table": self.layout.table_csv(), "records": [f.record for f in folders]}
            if self.image_sets():
                inputs["generation"] = self.layout.generation_csv()
            return Job(
                rule="compare", name="compare",
                params={
                    "confidence": self.config["statistics"]["confidence"],
                    "table": self.table().identity(),
                    # The published numbers it puts beside ours.
                    "published": provenance.params_hash({"text": published.text()}),
                },
                inputs=inputs, arguments=("records",), entries=self._method_entries(),
                outputs={"files": self._comparison_files(), "csv": self.layout.comparison_csv(),
                         "report": self.layout.comparison_report(), "figures": self.layout.figures_dir()},
                log=self.layout.log("compare"), mem_mb=2000, runtime=10,
            )  # fmt: skip

        return self._cached(("compare",), make)

    # Generation ------------------------------------------------------------------------------------
    def validation_classes(self, dataset: str) -> int:
        return int(self.tree["datasets"][dataset]["validation_classes"])

    def training_classes(self, dataset: str) -> int:
        return int(self.tree["datasets"][dataset]["training_classes"])

    def prompts(self, dataset: str) -> Job:
        def make() -> Job:
            settings = self.generation_settings(dataset)
            captions = settings["prompts"]["source"] == "captions"
            return Job(
                rule="prompts", name=dataset,
                params={
                    "dataset": dataset, "prompts": settings["prompts"], "seed": settings["seed"], "device": settings["device"],
                    "validation_classes": self.validation_classes(dataset),
                },
                inputs={"manifest": self.layout.manifest(dataset)},
                outputs={"prompts": self.layout.prompts(dataset), "search": self.layout.raw_dir(dataset)},
                log=self.layout.log("prompts", dataset), mem_mb=8000 if captions else 2000, runtime=30,
                gpus=gpus_for(str(settings["device"]), captions), device=str(settings["device"]),
                code=[registry.module_of(registry.dataset(dataset).prompts)], entries=[provenance.stable_repr(registry.dataset(dataset))],
            )  # fmt: skip

        return self._cached(("prompts", dataset), make)

    def train_generator(self, dataset: str) -> Job:
        def make() -> Job:
            settings = self.generation_settings(dataset)
            return Job(
                rule="train_generator", name=dataset,
                params={
                    "dataset": dataset, "embedded": settings["embedded"], "seed": settings["seed"],
                    "image_size": int(self.dataset_settings(dataset)["image_size"]),
                    "validation_classes": self.validation_classes(dataset),
                    "generator": settings["generator"],
                },
                inputs={"manifest": self.layout.manifest(dataset)},
                outputs={"model": self.layout.generator_dir(dataset)},
                log=self.layout.log("train_generator", dataset), threads=int(settings["threads"]),
                threads_change_numbers=True, mem_mb=4000, runtime=60, device=str(settings["device"]),
                # The embedded generator trains on the CPU unless its device asks for a GPU (cuda): then it takes one.
                gpus=gpus_for(str(settings["device"]), False),
                code=[registry.module_of(registry.GENERATORS[settings["generator"]].load)],
                entries=[provenance.stable_repr(registry.GENERATORS[settings["generator"]])],
            )  # fmt: skip

        return self._cached(("train_generator", dataset), make)

    def _generation_gpus(self, dataset: str) -> int:
        """Stable Diffusion jobs take a whole GPU; the embedded generator is small enough to share one."""
        settings = self.generation_settings(dataset)
        return gpus_for(str(settings["device"]), settings["generator"] == "stable-diffusion")

    def fine_tune(self, dataset: str, class_index: int | str) -> Job:
        def make() -> Job:
            settings = self.generation_settings(dataset)
            return Job(
                rule="fine_tune", name=f"{dataset}/class{class_index}",
                params={
                    "dataset": dataset, "class_index": int(class_index), "generation": settings,
                    "validation_classes": self.validation_classes(dataset), "tracking": self.tracking(),
                },
                inputs={"manifest": self.layout.manifest(dataset), "prompts": self.layout.prompts(dataset)},
                outputs={"weights": self.layout.fine_tuned_dir(dataset, class_index),
                         "checkpoint": self.layout.fine_tuning_checkpoint(dataset, class_index)},
                log=self.layout.log("fine_tune", dataset, f"class{class_index}"), threads=int(settings["threads"]),
                mem_mb=16000, runtime=120, gpus=self._generation_gpus(dataset), device=str(settings["device"]),
                threads_change_numbers=not self._generation_gpus(dataset),
                code=[registry.module_of(registry.GENERATORS[settings["generator"]].load)],
                entries=[provenance.stable_repr(registry.GENERATORS[settings["generator"]])],
            )  # fmt: skip

        return self._cached(("fine_tune", dataset, str(class_index)), make)

    def generate(self, dataset: str, class_index: int | str) -> Job:
        def make() -> Job:
            from dmlsynth.generation.fine_tuning import fine_tunes

            settings = self.generation_settings(dataset)
            inputs: dict[str, Any] = {"manifest": self.layout.manifest(dataset), "prompts": self.layout.prompts(dataset)}
            generator = registry.GENERATORS[settings["generator"]]
            if generator.trained_here:
                inputs["generator"] = self.layout.generator_dir(dataset)
            if fine_tunes(settings):
                inputs["fine_tuned"] = self.layout.fine_tuned_dir(dataset, class_index)
            return Job(
                rule="generate", name=f"{dataset}/class{class_index}",
                params={
                    "dataset": dataset, "class_index": int(class_index), "image_sets": self.image_sets(), "generation": settings,
                    "validation_classes": self.validation_classes(dataset),
                },
                inputs=inputs,
                outputs={"part": self.layout.generated_part(dataset, class_index), "generated": self.layout.generated_dir(dataset)},
                neutral=() if fine_tunes(settings) else tuple(f"generation.fine_tuning.{k}" for k in FINE_TUNING_OFF),
                log=self.layout.log("generate", dataset, f"class{class_index}"), threads=int(settings["threads"]),
                mem_mb=4000 if generator.trained_here else 16000, runtime=120, gpus=self._generation_gpus(dataset),
                device=str(settings["device"]), threads_change_numbers=not self._generation_gpus(dataset),
                code=[registry.module_of(generator.load)],
                # The recipes of the image sets it makes (their operator mix) and the generator it loads.
                entries=[provenance.stable_repr(s) for s in (generator, *(registry.IMAGE_SETS[n] for n in self.image_sets()))],
            )  # fmt: skip

        return self._cached(("generate", dataset, str(class_index)), make)

    def filter_generated(self, dataset: str, class_index: int | str) -> Job:
        def make() -> Job:
            from dmlsynth.generation.settings import filter_scorer

            settings = self.generation_settings(dataset)
            scorer = filter_scorer(settings)
            return Job(
                rule="filter_generated", name=f"{dataset}/class{class_index}",
                params={
                    "dataset": dataset, "class_index": int(class_index), "generation": settings, "scorer": scorer,
                    "image_size": int(self.dataset_settings(dataset)["image_size"]),
                    "pretrained": bool(self.dataset_settings(dataset)["pretrained"]),
                    "validation_classes": self.validation_classes(dataset),
                },
                inputs={"manifest": self.layout.manifest(dataset), "prompts": self.layout.prompts(dataset),
                        "part": self.layout.generated_part(dataset, class_index)},
                outputs={"part": self.layout.filtered_part(dataset, class_index), "generated": self.layout.generated_dir(dataset)},
                log=self.layout.log("filter_generated", dataset, f"class{class_index}"),
                mem_mb=8000 if scorer == "clip" else 2000, runtime=30,
                gpus=gpus_for(str(settings["device"]), scorer == "clip"), device=str(settings["device"]),
                threads_change_numbers=not gpus_for(str(settings["device"]), scorer == "clip"),
                # Which generator made the images decides the scorer (auto); the dataset's image mode how it reads them.
                entries=[provenance.stable_repr(s) for s in (registry.GENERATORS[settings["generator"]], registry.dataset(dataset))],
            )  # fmt: skip

        return self._cached(("filter_generated", dataset, str(class_index)), make)

    def merge_generated(self, dataset: str, image_set: str) -> Job:
        def make() -> Job:
            parts = [self.layout.filtered_part(dataset, i) for i in range(self.training_classes(dataset))]
            return Job(
                rule="merge_generated", name=f"{dataset}/{image_set}", params={"image_set": image_set},
                inputs={"parts": parts}, outputs={"manifest": self.layout.image_set_manifest(dataset, image_set)},
                log=self.layout.log("merge_generated", dataset, image_set), mem_mb=1000, runtime=5,
            )  # fmt: skip

        return self._cached(("merge_generated", dataset, image_set), make)

    def generation_report(self) -> Job:
        def make() -> Job:
            from dmlsynth.generation.fine_tuning import fine_tunes

            datasets = self.config["datasets"] if self.image_sets() else []
            photos = [d for d in datasets if registry.dataset(d).image_mode != "L"]
            settings = {d: self.generation_settings(d) for d in datasets}
            classes = {d: range(self.training_classes(d)) for d in datasets}
            inputs = {
                "manifests": [self.layout.manifest(d) for d in datasets],
                "image_sets": [self.layout.image_set_manifest(d, s) for d in datasets for s in self.image_sets()],
                "filtered": [self.layout.filtered_part(d, i) for d in datasets for i in classes[d]],
                "generators": [self.layout.generator_dir(d) for d in datasets if registry.GENERATORS[settings[d]["generator"]].trained_here],
                # Their fine-tuning time is part of the images' cost.
                "fine_tuned": [self.layout.fine_tuned_dir(d, i) for d in datasets if fine_tunes(settings[d]) for i in classes[d]],
            }  # fmt: skip
            devices = sorted({str(settings[d]["device"]) for d in photos})
            device = devices[0] if len(devices) == 1 else "auto"
            return Job(
                rule="generation_report", name="generation_report",
                params={
                    "datasets": {
                        d: {
                            "generation": settings[d], "image_size": int(self.dataset_settings(d)["image_size"]),
                            "pretrained": bool(self.dataset_settings(d)["pretrained"]),
                            "validation_classes": self.validation_classes(d),
                        }
                        for d in datasets
                    },
                    "image_sets": self.image_sets(), "layout": self.layout.paths(), "tracking": self.tracking(),
                },
                inputs=inputs,
                outputs={"table": self.layout.generation_csv(), "figures": [self.layout.generated_grid(d) for d in datasets]},
                log=self.layout.log("generation_report"),
                # Photos: processes decoding them for the feature network (Snakemake lowers this to --cores).
                threads=8 if photos else 1, mem_mb=4000, runtime=30,
                gpus=gpus_for(device, bool(photos)) if photos else 0, device=device if photos else "cpu",
                entries=[provenance.stable_repr(s) for s in (
                    *(registry.dataset(d) for d in datasets), *(registry.GENERATORS[settings[d]["generator"]] for d in datasets),
                    *(registry.IMAGE_SETS[n] for n in self.image_sets()),
                )],
            )  # fmt: skip

        return self._cached(("generation_report",), make)


@functools.lru_cache(maxsize=8)
def _for(key: str) -> Jobs:
    return Jobs(json.loads(key)[0])


def of(config: Mapping[str, Any]) -> Jobs:
    """The jobs of ``config`` (one :class:`Jobs` per distinct config, and declared datasets' contents, in a process)."""
    return _for(json.dumps([config, registry.declared_records()], sort_keys=True, default=str))
