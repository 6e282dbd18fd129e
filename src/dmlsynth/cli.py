"""The ``dmlsynth`` command: one subcommand per workflow stage.

Snakemake rules (and DVC stages through them) call these; each reads the
validated config file it is given, so a job runs with exactly the params
the workflow resolved.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from dmlsynth import config as cfg
from dmlsynth.gpu_slots import GPU_SLOTS_VARIABLE
from dmlsynth.workflow import WORKFLOW_VARIABLE, die_with_parent

log = logging.getLogger("dmlsynth")


def _config(path: str) -> dict:
    return cfg.load(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args.config)
    print(
        f"{args.config}: valid — datasets {config['datasets']}, methods {config['methods']}, "
        f"losses {config['losses']}, seeds {config['seeds']}"
    )
    from dmlsynth.generation.settings import describe

    for line in describe(config):
        print(f"  {line}")
    return 0


def cmd_cache_images(args: argparse.Namespace) -> int:
    from dmlsynth.data.image_cache import build_cache

    short_side = cfg.dataset_settings(_config(args.config), args.dataset)["cache_short_side"]
    if not short_side:
        raise cfg.ConfigError(
            f"dataset_settings.{args.dataset}.cache_short_side is 0: {args.dataset} is read without a resized copy"
        )
    print(build_cache(args.manifest, short_side, threads=args.threads))
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from dmlsynth.data.prepare import prepare_dataset

    manifest = prepare_dataset(_config(args.config), args.dataset)
    print(manifest)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dmlsynth import tracking
    from dmlsynth.training.loop import train_run
    from dmlsynth.workflow import stop_when_workflow_gone

    config = _config(args.config)
    params = cfg.run_params(config, args.dataset, args.method, args.loss, args.seed)
    train_run(
        params,
        manifest=args.manifest,
        run_dir=args.run_dir,
        synthetic_manifest=args.synthetic_manifest,
        threads=args.threads,
        callbacks=[stop_when_workflow_gone()],
        progress=not args.no_progress,
    )
    tracking.track_runs(config, [args.run_dir])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dmlsynth import tracking
    from dmlsynth.evaluation import evaluate_run

    config = _config(args.config)
    metrics = evaluate_run(args.run_dir, ks=config["evaluation"]["ks"])
    log.info("metrics: %s", metrics)
    tracking.track_runs(config, [args.run_dir])
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from dmlsynth import tracking
    from dmlsynth.layout import find_run_folders

    config = _config(args.config) if args.config else {}
    run_dirs = [folder.path for folder in find_run_folders(*args.paths)]
    if not run_dirs:
        raise FileNotFoundError(f"no finished run folders under {', '.join(map(str, args.paths))}")
    config = {**config, "tracking": {**config.get("tracking", {}), "enabled": True}}
    if not tracking.track_runs(config, run_dirs):
        return 1
    print(f"{len(run_dirs)} run(s) tracked in {tracking.settings(config).uri}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    import pandas as pd

    from dmlsynth import tracking
    from dmlsynth.layout import TableFiles
    from dmlsynth.table import write_table

    config = _config(args.config)
    files = TableFiles.under(str(args.out_dir))
    generation = pd.read_csv(args.generation) if args.generation else None
    table = write_table(args.runs, files, config.get("statistics"), generation)
    log.info("table with %d rows written to %s (in brief: %s)", len(table), files.csv, files.summary_md)
    tracking.tracked(
        config, "the results table", f"snakemake --forcerun table {files.csv}",
        lambda settings: tracking.track_table(settings, files.all(), table),
    )  # fmt: skip
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import pandas as pd

    from dmlsynth.compare import write_comparison
    from dmlsynth.table import collect, read_table

    config = _config(args.config)
    if not args.table.is_file():
        raise FileNotFoundError(f"{args.table} does not exist: build the results table first (snakemake --cores 1 {args.table})")
    generation = pd.read_csv(args.generation) if args.generation else None
    frame = write_comparison(
        read_table(args.table), collect(args.runs), generation, args.out_csv, args.out_report, args.figure_dir,
        config.get("statistics"),
    )  # fmt: skip
    log.info("comparison of %d rows written to %s and %s", len(frame), args.out_csv, args.out_report)
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    from dmlsynth.prefetch import prefetch

    for line in prefetch(_config(args.config)):
        print(line)
    return 0


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from dmlsynth.pipeline import dvc_yaml

    sys.stdout.write(dvc_yaml(_config(args.config)))
    return 0


def _train_split(manifest: Path, config: dict, dataset: str):
    """The training classes' images: the training split less any validation classes (never the test classes)."""
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.data.split import training_rows

    return training_rows(read_manifest(manifest), config, dataset)


