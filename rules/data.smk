# Stage 1: download / extract a dataset and write its manifest (the completeness marker).


rule prepare_data:
    output:
        manifest=DATA + "/{dataset}/manifest.csv",
    log:
        LOGS + "/prepare_data/{dataset}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "{PY:q} -m dmlsynth prepare-data --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q} > {log:q} 2>&1"
