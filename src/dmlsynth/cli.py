"""The ``dmlsynth`` command: one subcommand per workflow job, and a few tools around them.

A job's subcommand runs its resolved record (:class:`dmlsynth.jobs.Job`): the workflow passes it
whole (``--job``), by hand it is resolved from a params file and the job's names (``--config
params.yaml --dataset digits ...``); either way :mod:`dmlsynth.commands` runs it. Errors the user
can fix (:class:`dmlsynth.errors.DmlsynthError`) are printed without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from dmlsynth.errors import DmlsynthError
from dmlsynth.gpu_slots import GPU_SLOTS_VARIABLE
from dmlsynth.workflow import WORKFLOW_VARIABLE, die_with_parent

log = logging.getLogger("dmlsynth")

DESCRIPTION = (
    "The jobs of the dmlsynth workflow (Snakemake runs them; by hand: --config and the job's names) and the "
    "tools around them. `dmlsynth list` says what datasets, backbones, losses and methods there are."
)

CONFIG_HELP = "params file to resolve the job from, by hand (default: %(default)s); the workflow passes --job instead"
NAMES = {
    "dataset": ("--dataset", {"help": "dataset (a name of the registry, e.g. digits)"}),
    "method": ("--method", {"help": "method, or a control such as baseline+beta=40 (its folder under results/runs/<dataset>/)"}),
    "loss": ("--loss", {"help": "base loss (e.g. multi_similarity)"}),
    "seed": ("--seed", {"type": int, "help": "the run's seed"}),
    "class_index": ("--class-index", {"type": int, "help": "index of the class among the dataset's sorted training classes"}),
    "image_set": ("--image-set", {"help": "generated image set (blender, union, intersection, plain)"}),
}


def version_line() -> str:
    """``dmlsynth --version``: the installed distribution's version, where the package was imported from,
    and the git commit of that checkout when it is one (``src/dmlsynth`` of a git work tree)."""
    from importlib import metadata

    from dmlsynth.provenance import PACKAGE, PACKAGE_DIR, code_version

    try:
        line = f"{PACKAGE} {metadata.version(PACKAGE)} from {PACKAGE_DIR}"
    except metadata.PackageNotFoundError:
        line = f"{PACKAGE} (not installed: pip install -e .) from {PACKAGE_DIR}"
    checkout = PACKAGE_DIR.parent.parent
    if PACKAGE_DIR.parent.name == "src" and (checkout / ".git").exists():  # not an installed copy in site-packages
        code = code_version(checkout)
        if code["git_commit"] != "unknown":
            line += f" (git {str(code['git_commit'])[:12]}{', with local changes' if code['git_dirty'] else ''})"
    return line


class VersionAction(argparse.Action):
    """``--version``, whose git lookup runs only when it is asked for (argparse's own takes a fixed string)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


@dataclass(frozen=True)
class JobCommand:
    """A subcommand that runs one job of the workflow (its module in :mod:`dmlsynth.commands`)."""

    rule: str
    help: str
    names: tuple[str, ...]  # what names the job by hand (the constructor's arguments of dmlsynth.jobs.Jobs)
    gpu: bool = False  # may compute on a GPU (takes --gpus / --gpu-slots)

    @property
    def command(self) -> str:
        return self.rule.replace("_", "-")


JOB_COMMANDS = (
    JobCommand("prepare_data", "download/extract a dataset and write its manifest", ("dataset",)),
    JobCommand("cache_images", "write the resized JPEG copy of a photo dataset that training reads", ("dataset",)),
    JobCommand("prompts", "write the editable per-class prompts file of a dataset (BLenDeR)", ("dataset",), gpu=True),
    JobCommand("train_generator", "train the embedded prompt-conditioned diffusion model", ("dataset",), gpu=True),
    JobCommand("fine_tune", "fine-tune Stable Diffusion (LoRA / textual inversion) on one training class", ("dataset", "class_index"), gpu=True),
    JobCommand("generate", "generate every image set of one training class", ("dataset", "class_index"), gpu=True),
    JobCommand("filter_generated", "score one class's generated images and keep each set's budget", ("dataset", "class_index"), gpu=True),
    JobCommand("merge_generated", "join the kept images of an image set's class parts into its manifest", ("dataset", "image_set")),
    JobCommand("generation_report", "fidelity, diversity, guidance and cost of the generated images; sample grids", (), gpu=True),
    JobCommand("train", "train one dataset x method x loss x seed run", ("dataset", "method", "loss", "seed"), gpu=True),
    JobCommand("evaluate", "retrieval metrics, per-query results and plots of a run's test embeddings", ("dataset", "method", "loss", "seed")),
    JobCommand("table", "the results over seeds, each method paired with its control (summary, table, DVC metrics)", ()),
    JobCommand("compare", "the comparison report: forest plots, published numbers beside ours, cost per method", ()),
)  # fmt: skip


def _load_config(path: str) -> dict:
    from dmlsynth import config as cfg

    return cfg.load(path)


def _statistics(path: str) -> dict:
    """The ``statistics`` block of the config at ``path``, or its defaults where there is none."""
    from dmlsynth import config as cfg

    return (cfg.load(path) if Path(path).is_file() else cfg.config_defaults())["statistics"]


def resolve_job(spec: JobCommand, args: argparse.Namespace):
    """The job of ``args``: the workflow's record (``--job``), or resolved from ``--config`` and the job's names."""
    from dmlsynth import jobs

    if args.job is not None:
        return jobs.Job.from_json(args.job, spec.rule, getattr(args, "runs", None) or ())
    missing = [NAMES[name][0] for name in spec.names if getattr(args, name) is None]
    if missing:
        raise jobs.JobError(f"give {', '.join(missing)} (with --config), or the workflow's --job record")
    _check_names(args)
    return getattr(jobs.Jobs(_load_config(args.config)), spec.rule)(*(getattr(args, name) for name in spec.names))


def run_job(spec: JobCommand, args: argparse.Namespace) -> int:
    import importlib

    from dmlsynth.gpu_slots import claim

    from dmlsynth import jobs, provenance

    # The checks the workflow makes (rules/common.smk) for a job run by hand in another checkout's folder too:
    # the run would record that folder's git commit for the imported package's code.
    problem = provenance.other_checkout(provenance.project_dir(), "the job run in")
    if problem:
        raise jobs.JobError(problem)
    job = resolve_job(spec, args)
    _pin_cpu_isa(job.cpu_isa, args)
    if spec.gpu:
        # Before anything starts CUDA: a job of `--resources gpu=N` takes GPUs no concurrent job has.
        claim(args.gpu_slots, args.gpus)
    module = importlib.import_module(job.command_module)
    if spec.rule == "train":
        module.run(job, progress=not args.no_progress)
    else:
        module.run(job)
    return 0


def config_of_check(args: argparse.Namespace) -> str:
    """The params file ``check-config`` checks: ``--config``, or the deprecated positional form (with a warning)."""
    if args.legacy_config is None:
        return args.config or "params.yaml"
    if args.config is not None and args.config != args.legacy_config:
        raise DmlsynthError(f"two params files given ({args.config} and {args.legacy_config}): give one, with --config")
    print(
        f"dmlsynth check-config: warning: the params file as a positional argument is deprecated; "
        f"use dmlsynth check-config --config {args.legacy_config}",
        file=sys.stderr,
    )
    return args.legacy_config


def _pin_cpu_isa(level: str, args: argparse.Namespace) -> None:
    """The job computes with its record's instruction set (dmlsynth.cpu_isa). The workflow's record was applied
    before any library loaded (main); a job resolved by hand from --config is known only after numpy has
    loaded, so the command starts again in a fresh process with the variables set."""
    from dmlsynth import cpu_isa

    if cpu_isa.is_applied(level):
        return
    loaded = cpu_isa.loaded_libraries()
    cpu_isa.apply(level)  # raises where the CPU cannot run it
    if loaded and args.own_process:
        log.info("starting again with the CPU libraries pinned to %s (reproducibility.cpu_isa)", level)
        sys.stdout.flush(), sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "dmlsynth", *sys.argv[1:]])
    if loaded:  # called from Python (tests): the libraries keep the kernels they loaded with; run.yaml says which
        log.warning("%s already loaded: reproducibility.cpu_isa=%s applies to child processes only", ", ".join(loaded), level)


