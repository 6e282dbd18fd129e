# Stage 3: one training job per dataset x method x loss x seed (and the controls, dmlsynth.resolve.runs).
TRAIN = job_of("train", "dataset", "method", "loss", "seed")


rule train:
    input:
        # The manifest, the method's generated image set, a photo dataset's resized copy.
        unpack(lambda w: TRAIN(w).inputs),
    output:
        embeddings=RUN.embeddings,
        model=RUN.model,
        record=RUN.record,
        history=RUN.history,
        # With validation classes: the test embeddings at the last epoch (embeddings.npz holds
        # those of the epoch chosen on the validation classes).
        **({"last_epoch": RUN.last_epoch_embeddings} if JOBS.validation else {}),
    params:
        # Re-run when anything that changes the numbers changes: the resolved params, the digest of the
        # code the run executes, the thread count, the device kind (dmlsynth.jobs.Job.identity).
        **record_params(TRAIN),
    log:
        LAYOUT.log("train", "{dataset}", "{method}", "{loss}", "seed{seed}"),
    benchmark:
        LAYOUT.benchmark("train", "{dataset}", "{method}", "{loss}", "seed{seed}"),
    priority: on_critical_path(TRAIN)
    # The torch thread count is the configured one (dataset_settings.<d>.resources.threads), even if
    # Snakemake gives the job fewer cores: float reductions, and so the numbers, depend on it.
    threads: lambda w: TRAIN(w).threads
    resources:
        **record_resources(TRAIN, gpu=True),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth train --job {params.job:jsonq} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"
