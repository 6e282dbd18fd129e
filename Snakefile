# dmlsynth workflow: dataset download -> per-class generation -> training for every
# dataset x method x loss x seed -> evaluation -> results/table.csv.
#
#   snakemake --cores 8 results/table.csv                             # embedded default (params.yaml)
#   snakemake --cores 8 --configfile=config/paper.yaml results/table.csv   # paper benchmark
#
# Rules are thin: each calls one `dmlsynth` subcommand; the logic lives in src/dmlsynth.

configfile: "params.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/generate.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        TABLE_OUTPUTS,
