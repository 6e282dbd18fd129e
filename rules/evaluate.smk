# Stage 4: retrieval metrics of each run on the test classes.


rule evaluate:
    input:
        embeddings=RUN_DIR + "/embeddings.npz",
    output:
        metrics=RUN_DIR + "/metrics.json",
    params:
        ks=CFG["evaluation"]["ks"],
    log:
        LOGS + "/evaluate/{dataset}/{method}/{loss}/seed{seed}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PY:q} -m dmlsynth evaluate --config {EFFECTIVE_CONFIG:q} --embeddings {input.embeddings:q}"
        " --out {output.metrics:q} > {log:q} 2>&1"
