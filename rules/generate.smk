# Stage 2: BLenDeR generation (METHODS.md §7): prompts -> embedded generator (digits) ->
# one job per dataset x training class -> one manifest per image set -> quality report.
# Runs only when a configured method trains with generated images (registry: synthetic_images).
from dmlsynth.generate import settings as generation

GENERATED = DATA + "/{dataset}/generated"


wildcard_constraints:
    image_set="|".join(generation.IMAGE_SETS),
    class_index=r"\d+",


def generation_settings(wildcards):
    return generation.generation_settings(CFG, wildcards.dataset)


def generator_dir(wildcards):
    """The trained embedded generator (a folder) when the dataset uses it; Stable Diffusion needs none."""
    if generation_settings(wildcards)["generator"] == "embedded":
        return [DATA + f"/{wildcards.dataset}/generator"]
    return []


def class_parts(wildcards):
    count = registry.DATASETS[wildcards.dataset].train_classes
    return [GENERATED.format(dataset=wildcards.dataset) + f"/parts/class{i}.csv" for i in range(count)]


def generation_gpus(wildcards):
    settings = generation_settings(wildcards)
    return int(settings["generator"] == "stable-diffusion" and settings["device"] != "cpu")


GENERATED_MANIFESTS = [
    GENERATED.format(dataset=d) + f"/{s}/manifest.csv" for d in CFG["datasets"] for s in generation.image_sets(CFG)
]


rule prompts:
    input:
        manifest=DATA + "/{dataset}/manifest.csv",
    output:
        prompts=DATA + "/{dataset}/prompts.yaml",
    params:
        search=DATA + "/raw/{dataset}",
    log:
        LOGS + "/prompts/{dataset}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY:q} -m dmlsynth prompts --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --manifest {input.manifest:q} --search-dir {params.search:q} --out {output.prompts:q} > {log:q} 2>&1"


rule train_generator:
    input:
        manifest=DATA + "/{dataset}/manifest.csv",
    output:
        model=directory(DATA + "/{dataset}/generator"),
    params:
        # Re-trained when its settings change.
        settings=lambda w: {k: generation_settings(w)[k] for k in ("embedded", "seed")},
    log:
        LOGS + "/train_generator/{dataset}.log",
    threads: lambda w: generation_settings(w)["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{PY:q} -m dmlsynth train-generator --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --manifest {input.manifest:q} --out-dir {output.model:q} --threads {threads} > {log:q} 2>&1"


rule generate:
    input:
        manifest=DATA + "/{dataset}/manifest.csv",
        prompts=DATA + "/{dataset}/prompts.yaml",
        generator=generator_dir,
    output:
        # Written last: a class whose part exists is complete and is not redone.
        part=GENERATED + "/parts/class{class_index}.csv",
    params:
        settings=generation_settings,
        image_sets=lambda w: generation.image_sets(CFG),
        generator=lambda w, input: ["--generator-dir", input.generator[0]] if input.generator else [],
        generated=GENERATED,
    log:
        LOGS + "/generate/{dataset}/class{class_index}.log",
    threads: lambda w: generation_settings(w)["threads"]
    resources:
        mem_mb=lambda w: 4000 if generation_settings(w)["generator"] == "embedded" else 16000,
        runtime=120,
        gpu=generation_gpus,
    shell:
        "{PY:q} -m dmlsynth generate --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --class-index {wildcards.class_index:q} --manifest {input.manifest:q} --prompts {input.prompts:q}"
        " {params.generator:q} --generated-dir {params.generated:q} --out-part {output.part:q}"
        " --threads {threads} > {log:q} 2>&1"


rule merge_generated:
    input:
        parts=class_parts,
    output:
        manifest=GENERATED + "/{image_set}/manifest.csv",
    log:
        LOGS + "/merge_generated/{dataset}/{image_set}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "{PY:q} -m dmlsynth merge-generated --image-set {wildcards.image_set:q} --out {output.manifest:q}"
        " {input.parts:q} > {log:q} 2>&1"


rule generation_report:
    input:
        manifests=GENERATED_MANIFESTS,
    output:
        table=report(RESULTS + "/generation.csv", caption="../report/generation.rst", category="Generation"),
        figures=[
            report(RESULTS + f"/figures/generated_{d}.png", caption="../report/generated.rst", category="Generation")
            for d in CFG["datasets"]
        ],
    params:
        figure_dir=RESULTS + "/figures",
    log:
        LOGS + "/generation_report.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PY:q} -m dmlsynth generation-report --config {EFFECTIVE_CONFIG:q} --out-csv {output.table:q}"
        " --figure-dir {params.figure_dir:q} {input.manifests:q} > {log:q} 2>&1"


if GENERATED_MANIFESTS:
    TABLE_EXTRA_INPUTS.append(RESULTS + "/generation.csv")
