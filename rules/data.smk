# Stage 1: download / extract a dataset and write its manifest (the completeness marker).


rule prepare_data:
    output:
        manifest=LAYOUT.manifest(),
    log:
        LAYOUT.log("prepare_data", "{dataset}"),
    threads: 1
    resources:
        **job_resources(mem_mb=4000, runtime=240),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth prepare-data --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q} 2>&1 | tee -a {log:q}.tries >{log:q}"


# Stage 1b: the resized JPEG copy of a photo dataset that training reads (dmlsynth.data.image_cache).
# Runs again when the dataset is prepared again (a newer manifest) or cache_short_side changes;
# copies of unchanged source images are reused.
def cache_short_side(wildcards):
    return dmlsynth_config.dataset_settings(CFG, wildcards.dataset)["cache_short_side"]


rule cache_images:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        index=LAYOUT.resized_index(),
    params:
        short_side=cache_short_side,
        code=lambda w: provenance.code_digest([pipeline.CACHE_MODULE]),
    log:
        LAYOUT.log("cache_images", "{dataset}"),
    threads: 8
    resources:
        **job_resources(mem_mb=4000, runtime=60),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth cache-images --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --manifest {input.manifest:q} --threads {threads} 2>&1 | tee -a {log:q}.tries >{log:q}"
