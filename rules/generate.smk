# Stage 2: BLenDeR generation (docs/methods.md): prompts -> embedded generator (digits) ->
# one generate and one filter job per dataset x training class -> one manifest per image set
# (the kept images) -> quality report.
# Runs only when a configured method trains with generated images (registry: synthetic_images).
from dmlsynth.generation import fine_tuning
from dmlsynth.generation import settings as generation


wildcard_constraints:
    image_set="|".join(generation.IMAGE_SETS),
    class_index=r"\d+",


def generation_settings(wildcards):
    return generation.generation_settings(CFG, wildcards.dataset)


def uses_embedded_generator(dataset):
    return generation.generation_settings(CFG, dataset)["generator"] == "embedded"


def generator_dir(wildcards):
    """The trained embedded generator (a folder) when the dataset uses it; Stable Diffusion needs none."""
    return [LAYOUT.generator_dir(wildcards.dataset)] if uses_embedded_generator(wildcards.dataset) else []


def fine_tunes(dataset):
    return fine_tuning.fine_tunes(generation.generation_settings(CFG, dataset))


def fine_tuned_class(wildcards):
    """The class's fine-tuned weights (rules/fine_tune.smk) when its dataset fine-tunes Stable Diffusion."""
    return [LAYOUT.fine_tuned_dir(wildcards.dataset, wildcards.class_index)] if fine_tunes(wildcards.dataset) else []


def filtered_parts(wildcards):
    # Training classes only: validation classes (dmlsynth.data.split) get no generated images.
    count = split.training_class_count(CFG, wildcards.dataset)
    return [LAYOUT.filtered_part(wildcards.dataset, i) for i in range(count)]


def captions_wanted(wildcards):
    """The prompts job runs a captioning model (generation.<dataset>.prompts.source: captions)."""
    return generation_settings(wildcards)["prompts"]["source"] == "captions"


def generation_gpus(wildcards):
    """Stable Diffusion jobs take a whole GPU; the embedded generator is small enough to share one."""
    settings = generation_settings(wildcards)
    return int(settings["generator"] == "stable-diffusion" and settings["device"] != "cpu")


def image_settings(wildcards):
    """What a class's images depend on: a new batch size or memory budget regenerates nothing."""
    return generation.image_settings(generation_settings(wildcards))


IMAGE_SETS = generation.image_sets(CFG)
GENERATION_DATASETS = CFG["datasets"] if IMAGE_SETS else []
# A prompts job runs a captioning model for some dataset (otherwise it reads attribute files: seconds).
PROMPTS_CAPTIONED = any(
    generation.generation_settings(CFG, d)["prompts"]["source"] == "captions" for d in GENERATION_DATASETS
)
# The report runs a ResNet-50 over the photos of photo datasets (on their generation device).
REPORT_PHOTOS = [d for d in GENERATION_DATASETS if registry.DATASETS[d].image_mode != "L"]


rule prompts:
    input:
        manifest=LAYOUT.manifest(),
    output:
        # update: Snakemake keeps the file for the job, which keeps a hand-edited one (dmlsynth.generation.prompts).
        prompts=update(LAYOUT.prompts()),
    params:
        search=LAYOUT.raw_dir(),
        code=lambda w: provenance.code_digest(["dmlsynth.generation.prompts"]),
        validation_classes=lambda w: split.validation_class_count(CFG, w.dataset),
        # Attributes or captions (which captioner, how many images, drawn with the generation seed).
        source=lambda w: {"prompts": generation_settings(w)["prompts"], "seed": generation_settings(w)["seed"]},
    log:
        LAYOUT.log("prompts", "{dataset}"),
    threads: 1
    resources:
        **job_resources(
            mem_mb=lambda w: 8000 if captions_wanted(w) else 2000,
            runtime=30,
            gpu=lambda w: int(captions_wanted(w) and generation_settings(w)["device"] != "cpu"),
        ),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth prompts --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --manifest {input.manifest:q} --search-dir {params.search:q} --out {output.prompts:q}"
        " --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule train_generator:
    input:
        manifest=LAYOUT.manifest(),
    output:
        model=directory(LAYOUT.generator_dir()),
    params:
        # Re-trained when anything that changes its weights changes: settings, device, thread count, code.
        settings=lambda w: {k: generation_settings(w)[k] for k in ("embedded", "seed", "device")},
        threads=lambda w, threads: threads,
        code=lambda w: provenance.code_digest(["dmlsynth.generation.embedded"]),
        validation_classes=lambda w: split.validation_class_count(CFG, w.dataset),
    log:
        LAYOUT.log("train_generator", "{dataset}"),
    # The generator is on the critical path of the default workflow: start it before the training runs.
    priority: 10
    threads: lambda w: generation_settings(w)["threads"]
    resources:
        **job_resources(mem_mb=4000, runtime=60),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth train-generator --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --manifest {input.manifest:q} --out-dir {output.model:q} --threads {threads} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule generate:
    input:
        manifest=LAYOUT.manifest(),
        prompts=rules.prompts.output.prompts,
        generator=generator_dir,
        fine_tuned=fine_tuned_class,
    output:
        # Written last: a class whose part exists is complete and is not redone.
        part=LAYOUT.generated_part(),
    params:
        settings=image_settings,
        image_sets=IMAGE_SETS,
        validation_classes=lambda w: split.validation_class_count(CFG, w.dataset),
        code=lambda w: provenance.code_digest(["dmlsynth.generation.run", "dmlsynth.generation.stable_diffusion"]),
        generator=lambda w, input: ["--generator-dir", input.generator[0]] if input.generator else [],
        fine_tuned=lambda w, input: ["--fine-tuned-dir", input.fine_tuned[0]] if input.fine_tuned else [],
        # The folder of the images: output.part is {generated}/<parts|filtered>/class<i>.csv.
        generated=lambda w, output: str(Path(output.part).parent.parent),
    log:
        LAYOUT.log("generate", "{dataset}", "class{class_index}"),
    threads: lambda w: generation_settings(w)["threads"]
    resources:
        **job_resources(
            mem_mb=lambda w: 4000 if generation_settings(w)["generator"] == "embedded" else 16000,
            runtime=120,
            gpu=generation_gpus,
        ),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth generate --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --class-index {wildcards.class_index:q} --manifest {input.manifest:q} --prompts {input.prompts:q}"
        " {params.generator:q} {params.fine_tuned:q} --generated-dir {params.generated:q} --out-part {output.part:q}"
        " --threads {threads} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"


