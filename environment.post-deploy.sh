#!/usr/bin/env bash
# Snakemake runs this in each conda environment it makes from environment.yml
# (--software-deployment-method conda): it installs this project into it, editable, so jobs run the
# project's current code with the dependencies of pyproject.toml. The Snakefile exports the
# project's folder as DMLSYNTH_PROJECT_DIR.
set -euo pipefail
python -m pip install -e "${DMLSYNTH_PROJECT_DIR:?is set by the Snakefile: run this through snakemake}"
