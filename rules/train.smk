# Stage 3: one training job per dataset x method x loss x seed.


def synthetic_manifest(wildcards):
    """Data-level methods (BLenDeR and its ablations) train on real + generated images."""
    image_set = registry.METHODS[run_params(wildcards)["method"]].synthetic_images
    return [] if image_set is None else [LAYOUT.image_set_manifest(wildcards.dataset, image_set)]


def resized_copy(wildcards):
    """Photo datasets are read through their resized copy (dataset_settings.<dataset>.cache_short_side)."""
    return [LAYOUT.resized_index(wildcards.dataset)] if cache_short_side(wildcards) else []


rule train:
    input:
        manifest=LAYOUT.manifest(),
        synthetic=synthetic_manifest,
        resized=resized_copy,
    output:
        embeddings=RUN.embeddings,
        model=RUN.model,
        record=RUN.record,
        history=RUN.history,
        # With validation classes: the test embeddings at the last epoch (embeddings.npz holds
        # those of the epoch chosen on the validation classes).
        **({"last_epoch": RUN.last_epoch_embeddings} if VALIDATION else {}),
    params:
        # Snakemake re-runs a finished job when anything that changes its numbers changes: the
        # resolved params, the digest of the code the run executes, and the thread count.
        run=run_params,
        code=lambda w: provenance.run_code_digest(run_params(w)),
        # The torch thread count is the configured one (dataset_settings.<d>.resources.threads), even if
        # Snakemake gives the job fewer cores: float reductions, and so the numbers, depend on it.
        threads=dataset_threads,
        run_dir=lambda w, output: str(Path(output.embeddings).parent),
        synthetic=lambda w, input: ["--synthetic-manifest", input.synthetic[0]] if input.synthetic else [],
    log:
        LAYOUT.log("train", "{dataset}", "{method}", "{loss}", "seed{seed}"),
    threads: dataset_threads
    resources:
        **job_resources(
            mem_mb=dataset_resource("mem_mb", 2000),
            runtime=dataset_resource("runtime", 60),
            gpu=dataset_resource("gpu", 0),
        ),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth train --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --method {wildcards.method:q} --loss {wildcards.loss:q} --seed {wildcards.seed:q}"
        " --manifest {input.manifest:q} {params.synthetic:q} --run-dir {params.run_dir:q}"
        " --threads {params.threads} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"
