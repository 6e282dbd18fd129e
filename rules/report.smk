# Stage 5: the results table over seeds (paired statistics vs baseline), its JSON twin and the
# recall chart; then the comparison report (forest plots, published numbers, cost per method).
from types import SimpleNamespace

from dmlsynth import published

RUN_FOLDERS = [LAYOUT.run(**run) for run in RUNS]


rule table:
    input:
        # Every file the table reads of a run: its record (identity, params hash, code version;
        # a run whose training failed or is re-run has none, so the table never mixes old metrics
        # with a new config), test embeddings, metrics and per-query results. It refuses a run
        # that lacks one.
        records=[run.record for run in RUN_FOLDERS],
        embeddings=[run.embeddings for run in RUN_FOLDERS],
        metrics=[run.metrics for run in RUN_FOLDERS],
        queries=[run.queries for run in RUN_FOLDERS],
        # Generation cost and quality, when BLenDeR methods run.
        generation=rules.generation_report.output.table if IMAGE_SETS else [],
    output:
        summary=LAYOUT.summary_md(),
        summary_csv=LAYOUT.table_files().summary_csv,
        table=report(LAYOUT.table_csv(), caption="../report/table.rst", category="Results"),
        json=LAYOUT.table_json(),
        metrics=LAYOUT.headline_metrics(),
        figure=report(LAYOUT.recall_figure(), caption="../report/recall.rst", category="Results"),
    params:
        # Which runs, of which config and code: a changed or failed run makes the table out of date.
        runs={LAYOUT.run(**run).path: run_identity(SimpleNamespace(**run)) for run in RUNS},
        code=provenance.code_digest(["dmlsynth.table"]),
        # Re-built when the statistics settings change (no run depends on them).
        statistics=CFG.get("statistics") or {},
        run_dirs=lambda w, input: [str(Path(record).parent) for record in input.records],
        generation=lambda w, input: ["--generation", input.generation] if input.generation else [],
        out_dir=LAYOUT.results,
    log:
        LAYOUT.log("table"),
    threads: 1
    resources:
        **job_resources(mem_mb=4000, runtime=30),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth table --config {EFFECTIVE_CONFIG:q} --out-dir {params.out_dir:q} {params.generation:q}"
        " {params.run_dirs:q} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule compare:
    input:
        table=rules.table.output.table,
        records=[run.record for run in RUN_FOLDERS],
        generation=rules.generation_report.output.table if IMAGE_SETS else [],
    output:
        table=report(LAYOUT.comparison_csv(), caption="../report/comparison.rst", category="Comparison"),
        report=LAYOUT.comparison_report(),
        forest=[
            report(LAYOUT.forest_figure(d, l), caption="../report/forest.rst", category="Comparison")
            for d, l in pipeline.comparison_groups(CFG)
        ],
    params:
        # Its code and the published numbers it puts beside ours.
        code=provenance.code_digest(["dmlsynth.compare"], [published.text()]),
        run_dirs=lambda w, input: [str(Path(record).parent) for record in input.records],
        generation=lambda w, input: ["--generation", input.generation] if input.generation else [],
        figure_dir=lambda w, output: str(Path(output.forest[0]).parent),
    log:
        LAYOUT.log("compare"),
    threads: 1
    resources:
        **job_resources(mem_mb=2000, runtime=10),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth compare --config {EFFECTIVE_CONFIG:q} --table {input.table:q} {params.generation:q}"
        " --out-csv {output.table:q} --out-report {output.report:q} --figure-dir {params.figure_dir:q}"
        " {params.run_dirs:q} 2>&1 | tee -a {log:q}.tries >{log:q}"
