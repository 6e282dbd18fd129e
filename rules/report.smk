# Stage 5: the results table over seeds, its JSON twin and the recall bar chart.

TABLE_OUTPUTS = [f"{RESULTS}/{name}" for name in pipeline.TABLE_FILES]


rule table:
    input:
        metrics=[(RUN_DIR + "/metrics.json").format(**run) for run in RUNS],
        extra=TABLE_EXTRA_INPUTS,
    output:
        table=report(TABLE_OUTPUTS[0], caption="../report/table.rst", category="Results"),
        metrics=TABLE_OUTPUTS[1],
        figure=report(TABLE_OUTPUTS[2], caption="../report/recall.rst", category="Results"),
    log:
        LOGS + "/table.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY:q} -m dmlsynth table --config {EFFECTIVE_CONFIG:q} --out-csv {output.table:q}"
        " --out-json {output.metrics:q} --out-figure {output.figure:q} {input.metrics:q} > {log:q} 2>&1"
