# Stage 2a: per-class fine-tuning of Stable Diffusion (docs/methods.md §7): one job per dataset x
# training class trains LoRA weights and/or a textual-inversion token on that class's real training
# images; the class's generate job loads them. Only where generation.<dataset>.fine_tuning.method
# is not none (config/paper.yaml); no job otherwise.
FINE_TUNE = job_of("fine_tune", "dataset", "class_index")


rule fine_tune:
    input:
        # The captions: the class's prompts (with its token when textual inversion is on).
        unpack(lambda w: FINE_TUNE(w).inputs),
    output:
        # Snakemake clears the folder before the job; the checkpoint lies outside it, so a killed job resumes.
        weights=directory(LAYOUT.fine_tuned_dir()),
    params:
        # What the weights depend on: the fine-tuning settings, model, seed (not checkpoint_every).
        **record_params(FINE_TUNE),
    log:
        LAYOUT.log("fine_tune", "{dataset}", "class{class_index}"),
    benchmark:
        LAYOUT.benchmark("fine_tune", "{dataset}", "class{class_index}"),
    priority: CRITICAL_PATH
    threads: lambda w: FINE_TUNE(w).threads
    resources:
        **record_resources(FINE_TUNE, gpu=True),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth fine-tune --job {params.job:jsonq} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"
