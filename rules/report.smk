# Stage 5: the results over seeds, each method paired with its control (summary, full table, DVC's
# headline metrics, figures); then the comparison report (forest plots, published numbers, cost per method).
import dataclasses

TABLE, COMPARE = JOBS.table(), JOBS.compare()
# In the Snakemake report: the results in brief and the full table as pages the report shows (its markdown and
# CSV it could only offer as downloads), and the figures.
REPORTED = {
    "summary_html": "../report/summary.rst", "table_html": "../report/table.rst", "figure": "../report/recall.rst",
    "training_loss": "../report/training_loss.rst",
}  # fmt: skip


rule table:
    input:
        # Every file the table reads of a run: its record (identity, params, code version; a run whose
        # training failed or is re-run has none, so the table never mixes old metrics with a new config),
        # test embeddings, metrics and per-query results; and generation.csv when BLenDeR methods run.
        **TABLE.inputs,
    output:
        **{
            name: report(path, caption=REPORTED[name], category="Results") if name in REPORTED else path
            for name, path in dataclasses.asdict(LAYOUT.table_files()).items()
        },
    params:
        # Which runs, of which config and code: a changed or failed run makes the table out of date.
        **record_params(lambda w: TABLE),
    log:
        TABLE.log,
    benchmark:
        LAYOUT.benchmark("table"),
    threads: 1
    resources:
        **record_resources(lambda w: TABLE),
    conda:
        "../environment.yml"
    shell:
        # The run folders as their records' paths, one per argument (the record would be too long for one).
        "dmlsynth table --job {params.job:jsonq} {input.records:q} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule compare:
    input:
        **COMPARE.inputs,
    output:
        table=LAYOUT.comparison_csv(),
        report=LAYOUT.comparison_report(),
        page=report(LAYOUT.comparison_html(), caption="../report/comparison.rst", category="Comparison"),
        forest=[
            report(LAYOUT.forest_figure(d, l), caption="../report/forest.rst", category="Comparison")
            for d, l in resolve.comparison_groups(CFG)
        ],
    params:
        # Its code, the table it reads and the published numbers it puts beside ours.
        **record_params(lambda w: COMPARE),
    log:
        COMPARE.log,
    benchmark:
        LAYOUT.benchmark("compare"),
    threads: 1
    resources:
        **record_resources(lambda w: COMPARE),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth compare --job {params.job:jsonq} {input.records:q} 2>&1 | tee -a {log:q}.tries >{log:q}"
