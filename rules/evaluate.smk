# Stage 4: retrieval metrics of each run on the test classes (and the per-query results behind
# them), with its embedding and training plots.


rule evaluate:
    input:
        embeddings=rules.train.output.embeddings,
        history=rules.train.output.history,
        record=rules.train.output.record,
        **({"last_epoch": rules.train.output.last_epoch} if VALIDATION else {}),
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
        run=run_identity,
        ks=CFG["evaluation"]["ks"],
        code=provenance.code_digest([provenance.EVALUATION_MODULE]),
        run_dir=lambda w, input: str(Path(input.embeddings).parent),
    log:
        LAYOUT.log("evaluate", "{dataset}", "{method}", "{loss}", "seed{seed}"),
    threads: 1
    resources:
        **job_resources(mem_mb=4000, runtime=30),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth evaluate --config {EFFECTIVE_CONFIG:q} --run-dir {params.run_dir:q} 2>&1 | tee -a {log:q}.tries >{log:q}"
