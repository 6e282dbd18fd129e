# Stage 1: download / extract a dataset and write its manifest (the completeness marker).
PREPARE = job_of("prepare_data", "dataset")


rule prepare_data:
    output:
        manifest=LAYOUT.manifest(),
    params:
        **record_params(PREPARE),
    log:
        LAYOUT.log("prepare_data", "{dataset}"),
    benchmark:
        LAYOUT.benchmark("prepare_data", "{dataset}"),
    threads: lambda w: PREPARE(w).threads
    resources:
        **record_resources(PREPARE),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth prepare-data --job {params.job:jsonq} 2>&1 | tee -a {log:q}.tries >{log:q}"


# Stage 1b: the resized JPEG copy of a photo dataset that training reads (dmlsynth.data.image_cache).
# Runs again when the dataset is prepared again (a newer manifest) or cache_short_side changes;
# copies of unchanged source images are reused.
CACHE = job_of("cache_images", "dataset")


rule cache_images:
    input:
        unpack(lambda w: CACHE(w).inputs),
    output:
        index=LAYOUT.resized_index(),
    params:
        **record_params(CACHE),
    log:
        LAYOUT.log("cache_images", "{dataset}"),
    benchmark:
        LAYOUT.benchmark("cache_images", "{dataset}"),
    threads: lambda w: CACHE(w).threads
    resources:
        **record_resources(CACHE),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth cache-images --job {params.job:jsonq} 2>&1 | tee -a {log:q}.tries >{log:q}"
