# Stage 3: one training job per dataset x method x loss x seed.


def synthetic_manifest(wildcards):
    """Data-level methods (BLenDeR and its ablations) train on real + generated images."""
    image_set = registry.METHODS[wildcards.method].synthetic_images
    return [] if image_set is None else [f"{DATA}/{wildcards.dataset}/generated/{image_set}/manifest.csv"]


rule train:
    input:
        manifest=DATA + "/{dataset}/manifest.csv",
        synthetic=synthetic_manifest,
    output:
        embeddings=RUN_DIR + "/embeddings.npz",
        model=RUN_DIR + "/model.pt",
        record=RUN_DIR + "/run.yaml",
        history=RUN_DIR + "/train_log.csv",
    params:
        # Snakemake re-runs a finished job when the params that determine its numbers change.
        run=lambda w: dmlsynth_config.run_params(CFG, w.dataset, w.method, w.loss, int(w.seed)),
        run_dir=lambda w, output: str(Path(output.embeddings).parent),
        synthetic=lambda w, input: ["--synthetic-manifest", input.synthetic[0]] if input.synthetic else [],
    log:
        LOGS + "/train/{dataset}/{method}/{loss}/seed{seed}.log",
    threads: dataset_threads
    resources:
        mem_mb=dataset_resource("mem_mb", 2000),
        runtime=dataset_resource("runtime", 60),
        gpu=dataset_resource("gpu", 0),
    shell:
        "{PY:q} -m dmlsynth train --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --method {wildcards.method:q} --loss {wildcards.loss:q} --seed {wildcards.seed:q}"
        " --manifest {input.manifest:q} {params.synthetic:q} --run-dir {params.run_dir:q}"
        " --threads {threads} > {log:q} 2>&1"
