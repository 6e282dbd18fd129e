# Stage 2a: per-class fine-tuning of Stable Diffusion (docs/methods.md §7): one job per dataset x
# training class trains LoRA weights and/or a textual-inversion token on that class's real training
# images; the class's generate job loads them. Only where generation.<dataset>.fine_tuning.method
# is not none (config/paper.yaml); no job otherwise.
# (fine_tunes and fine_tuned_class, the generate job's input, are in rules/generate.smk.)


def fine_tuning_identity(wildcards):
    """What the weights depend on: the fine-tuning settings, model, seed and device (not checkpoint_every)."""
    settings = generation_settings(wildcards)
    tuning = {k: v for k, v in settings["fine_tuning"].items() if k != "checkpoint_every"}
    return {"fine_tuning": tuning, **{k: settings[k] for k in ("model_id", "seed", "device")}}


rule fine_tune:
    input:
        manifest=LAYOUT.manifest(),
        # The captions: the class's prompts (with its token when textual inversion is on).
        prompts=rules.prompts.output.prompts,
    output:
        # Snakemake clears the folder before the job; the checkpoint lies outside it, so a killed job resumes.
        weights=directory(LAYOUT.fine_tuned_dir()),
    params:
        settings=fine_tuning_identity,
        validation_classes=lambda w: split.validation_class_count(CFG, w.dataset),
        code=lambda w: provenance.code_digest(["dmlsynth.generation.fine_tuning"]),
        checkpoint=LAYOUT.fine_tuning_checkpoint(),
    log:
        LAYOUT.log("fine_tune", "{dataset}", "class{class_index}"),
    threads: lambda w: generation_settings(w)["threads"]
    resources:
        **job_resources(mem_mb=16000, runtime=120, gpu=generation_gpus),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth fine-tune --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --class-index {wildcards.class_index:q} --manifest {input.manifest:q} --prompts {input.prompts:q}"
        " --out-dir {output.weights:q} --checkpoint {params.checkpoint:q}"
        " --threads {threads} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"