def cmd_check_config(args: argparse.Namespace) -> int:
    from dmlsynth.generation.settings import describe
    from dmlsynth.resolve import runs

    path = config_of_check(args)
    config = _load_config(path)
    print(
        f"{path}: valid — datasets {config['datasets']}, methods {config['methods']}, "
        f"losses {config['losses']}, seeds {config['seeds']} ({len(runs(config))} training runs, controls included)"
    )
    for line in describe(config):
        print(f"  {line}")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from dmlsynth import tracking
    from dmlsynth.layout import find_run_folders

    from dmlsynth.config import config_defaults

    config = _load_config(args.config) if args.config else config_defaults()
    run_dirs = [folder.path for folder in find_run_folders(*args.paths)]
    if not run_dirs:
        raise FileNotFoundError(f"no finished run folders under {', '.join(map(str, args.paths))}")
    config = {**config, "tracking": {**config["tracking"], "enabled": True}}
    if not tracking.track_runs(config, run_dirs):
        return 1
    print(f"{len(run_dirs)} run(s) tracked in {tracking.settings(config).uri}")
    return 0


def cmd_table_of_folders(args: argparse.Namespace) -> int:
    """``dmlsynth table --out-dir DIR RUN...``: the table of any run folders, by hand."""
    import pandas as pd

    from dmlsynth.layout import TableFiles
    from dmlsynth.table import write_table

    statistics = _statistics(args.config)
    files = TableFiles.under(str(args.out_dir))
    generation = pd.read_csv(args.generation) if args.generation else None
    table = write_table(args.runs, files, statistics, generation)
    log.info("table with %d rows written to %s (in brief: %s)", len(table), files.csv, files.summary_md)
    return 0


