# Stage 2: BLenDeR generation (docs/methods.md): prompts -> embedded generator (digits) ->
# one generate and one filter job per dataset x training class -> one manifest per image set
# (the kept images) -> quality report.
# Runs only when a configured method trains with generated images (registry: synthetic_images).
from dmlsynth.generation import settings as generation


wildcard_constraints:
    image_set="|".join(generation.IMAGE_SETS),
    class_index=r"\d+",


IMAGE_SETS = JOBS.image_sets()
GENERATION_DATASETS = CFG["datasets"] if IMAGE_SETS else []
# A prompts job runs a captioning model for some dataset (otherwise it reads attribute files: seconds).
PROMPTS_CAPTIONED = any(JOBS.prompts(d).params["prompts"]["source"] == "captions" for d in GENERATION_DATASETS)

PROMPTS = job_of("prompts", "dataset")
TRAIN_GENERATOR = job_of("train_generator", "dataset")
GENERATE = job_of("generate", "dataset", "class_index")
FILTER = job_of("filter_generated", "dataset", "class_index")
MERGE = job_of("merge_generated", "dataset", "image_set")
REPORT = JOBS.generation_report()


rule prompts:
    input:
        unpack(lambda w: PROMPTS(w).inputs),
    output:
        # update: Snakemake keeps the file for the job, which keeps a hand-edited one (dmlsynth.generation.prompts).
        prompts=update(LAYOUT.prompts()),
    params:
        # Attributes or captions (which captioner, how many images, drawn with the generation seed).
        **record_params(PROMPTS),
    log:
        LAYOUT.log("prompts", "{dataset}"),
    benchmark:
        LAYOUT.benchmark("prompts", "{dataset}"),
    priority: CRITICAL_PATH
    threads: 1
    resources:
        **record_resources(PROMPTS, gpu=True),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth prompts --job {params.job:jsonq} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule train_generator:
    input:
        unpack(lambda w: TRAIN_GENERATOR(w).inputs),
    output:
        model=directory(LAYOUT.generator_dir()),
    params:
        # Re-trained when anything that changes its weights changes: settings, device, thread count, code.
        **record_params(TRAIN_GENERATOR),
    log:
        LAYOUT.log("train_generator", "{dataset}"),
    benchmark:
        LAYOUT.benchmark("train_generator", "{dataset}"),
    priority: CRITICAL_PATH
    threads: lambda w: TRAIN_GENERATOR(w).threads
    resources:
        **record_resources(TRAIN_GENERATOR, gpu=True),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth train-generator --job {params.job:jsonq} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule generate:
    input:
        # The manifest, the prompts, the embedded generator or the class's fine-tuned weights.
        unpack(lambda w: GENERATE(w).inputs),
    output:
        # Written last: a class whose part exists is complete and is not redone.
        part=LAYOUT.generated_part(),
    params:
        # What a class's images depend on: a new batch size or memory budget regenerates nothing.
        **record_params(GENERATE),
    log:
        LAYOUT.log("generate", "{dataset}", "class{class_index}"),
    benchmark:
        LAYOUT.benchmark("generate", "{dataset}", "class{class_index}"),
    priority: CRITICAL_PATH
    threads: lambda w: GENERATE(w).threads
    resources:
        # Stable Diffusion jobs take a whole GPU; the embedded generator is small enough to share one.
        **record_resources(GENERATE, gpu=True),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth generate --job {params.job:jsonq} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule filter_generated:
    input:
        unpack(lambda w: FILTER(w).inputs),
    output:
        part=LAYOUT.filtered_part(),
    params:
        # Re-run when what scores or keeps an image changes (not the generator's speed settings).
        **record_params(FILTER),
    log:
        LAYOUT.log("filter_generated", "{dataset}", "class{class_index}"),
    benchmark:
        LAYOUT.benchmark("filter_generated", "{dataset}", "class{class_index}"),
    priority: CRITICAL_PATH
    threads: 1
    resources:
        # CLIP scoring takes a GPU when generation has one; the fidelity classifier runs on the CPU.
        **record_resources(FILTER, gpu=True),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth filter-generated --job {params.job:jsonq} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule merge_generated:
    input:
        unpack(lambda w: MERGE(w).inputs),
    output:
        manifest=LAYOUT.image_set_manifest(),
    params:
        **record_params(MERGE),
    log:
        LAYOUT.log("merge_generated", "{dataset}", "{image_set}"),
    benchmark:
        LAYOUT.benchmark("merge_generated", "{dataset}", "{image_set}"),
    priority: CRITICAL_PATH
    threads: 1
    resources:
        **record_resources(MERGE),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth merge-generated --job {params.job:jsonq} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule generation_report:
    # The job finds every file below through dmlsynth.layout, as these inputs do.
    input:
        **REPORT.inputs,
    output:
        table=report(LAYOUT.generation_csv(), caption="../report/generation.rst", category="Generation"),
        figures=[
            report(LAYOUT.generated_grid(d), caption="../report/generated.rst", category="Generation")
            for d in GENERATION_DATASETS
        ],
    params:
        **record_params(lambda w: REPORT),
    log:
        REPORT.log,
    benchmark:
        LAYOUT.benchmark("generation_report"),
    priority: CRITICAL_PATH
    # Photos: processes decoding them for the feature network (Snakemake lowers this to --cores).
    threads: REPORT.threads
    resources:
        **record_resources(lambda w: REPORT, gpu=True),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth generation-report --job {params.job:jsonq} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"
