"""The ``dmlsynth`` command: one subcommand per workflow stage.

Snakemake rules (and DVC stages through them) call these; each reads the
validated config file it is given, so a job runs with exactly the params
the workflow resolved.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dmlsynth import config as cfg

log = logging.getLogger("dmlsynth")


def _config(path: str) -> dict:
    return cfg.load(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args.config)
    print(
        f"{args.config}: valid — datasets {config['datasets']}, methods {config['methods']}, "
        f"losses {config['losses']}, seeds {config['seeds']}"
    )
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from dmlsynth.data.prepare import prepare_dataset

    manifest = prepare_dataset(_config(args.config), args.dataset)
    print(manifest)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dmlsynth.train import train_run

    config = _config(args.config)
    params = cfg.run_params(config, args.dataset, args.method, args.loss, args.seed)
    train_run(
        params,
        manifest=args.manifest,
        run_dir=args.run_dir,
        synthetic_manifest=args.synthetic_manifest,
        threads=args.threads,
        progress=not args.no_progress,
    )
    _track_runs(config, [args.run_dir])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dmlsynth.evaluate import evaluate_run

    config = _config(args.config)
    metrics = evaluate_run(args.run_dir, ks=config["evaluation"]["ks"])
    log.info("metrics: %s", metrics)
    _track_runs(config, [args.run_dir])
    return 0


def _track_runs(config: dict, run_dirs: list[Path]) -> bool:
    """Mirror run folders into MLflow; a tracking failure is reported, never fatal to results."""
    from dmlsynth import tracking

    if not tracking.tracking_enabled(config):
        return True
    uri = tracking.tracking_uri(config)
    ok = True
    for run_dir in run_dirs:
        try:
            run_id = tracking.track_run(run_dir, uri)
            log.info("tracked %s as MLflow run %s in %s", run_dir, run_id, uri)
        except Exception as exc:  # noqa: BLE001 - any store failure must leave the results alone
            tracking.report_failure(exc, str(run_dir), f"dmlsynth track {run_dir}")
            ok = False
    return ok


def cmd_track(args: argparse.Namespace) -> int:
    from dmlsynth import tracking

    config = _config(args.config) if args.config else {}
    run_dirs = sorted({p.parent for root in args.paths for p in Path(root).rglob("run.yaml")})
    if not run_dirs:
        raise FileNotFoundError(f"no run folders (with run.yaml) under {', '.join(map(str, args.paths))}")
    if not _track_runs({**config, "tracking": {**config.get("tracking", {}), "enabled": True}}, run_dirs):
        return 1
    print(f"{len(run_dirs)} run(s) tracked in {tracking.tracking_uri(config)}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from dmlsynth import tracking
    from dmlsynth.table import write_table

    table = write_table(args.metrics, args.out_csv, args.out_json, args.out_figure)
    log.info("table with %d rows written to %s", len(table), args.out_csv)
    config = _config(args.config)
    if tracking.tracking_enabled(config):
        uri = tracking.tracking_uri(config)
        try:
            tracking.track_summary([args.out_csv, args.out_json, args.out_figure], uri)
        except Exception as exc:  # noqa: BLE001
            tracking.report_failure(exc, "the results table", "snakemake --forcerun table results/table.csv")
    return 0


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from dmlsynth.pipeline import dvc_yaml

    sys.stdout.write(dvc_yaml(_config(args.config)))
    return 0


def _train_split(manifest: Path):
    from dmlsynth.data.manifest import read_manifest

    frame = read_manifest(manifest)
    return frame[frame.split == "train"].reset_index(drop=True)


def cmd_prompts(args: argparse.Namespace) -> int:
    from dmlsynth.generate.prompts import build_prompts, write_prompts

    document = build_prompts(args.dataset, _train_split(args.manifest), [args.manifest.parent, *args.search_dir])
    write_prompts(document, args.out)
    log.info("prompts of %d classes written to %s", len(document["classes"]), args.out)
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from dmlsynth import registry
    from dmlsynth.generate.embedded import train_embedded
    from dmlsynth.generate.settings import generation_settings

    config = _config(args.config)
    settings = generation_settings(config, args.dataset)
    spec = registry.DATASETS[args.dataset]
    if settings["generator"] != "embedded":
        raise cfg.ConfigError(f"generation.{args.dataset}.generator is {settings['generator']!r}; only 'embedded' is trained")
    if spec.image_mode != "L":
        raise cfg.ConfigError(
            f"the embedded generator makes small grayscale images; dataset {args.dataset!r} is {spec.image_mode}: "
            f"set generation.{args.dataset}.generator: stable-diffusion"
        )
    size = cfg.dataset_settings(config, args.dataset)["image_size"]
    train_embedded(_train_split(args.manifest), args.out_dir, settings["embedded"], settings["seed"], args.threads, size)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from dmlsynth.generate.run import generate_class
    from dmlsynth.generate.settings import generation_settings, image_sets
    from dmlsynth.generate.stable_diffusion import load_generator

    config = _config(args.config)
    settings = generation_settings(config, args.dataset)
    torch.set_num_threads(max(1, args.threads))
    train = _train_split(args.manifest)
    labels = sorted(int(l) for l in train["label"].unique())
    if not 0 <= args.class_index < len(labels):
        raise cfg.ConfigError(f"--class-index {args.class_index} out of range: {args.dataset} has {len(labels)} training classes")
    components = load_generator(settings, args.generator_dir)
    generate_class(
        components, args.prompts, labels[args.class_index], labels, image_sets(config, args.dataset), settings,
        args.generated_dir, args.out_part,
    )
    return 0


def cmd_merge_generated(args: argparse.Namespace) -> int:
    from dmlsynth.generate.run import merge_parts

    frame = merge_parts(args.parts, args.image_set, args.out)
    log.info("%s: %d images of %d classes -> %s", args.image_set, len(frame), frame["label"].nunique(), args.out)
    return 0


def cmd_generation_report(args: argparse.Namespace) -> int:
    from dmlsynth import registry, tracking
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.generate.embedded import METADATA
    from dmlsynth.generate.quality import log_to_mlflow, quality_rows, sample_grid, write_report
    from dmlsynth.generate.settings import GRID_ORDER, generation_settings

    config = _config(args.config)
    by_dataset: dict[str, dict[str, Path]] = {}
    for manifest in args.manifests:
        # {data}/{dataset}/generated/{image_set}/manifest.csv
        by_dataset.setdefault(manifest.parent.parent.parent.name, {})[manifest.parent.name] = manifest
    rows = []
    for dataset, sets in sorted(by_dataset.items()):
        if dataset not in registry.DATASETS:
            raise cfg.ConfigError(f"{dataset!r} (from {next(iter(sets.values()))}) is not a known dataset")
        spec = registry.DATASETS[dataset]
        real_manifest = next(iter(sets.values())).parent.parent.parent / "manifest.csv"
        real = _train_split(real_manifest)
        generated = {name: read_manifest(path) for name, path in sets.items()}
        settings = cfg.dataset_settings(config, dataset)
        quality = quality_rows(
            dataset, real, generated, spec.image_mode, settings["image_size"],
            generation_settings(config, dataset)["generator"], settings["pretrained"],
        )  # fmt: skip
        # The embedded generator's training time belongs to the cost of its images.
        metadata = real_manifest.parent / "generator" / METADATA
        quality["generator_train_seconds"] = json.loads(metadata.read_text())["seconds"] if metadata.is_file() else 0.0
        rows.append(quality)
        sample_grid(real, generated, GRID_ORDER, args.figure_dir / f"generated_{dataset}.png", spec.image_mode)
    table = write_report(rows, args.out_csv)
    print(table.to_string(index=False))
    if tracking.tracking_enabled(config):
        figures = [args.figure_dir / f"generated_{d}.png" for d in by_dataset]
        try:
            log_to_mlflow(table, tracking.tracking_uri(config), [args.out_csv, *figures])
        except Exception as exc:  # tracking trouble must not lose the report on disk
            tracking.report_failure(exc, "the generation report", "snakemake --forcerun generation_report results/generation.csv")
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="retrieval metrics and plots of a run's test embeddings")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--run-dir", required=True, type=Path)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("track", help="log run folders to MLflow (idempotent; after tracking trouble)")
    p.add_argument("--config", default=None, help="params file whose tracking.uri to use")
    p.add_argument("paths", nargs="+", type=Path, help="run folders or folders containing them")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("dvc-yaml", help="print the dvc.yaml that runs this config's pipeline through Snakemake")
    p.add_argument("--config", default="params.yaml")
    p.set_defaults(func=cmd_dvc_yaml)

    p = sub.add_parser("table", help="aggregate runs' metrics over seeds into the results table")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--out-csv", required=True, type=Path)
    p.add_argument("--out-json", required=True, type=Path)
    p.add_argument("--out-figure", required=True, type=Path)
    p.add_argument("metrics", nargs="+", type=Path)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("prompts", help="write the editable per-class prompts file of a dataset (BLenDeR)")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--search-dir", type=Path, action="append", default=[], help="where attribute tables may lie")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_prompts)

    p = sub.add_parser("train-generator", help="train the embedded prompt-conditioned diffusion model")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_train_generator)

    p = sub.add_parser("generate", help="generate every image set of one training class")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--dataset", required=True)
    p.add_argument("--class-index", required=True, type=int, help="index into the sorted training classes")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--prompts", required=True, type=Path)
    p.add_argument("--generator-dir", type=Path, default=None, help="trained embedded generator")
    p.add_argument("--generated-dir", required=True, type=Path, help="{data}/{dataset}/generated")
    p.add_argument("--out-part", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("merge-generated", help="join the class parts of an image set into its manifest")
    p.add_argument("--image-set", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("parts", nargs="+", type=Path)
    p.set_defaults(func=cmd_merge_generated)

    p = sub.add_parser("generation-report", help="fidelity/diversity of generated images and sample grids")
    p.add_argument("--config", default="params.yaml")
    p.add_argument("--out-csv", required=True, type=Path)
    p.add_argument("--figure-dir", required=True, type=Path)
    p.add_argument("manifests", nargs="+", type=Path, help="{data}/{dataset}/generated/{set}/manifest.csv files")
    p.set_defaults(func=cmd_generation_report)
    return parser


def _check_names(args: argparse.Namespace) -> None:
    from dmlsynth import registry

    for attr, table in (("dataset", registry.DATASETS), ("method", registry.METHODS), ("loss", registry.LOSSES)):
        value = getattr(args, attr, None)
        if value is not None and value not in table:
            raise cfg.ConfigError(f"unknown {attr} {value!r}; known: {', '.join(sorted(table))}")


def _generation_errors() -> tuple[type[Exception], ...]:
    """Bad prompts files and impossible generation requests are user errors, reported without a traceback."""
    from dmlsynth.generate.prompts import PromptsError
    from dmlsynth.generate.run import GenerationError

    return (PromptsError, GenerationError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # faiss announces every CPU-feature probe at INFO; only its problems matter here.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    from dmlsynth.data.errors import DataError
    from dmlsynth.data.manifest import ManifestError

    try:
        _check_names(args)
        return args.func(args)
    except (cfg.ConfigError, ManifestError, DataError, FileNotFoundError, *_generation_errors()) as exc:
        print(f"dmlsynth {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
