"""The commands a failure message gives to recover from it: each runs exactly the jobs it names.

``snakemake FILE --force`` re-runs the one job that makes FILE, whatever Snakemake thinks of it (a corrupt
file that is newer than its inputs looks current: ``snakemake FILE`` says "Nothing to be done").
``snakemake --forcerun RULE FILE`` is not that: ``--forcerun`` takes a list of rules, so FILE is read as one
more rule and every job of RULE in the whole workflow re-runs. ``snakemake FILE`` makes a missing file.

The command must work on the user's config: the workflow (``rules/common.smk``) hands its jobs the options
it was started with that choose the workflow and the config (``--snakefile``/``--directory``,
``--configfile``, ``--config``) in :data:`VARIABLE`; a job run by hand prints the command without them.
Targets come first: ``--configfile`` and ``--config`` take every argument after them.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Iterable, Mapping, Sequence

VARIABLE = "DMLSYNTH_WORKFLOW_OPTIONS"


def workflow_options(
    snakefile: str | os.PathLike[str], workdir: str | os.PathLike[str], configfiles: Iterable[str | os.PathLike[str]],
    config_args: Sequence[str] | None,
) -> list[str]:  # fmt: skip
    """The Snakemake options that give a command the same workflow and config: the Snakefile and working folder
    where the Snakefile is not ``workdir``'s own, the config files and the ``--config`` values."""
    options: list[str] = []
    if Path(snakefile).resolve() != (Path(workdir) / "Snakefile").resolve():
        options += ["--snakefile", str(Path(snakefile).resolve()), "--directory", str(Path(workdir).resolve())]
    configfiles = [str(Path(f).resolve()) for f in configfiles]
    if configfiles:
        options += ["--configfile", *configfiles]
    if config_args:
        options += ["--config", *config_args]
    return options


def _command(targets: Sequence[str], flags: Sequence[str], cores: int, environ: Mapping[str, str]) -> str:
    options = json.loads(environ.get(VARIABLE) or "[]")
    return shlex.join(["snakemake", *map(str, targets), "--cores", str(cores), *flags, *options])


def make(*targets: str | os.PathLike[str], cores: int = 1, environ: Mapping[str, str] = os.environ) -> str:
    """The command that makes missing ``targets`` (and whatever they need)."""
    return _command([str(t) for t in targets], [], cores, environ)


def remake(*targets: str | os.PathLike[str], cores: int = 1, environ: Mapping[str, str] = os.environ) -> str:
    """The command that runs the jobs that make ``targets`` again, and only those."""
    return _command([str(t) for t in targets], ["--force"], cores, environ)


def rerun(rule: str, cores: int = 1, environ: Mapping[str, str] = os.environ) -> str:
    """The command that runs every job of ``rule`` again, with what follows from it (for a rule of one job)."""
    return _command([], ["--forcerun", rule], cores, environ)