def filter_gpus(wildcards):
    """CLIP scoring takes a GPU when generation has one; the fidelity classifier runs on the CPU."""
    settings = generation_settings(wildcards)
    return int(generation.filter_scorer(settings) == "clip" and settings["device"] != "cpu")


rule filter_generated:
    input:
        manifest=LAYOUT.manifest(),
        prompts=rules.prompts.output.prompts,
        part=rules.generate.output.part,
    output:
        part=LAYOUT.filtered_part(),
    params:
        # Re-run when what scores or keeps an image changes (not the generator's speed settings).
        settings=lambda w: {
            "filter": generation_settings(w)["filter"],
            "scorer": generation.filter_scorer(generation_settings(w)),
            "budget": generation_settings(w)["images_per_class"],
        },
        code=lambda w: provenance.code_digest(["dmlsynth.generation.filtering"]),
        # The folder of the images: output.part is {generated}/<parts|filtered>/class<i>.csv.
        generated=lambda w, output: str(Path(output.part).parent.parent),
    log:
        LAYOUT.log("filter_generated", "{dataset}", "class{class_index}"),
    threads: 1
    resources:
        **job_resources(
            mem_mb=lambda w: 8000 if generation.filter_scorer(generation_settings(w)) == "clip" else 2000,
            runtime=30,
            gpu=filter_gpus,
        ),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth filter-generated --config {EFFECTIVE_CONFIG:q} --dataset {wildcards.dataset:q}"
        " --manifest {input.manifest:q} --prompts {input.prompts:q} --part {input.part:q}"
        " --generated-dir {params.generated:q} --out {output.part:q}"
        " --threads {threads} --gpus {resources.gpu} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule merge_generated:
    input:
        parts=filtered_parts,
    output:
        manifest=LAYOUT.image_set_manifest(),
    log:
        LAYOUT.log("merge_generated", "{dataset}", "{image_set}"),
    threads: 1
    resources:
        **job_resources(mem_mb=1000, runtime=5),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth merge-generated --image-set {wildcards.image_set:q} --out {output.manifest:q}"
        " {input.parts:q} 2>&1 | tee -a {log:q}.tries >{log:q}"


rule generation_report:
    # The job finds every file below through dmlsynth.layout, as these inputs do.
    input:
        manifests=[LAYOUT.manifest(d) for d in GENERATION_DATASETS],
        image_sets=[LAYOUT.image_set_manifest(d, s) for d in GENERATION_DATASETS for s in IMAGE_SETS],
        filtered=[
            LAYOUT.filtered_part(d, i) for d in GENERATION_DATASETS for i in range(split.training_class_count(CFG, d))
        ],
        generators=[LAYOUT.generator_dir(d) for d in GENERATION_DATASETS if uses_embedded_generator(d)],
        # Their fine-tuning time is part of the images' cost.
        fine_tuned=[
            LAYOUT.fine_tuned_dir(d, i)
            for d in GENERATION_DATASETS
            if fine_tunes(d)
            for i in range(split.training_class_count(CFG, d))
        ],
    output:
        table=report(LAYOUT.generation_csv(), caption="../report/generation.rst", category="Generation"),
        figures=[
            report(LAYOUT.generated_grid(d), caption="../report/generated.rst", category="Generation")
            for d in GENERATION_DATASETS
        ],
    params:
        code=provenance.code_digest(
            ["dmlsynth.generation.quality", "dmlsynth.generation.filtering", "dmlsynth.generation.fine_tuning"]
        ),
    log:
        LAYOUT.log("generation_report"),
    # Photos: processes decoding them for the feature network (Snakemake lowers this to --cores).
    threads: 8 if REPORT_PHOTOS else 1
    resources:
        **job_resources(
            mem_mb=4000,
            runtime=30,
            gpu=int(any(generation.generation_settings(CFG, d)["device"] != "cpu" for d in REPORT_PHOTOS)),
        ),
    conda:
        "../environment.yml"
    shell:
        "dmlsynth generation-report --config {EFFECTIVE_CONFIG:q} --threads {threads} 2>&1 | tee -a {log:q}.tries >{log:q}"
