# Stage 5: the results table over seeds, its JSON twin and the recall bar chart.

TABLE_OUTPUTS = [
    RESULTS + "/table.csv",
    RESULTS + "/metrics.json",
    RESULTS + "/figures/recall_at_1.png",
]


rule table:
    input:
        metrics=[(RUN_DIR + "/metrics.json").format(**run) for run in RUNS],
        extra=TABLE_EXTRA_INPUTS,
    output:
        table=TABLE_OUTPUTS[0],
        metrics=TABLE_OUTPUTS[1],
        figure=TABLE_OUTPUTS[2],
    log:
        LOGS + "/table.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY:q} -m dmlsynth table --out-csv {output.table:q} --out-json {output.metrics:q}"
        " --out-figure {output.figure:q} {input.metrics:q} > {log:q} 2>&1"