def cmd_compare_of_folders(args: argparse.Namespace) -> int:
    """``dmlsynth compare --table T --out-csv ... RUN...``: the comparison of a table and its run folders, by hand."""
    import pandas as pd

    from dmlsynth.compare import write_comparison
    from dmlsynth.table import collect, read_table

    statistics = _statistics(args.config)
    if not args.table.is_file():
        raise FileNotFoundError(f"{args.table} does not exist: build the results table first (snakemake --cores 1 {args.table})")
    generation = pd.read_csv(args.generation) if args.generation else None
    frame = write_comparison(
        read_table(args.table), collect(args.runs), generation, args.out_csv, args.out_report, args.figure_dir,
        statistics,
    )  # fmt: skip
    log.info("comparison of %d rows written to %s and %s", len(frame), args.out_csv, args.out_report)
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    from dmlsynth.prefetch import prefetch

    for line in prefetch(_load_config(args.config)):
        print(line)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from dmlsynth.catalog import KINDS, render

    sys.stdout.write(render(args.kinds or KINDS))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from dmlsynth import plugins, registry  # the registry installs the plugins when it loads

    del registry
    sys.stdout.write(plugins.render())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """check-method / check-loss / check-dataset: a pass/fail line per check; status 1 if one failed."""
    import yaml

    from dmlsynth import contract

    if args.command == "check-dataset":
        # Only its dataset_settings are read: a file that overrides params.yaml (a --configfile) will do.
        if not Path(args.config).is_file():
            raise FileNotFoundError(f"{args.config} does not exist: give the params file with the dataset's settings (--config)")
        results = contract.check_dataset(args.name, yaml.safe_load(Path(args.config).read_text()) or {})
    else:
        results = {"check-method": contract.check_method, "check-loss": contract.check_loss}[args.command](args.name)
    for result in results:
        print(result.line())
    failed = sum(not r.passed for r in results)
    print(f"{args.name}: {len(results) - failed} of {len(results)} checks passed" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from dmlsynth.pipeline import dvc_yaml

    sys.stdout.write(dvc_yaml(_load_config(args.config)))
    return 0


def _add_job_command(sub, spec: JobCommand) -> argparse.ArgumentParser:
    p = _add_command(sub, spec.command, spec.help)
    p.add_argument("--job", default=None, help="the job's record as the workflow resolved it (JSON; rules pass it)")
    p.add_argument("--config", default="params.yaml", help=CONFIG_HELP)
    for name in spec.names:
        flag, options = NAMES[name]
        p.add_argument(flag, dest=name, default=None, **options)
    if spec.gpu:
        p.add_argument(
            "--gpu-slots", type=int, default=int(os.environ.get(GPU_SLOTS_VARIABLE) or 0),
            help=f"GPUs Snakemake was given (--resources gpu=N; default: ${GPU_SLOTS_VARIABLE}, which the workflow sets); 0: none",
        )  # fmt: skip
        p.add_argument("--gpus", type=int, default=0, help="GPUs this job takes of them (its gpu resource; default: %(default)s)")
    if spec.rule == "train":
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=lambda args, spec=spec: run_job(spec, args))
    return p


