# Stage 4: retrieval metrics of each run on the test classes (and the per-query results behind
# them), with its embedding and training plots.
EVALUATE = job_of("evaluate", "dataset", "method", "loss", "seed")


rule evaluate:
    input:
        unpack(lambda w: EVALUATE(w).inputs),
    output:
        metrics=RUN.metrics,
        # Per-query results behind the metrics: the table's bootstrap resamples them.
        queries=RUN.queries,
        embedding_plot=report(
            RUN.embedding_plot,
            caption="../report/embeddings.rst",
            category="Test embeddings",
            subcategory="{dataset} · {loss}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
        training_curve=report(
            RUN.training_curve,
            caption="../report/train_curve.rst",
            category="Training curves",
            subcategory="{dataset} · {loss}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
    params:
        # The run's identity is part of its evaluation's: a changed or failed training re-runs it.
        **record_params(EVALUATE),
    log:
        LAYOUT.log("evaluate", "{dataset}", "{method}", "{loss}", "seed{seed}"),
    benchmark:
        LAYOUT.benchmark("evaluate", "{dataset}", "{method}", "{loss}", "seed{seed}"),
    priority: on_critical_path(TRAIN)
    threads: 1
    resources:
        **record_resources(EVALUATE),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth evaluate --job {params.job:jsonq} 2>&1 | tee -a {log:q}.tries >{log:q}"
