# dmlsynth workflow: dataset download -> per-class generation -> training for every
# dataset x method x loss x seed -> evaluation -> results/table.csv -> results/comparison.md.
#
#   snakemake --cores 8 results/table.csv                             # embedded default (params.yaml)
#   snakemake --cores 8 --configfile=config/paper.yaml results/table.csv   # paper benchmark
#
# Rules are thin: each calls one `dmlsynth` subcommand; the logic lives in src/dmlsynth.

configfile: "params.yaml"

# The Snakemake report's first page (snakemake --report results/report.html): what was compared, the summary.
report: "report/workflow.rst"


# In pipeline order: a rule may use the outputs of the rules above it (rules.X.output).
include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/generate.smk"
include: "rules/fine_tune.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


# Jobs of seconds run in the Snakemake process itself instead of waiting in a cluster queue; so do
# the prompts where they come from attribute files (captioning runs a model: a cluster job).
localrules:
    all,
    merge_generated,
    table,
    compare,


if not PROMPTS_CAPTIONED:
    workflow.localrules("prompts")


onstart:
    check_cluster()


onsuccess:
    warn_about_tracking_failures()


onerror:
    warn_about_tracking_failures()


rule all:
    default_target: True
    input:
        rules.table.output,
        rules.compare.output,