def cmd_prompts(args: argparse.Namespace) -> int:
    from dmlsynth.layout import PROMPTS_REBUILT
    from dmlsynth.generation.prompts import build_prompts, caption_prompts, update_prompts
    from dmlsynth.generation.settings import generation_settings

    config = _config(args.config)
    train = _train_split(args.manifest, config, args.dataset)
    document = build_prompts(args.dataset, train, [args.manifest.parent, *args.search_dir])
    settings = generation_settings(config, args.dataset)
    if settings["prompts"]["source"] == "captions":
        document = caption_prompts(document, train, settings["prompts"], int(settings["seed"]), settings["device"])
    rebuilt = args.out.with_name(PROMPTS_REBUILT)
    if update_prompts(document, args.out, rebuilt):
        log.info("prompts of %d classes written to %s", len(document["classes"]), args.out)
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from dmlsynth import registry
    from dmlsynth.generation.embedded import train_embedded
    from dmlsynth.generation.settings import generation_settings

    config = _config(args.config)
    settings = generation_settings(config, args.dataset)
    if not registry.GENERATORS[settings["generator"]].trained_here:
        raise cfg.ConfigError(f"generation.{args.dataset}.generator is {settings['generator']!r}: nothing to train")
    size = cfg.dataset_settings(config, args.dataset)["image_size"]
    train_embedded(
        _train_split(args.manifest, config, args.dataset), args.out_dir, settings["embedded"], settings["seed"], args.threads, size,
        device=settings["device"],
    )
    return 0


def _training_labels(train, dataset: str, class_index: int) -> list[int]:
    labels = sorted(int(l) for l in train["label"].unique())
    if not 0 <= class_index < len(labels):
        raise cfg.ConfigError(f"--class-index {class_index} out of range: {dataset} has {len(labels)} training classes")
    return labels


def _class_job(args: argparse.Namespace):
    """What every per-class generation job starts from: (config, generation settings, training rows,
    training labels), with torch on the job's threads."""
    import torch

    from dmlsynth.generation.settings import generation_settings

    config = _config(args.config)
    settings = generation_settings(config, args.dataset)
    torch.set_num_threads(max(1, args.threads))
    train = _train_split(args.manifest, config, args.dataset)
    return config, settings, train, _training_labels(train, args.dataset, args.class_index)


def cmd_fine_tune(args: argparse.Namespace) -> int:
    from dmlsynth import tracking
    from dmlsynth.generation.fine_tuning import class_images, fine_tune_class
    from dmlsynth.generation.prompts import read_prompts
    from dmlsynth.layout import FINE_TUNING_SUMMARY
    from dmlsynth.workflow import stop_if_workflow_gone

    config, settings, train, labels = _class_job(args)
    label = labels[args.class_index]
    entry = read_prompts(args.prompts, labels)[label]

    fine_tune_class(
        settings, class_images(train, label), entry, args.dataset, label, args.out_dir, args.checkpoint,
        callbacks=[lambda step: stop_if_workflow_gone(f"step {step}")],
    )
    summary = args.out_dir / FINE_TUNING_SUMMARY
    tracking.tracked(
        config, f"the fine-tuning of {args.dataset} class {label}", f"snakemake --forcerun fine_tune {args.out_dir}",
        lambda settings: tracking.track_fine_tuning(summary, settings),
    )  # fmt: skip
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dmlsynth.generation.fine_tuning import adapter_settings
    from dmlsynth.generation.run import generate_class
    from dmlsynth.generation.settings import image_sets
    from dmlsynth.generation.generators import load_generator

    config, settings, train, labels = _class_job(args)
    token = None
    if args.fine_tuned_dir is not None:  # the class's own LoRA / textual-inversion weights
        settings, token = adapter_settings(settings, args.fine_tuned_dir)
    components = load_generator(settings, args.generator_dir, image_sets(config, args.dataset))
    generate_class(
        components, args.prompts, labels[args.class_index], labels, image_sets(config, args.dataset), settings,
        args.generated_dir, args.out_part, class_token=token,
    )
    return 0


