# Stage 4: retrieval metrics of each run on the test classes, with its embedding and training plots.


rule evaluate:
    input:
        embeddings=RUN_DIR + "/embeddings.npz",
        history=RUN_DIR + "/train_log.csv",
        record=RUN_DIR + "/run.yaml",
    output:
        metrics=RUN_DIR + "/metrics.json",
        embedding_plot=report(
            RUN_DIR + "/embeddings.png",
            caption="../report/embeddings.rst",
            category="Test embeddings",
            subcategory="{dataset} · {loss}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
        training_curve=report(
            RUN_DIR + "/train_curve.png",
            caption="../report/train_curve.rst",
            category="Training curves",
            subcategory="{dataset} · {loss}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
    params:
        ks=CFG["evaluation"]["ks"],
        run_dir=lambda w, input: str(Path(input.embeddings).parent),
    log:
        LOGS + "/evaluate/{dataset}/{method}/{loss}/seed{seed}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PY:q} -m dmlsynth evaluate --config {EFFECTIVE_CONFIG:q} --run-dir {params.run_dir:q} > {log:q} 2>&1"