def _add_command(sub, name: str, help: str, description: str = "") -> argparse.ArgumentParser:
    """A subcommand with its line in ``dmlsynth --help`` and, atop its own help, that line and ``description``."""
    return sub.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}. {description}".strip())


def _add_check_config(sub) -> None:
    p = _add_command(sub, "check-config", "validate a params file and print what it runs",
                     "The checks every workflow run makes, by hand: what is wrong and the allowed values, or the "
                     "datasets, methods, losses and seeds it runs and what generation makes.")  # fmt: skip
    p.add_argument("--config", default=None, help="the params file (default: params.yaml)")
    p.add_argument("legacy_config", nargs="?", default=None, metavar="CONFIG",
                   help="deprecated: the params file, given positionally; use --config")  # fmt: skip
    p.set_defaults(func=cmd_check_config)


def _kind(value: str) -> str:
    from dmlsynth.catalog import KINDS

    if value not in KINDS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(KINDS)}")
    return value


def _add_tool_commands(sub) -> None:
    # Imported here, not at the top: the listing is not needed to run a job.
    from dmlsynth.catalog import KINDS

    p = _add_command(sub, "track", "log run folders to MLflow (idempotent; after tracking trouble)",
                     "Mirrors every finished run folder under the paths into the MLflow store of the config's tracking "
                     "settings (whether tracking is enabled there or not); safe to repeat.")  # fmt: skip
    p.add_argument("--config", default=None, help="params file whose tracking settings to use (default: tracking defaults)")
    p.add_argument("paths", nargs="+", type=Path, help="run folders or folders containing them (e.g. results/runs)")
    p.set_defaults(func=cmd_track)

    p = _add_command(sub, "prefetch", "download every dataset file and model a config's jobs need",
                     "For compute nodes without internet: run it where there is, then run the workflow with "
                     "cluster.offline: true. What is already there is kept.")  # fmt: skip
    p.add_argument("--config", default="params.yaml", help="the params file (default: %(default)s)")
    p.set_defaults(func=cmd_prefetch)

    p = _add_command(sub, "dvc-yaml", "print the dvc.yaml that runs this config's pipeline through Snakemake",
                     "Redirect it into dvc.yaml (dmlsynth dvc-yaml > dvc.yaml) after changing the config or the code's imports.")  # fmt: skip
    p.add_argument("--config", default="params.yaml", help="the params file (default: %(default)s)")
    p.set_defaults(func=cmd_dvc_yaml)

    p = _add_command(sub, "list", "list the datasets, backbones, losses and methods dmlsynth knows",
                     "Each entry's one-line description, what it works with (a method's losses, a loss's methods, "
                     "a dataset's defaults), its params and variants.")  # fmt: skip
    # A type rather than choices: Python 3.11 checks an empty `*` list against the choices and refuses it.
    p.add_argument("kinds", nargs="*", type=_kind, metavar="KIND", help=f"what to list: {', '.join(KINDS)} (default: all)")
    p.set_defaults(func=cmd_list)

    p = _add_command(sub, "plugins", "list the installed plugins: the entries other packages add",
                     "Each method, loss and dataset an installed package declares by entry point (dmlsynth.methods, "
                     "dmlsynth.losses, dmlsynth.datasets), with its distribution and version; docs/extending.md.")  # fmt: skip
    p.set_defaults(func=cmd_plugins)
    checks = {
        "check-method": ("method", "one step with each loss it claims; off params bit-identical to its control; "
                         "checkpoint and resume; same seed, same numbers"),
        "check-loss": ("loss", "its builder and a step of baseline with it; checkpoint and resume; same seed, same numbers"),
        "check-dataset": ("dataset", "its entry, and a preparation (into a temporary folder) whose manifest matches it"),
    }  # fmt: skip
    for command, (kind, what) in checks.items():
        p = _add_command(sub, command, f"run the project's contract checks on a {kind} (a plugin's or built-in)",
                         f"A pass/fail line per check with what to fix: {what}. Exit status 1 if one fails.")  # fmt: skip
        p.add_argument("name", help=f"the {kind}'s name in the registry (dmlsynth list {kind}s)")
        if kind == "dataset":
            p.add_argument("--config", default="params.yaml", help="params file with its dataset_settings (default: %(default)s)")
        p.set_defaults(func=cmd_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmlsynth", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=VersionAction, help="print the installed version (and git commit) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do (dmlsynth COMMAND --help says more)")
    _add_check_config(sub)
    for spec in JOB_COMMANDS:
        p = _add_job_command(sub, spec)
        if spec.rule == "table":  # also by hand, over any run folders
            p.add_argument("--out-dir", type=Path, default=None, help="with run folders: the results folder to write the table's files into")
            p.add_argument("--generation", type=Path, default=None, help="with run folders: results/generation.csv, for the cost of BLenDeR methods")
            p.add_argument("runs", nargs="*", type=Path, help="run folders (results/runs/<dataset>/<method>/<loss>/seed<N>) or folders holding them; with --job: the runs' run.yaml files")
            p.set_defaults(func=lambda args, spec=spec: cmd_table_of_folders(args) if args.runs and args.job is None else run_job(spec, args))
        if spec.rule == "compare":
            p.add_argument("--table", type=Path, default=None, help="with run folders: the results table (results/table.csv)")
            p.add_argument("--generation", type=Path, default=None, help="with run folders: results/generation.csv")
            p.add_argument("--out-csv", type=Path, default=None, help="with run folders: where to write comparison.csv")
            p.add_argument("--out-report", type=Path, default=None, help="with run folders: where to write comparison.md")
            p.add_argument("--figure-dir", type=Path, default=None, help="with run folders: where to write the forest plots")
            p.add_argument("runs", nargs="*", type=Path, help="the run folders the table was built from; with --job: the runs' run.yaml files")
            p.set_defaults(func=lambda args, spec=spec: cmd_compare_of_folders(args) if args.runs and args.job is None else run_job(spec, args))
    _add_tool_commands(sub)
    return parser


def _check_names(args: argparse.Namespace) -> None:
    from dmlsynth import config as cfg
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
    # Before numpy or torch loads: the instruction set of the job record on the command line (dmlsynth.cpu_isa).
    from dmlsynth.cpu_isa import pin_process

    pin_process(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()  # loads the registry, and with it the installed plugins
    except DmlsynthError as exc:  # a broken plugin: nothing runs, the message names it and the fix
        print(f"dmlsynth: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.own_process = argv is None  # a command of its own (may start again), not a call from Python
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
    try:
        return args.func(args)
    except (DmlsynthError, FileNotFoundError) as exc:  # the user's to fix: the message says how
        print(f"dmlsynth {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