def cmd_filter_generated(args: argparse.Namespace) -> int:
    import torch

    from dmlsynth.generation.filtering import filter_generated

    config = _config(args.config)
    torch.set_num_threads(max(1, args.threads))
    filter_generated(
        config, args.dataset, args.part, args.generated_dir, args.prompts, _train_split(args.manifest, config, args.dataset),
        args.out, threads=args.threads,
    )  # fmt: skip
    return 0


def cmd_merge_generated(args: argparse.Namespace) -> int:
    from dmlsynth.generation.run import merge_parts

    frame = merge_parts(args.parts, args.image_set, args.out)
    log.info("%s: %d images of %d classes -> %s", args.image_set, len(frame), frame["label"].nunique(), args.out)
    return 0


def cmd_generation_report(args: argparse.Namespace) -> int:
    from dmlsynth import tracking
    from dmlsynth.generation.quality import generation_report
    from dmlsynth.layout import Layout

    config = _config(args.config)
    table = generation_report(config, threads=args.threads)
    print(table.to_string(index=False))
    layout = Layout.of(config)
    tracking.tracked(
        config, "the generation report", f"snakemake --forcerun generation_report {layout.generation_csv()}",
        lambda settings: tracking.track_generation(
            settings, table, {d: layout.generated_grid(d) for d in config["datasets"]}, layout.generation_csv()
        ),
    )  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmlsynth", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a params file and print what it runs")
    p.add_argument("config", nargs="?", default="params.yaml")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("prepare-data", help="download/extract a dataset and write its manifest")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train", help="train one dataset x method x loss x seed run")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--loss", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--synthetic-manifest", type=Path, default=None)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_gpu_slot_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache-images", help="write the resized JPEG copy of a photo dataset that training reads")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_cache_images)

    p = sub.add_parser("evaluate", help="retrieval metrics and plots of a run's test embeddings")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--run-dir", required=True, type=Path)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("track", help="log run folders to MLflow (idempotent; after tracking trouble)")
    p.add_argument("--config", default=None, help="params file whose tracking.uri to use")
    p.add_argument("paths", nargs="+", type=Path, help="run folders or folders containing them")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser(
        "prefetch", help="download every dataset file and model a config's jobs need (for offline compute nodes)"
    )
    p.add_argument("--config", default="params.yaml")
    p.set_defaults(func=cmd_prefetch)

    p = sub.add_parser("dvc-yaml", help="print the dvc.yaml that runs this config's pipeline through Snakemake")
    p.add_argument("--config", default="params.yaml")
    p.set_defaults(func=cmd_dvc_yaml)

    p = sub.add_parser(
        "table", help="aggregate runs over seeds into the results table, each method paired with its control",
        description="Writes into --out-dir: summary.md and summary.csv (the results in brief), table.csv and "
        "table.json (every column), metrics.json (DVC's headline metrics) and figures/recall_at_1.png.",
    )  # fmt: skip
    p.add_argument("--config", default="params.yaml", help="params file whose `statistics` settings to use (default: %(default)s)")
    p.add_argument("--out-dir", required=True, type=Path, help="the results folder to write the table's files into (e.g. results)")
    p.add_argument("--generation", type=Path, default=None, help="results/generation.csv, for the cost of methods that train on generated images")
    p.add_argument("runs", nargs="+", type=Path, help="run folders (results/runs/<dataset>/<method>/<loss>/seed<N>) or folders holding them")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("compare", help="forest plots, published numbers and cost per method: the comparison report")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--table", required=True, type=Path, help="results/table.csv")
    p.add_argument("--generation", type=Path, default=None, help="results/generation.csv (when BLenDeR methods ran)")
    p.add_argument("--out-csv", required=True, type=Path)
    p.add_argument("--out-report", required=True, type=Path)
    p.add_argument("--figure-dir", required=True, type=Path)
    p.add_argument("runs", nargs="+", type=Path, help="the run folders the table was built from")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("prompts", help="write the editable per-class prompts file of a dataset (BLenDeR)")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--search-dir", type=Path, action="append", default=[], help="where attribute tables may lie")
    p.add_argument("--out", required=True, type=Path)
    _add_gpu_slot_options(p)
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser("train-generator", help="train the embedded prompt-conditioned diffusion model")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_train_generator)

    p = sub.add_parser("fine-tune", help="fine-tune Stable Diffusion (LoRA / textual inversion) on one training class")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--class-index", required=True, type=int, help="index into the sorted training classes")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--prompts", required=True, type=Path, help="the class's captions (prompts.yaml)")
    p.add_argument("--out-dir", required=True, type=Path, help="{data}/{dataset}/fine_tuned/class{i}")
    p.add_argument("--checkpoint", required=True, type=Path, help="where the running job keeps its checkpoint")
    p.add_argument("--threads", type=int, default=1)
    _add_gpu_slot_options(p)
    p.set_defaults(func=cmd_fine_tune)

    p = sub.add_parser("generate", help="generate every image set of one training class")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--class-index", required=True, type=int, help="index into the sorted training classes")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--prompts", required=True, type=Path)
    p.add_argument("--generator-dir", type=Path, default=None, help="trained embedded generator")
    p.add_argument("--fine-tuned-dir", type=Path, default=None, help="the class's fine-tuned weights (fine-tune)")
    p.add_argument("--generated-dir", required=True, type=Path, help="{data}/{dataset}/generated")
    p.add_argument("--out-part", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    _add_gpu_slot_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("filter-generated", help="score one class's generated images and keep each set's budget")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifest", required=True, type=Path, help="the real images (the fidelity classifier's)")
    p.add_argument("--prompts", required=True, type=Path, help="the class prompts CLIP compares the images with")
    p.add_argument("--part", required=True, type=Path, help="the class's generation part")
    p.add_argument("--generated-dir", required=True, type=Path, help="{data}/{dataset}/generated")
    p.add_argument("--out", required=True, type=Path, help="the filtered part")
    p.add_argument("--threads", type=int, default=1)
    _add_gpu_slot_options(p)
    p.set_defaults(func=cmd_filter_generated)

    p = sub.add_parser("merge-generated", help="join the kept images of the class parts of an image set into its manifest")
    p.add_argument("--image-set", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("parts", nargs="+", type=Path)
    p.set_defaults(func=cmd_merge_generated)

    p = sub.add_parser("generation-report", help="fidelity/diversity of generated images and sample grids")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--threads", type=int, default=1, help="processes decoding photos for the feature network")
    p.set_defaults(func=cmd_generation_report)
    return parser


def _add_gpu_slot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu-slots", type=int, default=int(os.environ.get(GPU_SLOTS_VARIABLE) or 0),
        help=f"GPUs Snakemake was given (--resources gpu=N; default: ${GPU_SLOTS_VARIABLE}, which the workflow sets); 0: none",
    )  # fmt: skip
    p.add_argument("--gpus", type=int, default=0, help="GPUs this job takes of them (its gpu resource)")


def _check_names(args: argparse.Namespace) -> None:
    from dmlsynth import registry

    for attr, table in (("dataset", registry.DATASETS), ("method", registry.METHODS), ("loss", registry.LOSSES)):
        value = getattr(args, attr, None)
        if attr == "method" and value is not None and registry.is_control_label(value):
            continue  # a control (baseline+beta=40): config.run_method checks it against the config
        if value is not None and value not in table:
            raise cfg.ConfigError(f"unknown {attr} {value!r}; known: {', '.join(sorted(table))}")


def main(argv: list[str] | None = None) -> int:
    # A job of the workflow ends with the shell that runs it: never writes outputs Snakemake gave up on.
    die_with_parent()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if os.environ.get(WORKFLOW_VARIABLE):  # logs are appended to: each try starts with this line
        job = f", SLURM job {os.environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in os.environ else ""
        offline = ", models from the local caches only (cluster.offline)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        log.info("dmlsynth %s started on %s (pid %d%s%s)", args.command, socket.gethostname(), os.getpid(), job, offline)
    # faiss announces every CPU-feature probe at INFO; only its problems matter here.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    from dmlsynth.errors import DmlsynthError
    from dmlsynth.gpu_slots import claim

    try:
        _check_names(args)
        # Before anything starts CUDA: a job of `--resources gpu=N` takes GPUs no concurrent job has.
        claim(getattr(args, "gpu_slots", 0), getattr(args, "gpus", 0))
        return args.func(args)
    except (DmlsynthError, FileNotFoundError) as exc:  # the user's to fix: the message says how
        print(f"dmlsynth {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
