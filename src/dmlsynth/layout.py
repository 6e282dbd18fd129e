"""Where every file of the project lives — the one place that spells a path.

The Snakemake rules, the DVC stages (:mod:`dmlsynth.pipeline`) and the code
that reads or writes a file all ask this module; no other module writes a
file name of the layout. Torch-free: the Snakefile imports it.

Every method returns a string. Arguments default to Snakemake wildcards, so
``Layout(...).manifest()`` is the pattern ``{data}/{dataset}/manifest.csv``
a rule declares and ``.manifest("digits")`` the concrete file::

    {data}/{dataset}/manifest.csv                 prepared dataset (written last: its completeness marker)
    {data}/{dataset}/resized/index.csv            the resized JPEG copy of a photo dataset (index written last)
    {data}/raw/{dataset}/                         downloads and files placed by hand
    {data}/{dataset}/prompts.yaml                 BLenDeR's editable per-class prompts
    {data}/{dataset}/prompts.rebuilt.yaml         new prompts that were not written over an edited prompts.yaml
    {data}/{dataset}/generator/                   the trained embedded generator (+ generator.json)
    {data}/{dataset}/fine_tuned/class{i}/        one class's fine-tuned LoRA / textual-inversion weights
    {data}/{dataset}/fine_tuned/checkpoints/class{i}.pt   a fine-tuning job's checkpoint while it runs
    {data}/{dataset}/generated/parts/class{i}.csv one generation job's images (written last)
    {data}/{dataset}/generated/filtered/class{i}.csv the same rows with their filter score and status
    {data}/{dataset}/generated/{set}/manifest.csv an image set's manifest; its images in .../{set}/images/
    {results}/runs/{dataset}/{method}/{loss}/seed{seed}/   one training run (:class:`RunFolder`)
    {results}/summary.md, summary.csv             the results in brief (one row per dataset x method x loss)
    {results}/table.csv, table.json, metrics.json the full table, its JSON twin, DVC's headline metrics
    {results}/summary.html, table.html            the same as pages of their own, for the Snakemake report
    {results}/figures/                            recall chart, training loss, forest plots, sample grids
    {results}/comparison.csv, comparison.md       the comparison report (forest plots in figures/)
    {results}/comparison.html                     the same as a page (plots embedded), for the Snakemake report
    {results}/generation.csv                      quality of the generated images
    {logs}/{rule}/...log                          one log per job
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

# A prepared dataset's manifest: its presence means the dataset is complete.
MANIFEST = "manifest.csv"
PROMPTS = "prompts.yaml"
PROMPTS_REBUILT = "prompts.rebuilt.yaml"
GENERATOR = "generator"
GENERATOR_METADATA = "generator.json"
GENERATED = "generated"
# Per-class fine-tuning of Stable Diffusion (dmlsynth.generation.fine_tuning); the summary is written last.
FINE_TUNED = "fine_tuned"
FINE_TUNED_LORA = "lora.safetensors"
FINE_TUNED_EMBEDDING = "embedding.safetensors"
FINE_TUNING_SUMMARY = "fine_tuning.json"
IMAGES = "images"
# What dataset preparations leave next to the manifest (registry DatasetSpec.outputs name them).
EXTRACTED = "extracted"  # an archive's checked contents
CLASS_ATTRIBUTES = "class_attributes.csv"  # CUB's per-class attribute table (BLenDeR prompts)
# The resized JPEG copy training reads (dmlsynth.data.image_cache); its index is written last.
RESIZED = "resized"
RESIZED_INDEX = "index.csv"


RUN_RECORD = "run.yaml"


def comparison_html_of(report: str | Path) -> str:
    """The HTML page ``dmlsynth compare`` writes beside its markdown report (``comparison.md`` -> ``comparison.html``)."""
    return str(Path(report).with_suffix(".html"))


def forest_figure_name(dataset: str, loss: str) -> str:
    """File name of a forest plot in the figures folder (``dmlsynth compare --figure-dir``)."""
    return f"forest_{dataset}_{loss}.png"


def find_run_folders(*roots: str | Path) -> list[RunFolder]:
    """Every finished run folder (one with a run record) under ``roots``, sorted."""
    found = {p.parent for root in roots for p in Path(root).rglob(RUN_RECORD)}
    return [RunFolder(str(path)) for path in sorted(found)]


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run, ``{results}/runs/{dataset}/{method}/{loss}/seed{seed}``."""

    path: str

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    # Written by the training job.
    @property
    def embeddings(self) -> str:
        """Un-normalised test embeddings and labels (npz)."""
        return self.file("embeddings.npz")

    @property
    def last_epoch_embeddings(self) -> str:
        """Test embeddings and labels at the last epoch, when the reported epoch was chosen on validation classes."""
        return self.file("embeddings_last_epoch.npz")

    @property
    def model(self) -> str:
        return self.file("model.pt")

    @property
    def record(self) -> str:
        """run.yaml: resolved params, their hash, code version and digest, environment, wall time.
        Written last by the training job: a folder with a record holds a finished run."""
        return self.file(RUN_RECORD)

    @property
    def history(self) -> str:
        """Per-epoch training log (csv)."""
        return self.file("train_log.csv")

    @property
    def checkpoint(self) -> str:
        """Last finished epoch while a job runs (removed when the run is complete; not an output)."""
        return self.file("checkpoint.pt")

    @property
    def attempts(self) -> str:
        """The wall time of every attempt while a run is unfinished (removed when it is complete; not an output)."""
        return self.file("attempts.json")

    # Written by the evaluation job.
    @property
    def metrics(self) -> str:
        return self.file("metrics.json")

    @property
    def queries(self) -> str:
        """Per-query results behind the metrics (npz, see ``dmlsynth.metrics.PER_QUERY_FILE``)."""
        return self.file("queries.npz")

    @property
    def embedding_plot(self) -> str:
        return self.file("embeddings.png")

    @property
    def training_curve(self) -> str:
        return self.file("train_curve.png")

    def training_outputs(self, validation: bool = False) -> list[str]:
        """The training job's files (``validation``: the run chooses its epoch on validation classes)."""
        return [self.embeddings, *([self.last_epoch_embeddings] if validation else []), self.model, self.record, self.history]

    def evaluation_outputs(self) -> list[str]:
        return [self.metrics, self.queries, self.embedding_plot, self.training_curve]


@dataclass(frozen=True)
class TableFiles:
    """The results table's files in ``{results}``: the readable summary first."""

    summary_md: str  # one row per dataset x method x loss: R@1, MAP@R, the paired difference, its interval and Holm p, cost
    summary_csv: str  # the same numbers as CSV
    csv: str  # every column of the table
    json: str  # the table's and every run's numbers, nested
    headline: str  # R@1 per row (and its paired difference): DVC's metrics
    figure: str  # R@1 per method and its difference to the control
    training_loss: str  # each method's mean training loss per epoch (dmlsynth.figures), DVC's plot
    summary_html: str  # the summary as a page of its own, for the Snakemake report (dmlsynth.html_pages)
    table_html: str  # the full table as a page, for the Snakemake report

    @classmethod
    def under(cls, results: str) -> "TableFiles":
        return cls(
            summary_md=f"{results}/summary.md",
            summary_csv=f"{results}/summary.csv",
            csv=f"{results}/table.csv",
            json=f"{results}/table.json",
            headline=f"{results}/metrics.json",
            figure=f"{results}/figures/recall_at_1.png",
            training_loss=f"{results}/figures/training_loss.png",
            summary_html=f"{results}/summary.html",
            table_html=f"{results}/table.html",
        )

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class Layout:
    """The project's folders (``paths`` of params.yaml) and every file under them."""

    data: str
    results: str
    logs: str

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "Layout":
        paths = config["paths"]
        return cls(data=str(paths["data"]), results=str(paths["results"]), logs=str(paths["logs"]))

    def paths(self) -> dict[str, str]:
        """The ``paths`` block this layout was made of (``Layout.of({"paths": layout.paths()})`` is the same layout)."""
        return {"data": self.data, "results": self.results, "logs": self.logs}

    # Datasets ------------------------------------------------------------------------------
    def dataset_dir(self, dataset: str = "{dataset}") -> str:
        return f"{self.data}/{dataset}"

    def manifest(self, dataset: str = "{dataset}") -> str:
        return f"{self.dataset_dir(dataset)}/{MANIFEST}"

    def raw_dir(self, dataset: str = "{dataset}") -> str:
        return f"{self.data}/raw/{dataset}"

    def dataset_file(self, name: str, dataset: str = "{dataset}") -> str:
        """A file or folder a dataset's preparation leaves next to its manifest (registry ``outputs``)."""
        return f"{self.dataset_dir(dataset)}/{name}"

    def resized_dir(self, dataset: str = "{dataset}") -> str:
        """The resized JPEG copy of a photo dataset (``dataset_settings.<dataset>.cache_short_side`` > 0)."""
        return f"{self.dataset_dir(dataset)}/{RESIZED}"

    def resized_index(self, dataset: str = "{dataset}") -> str:
        """Each image's copy, written last: its presence means the copy is complete."""
        return f"{self.resized_dir(dataset)}/{RESIZED_INDEX}"

    # BLenDeR generation --------------------------------------------------------------------
    def prompts(self, dataset: str = "{dataset}") -> str:
        return f"{self.dataset_dir(dataset)}/{PROMPTS}"

    def prompts_rebuilt(self, dataset: str = "{dataset}") -> str:
        """Where the prompts job puts new prompts instead of overwriting a hand-edited prompts file."""
        return f"{self.dataset_dir(dataset)}/{PROMPTS_REBUILT}"

    def generator_dir(self, dataset: str = "{dataset}") -> str:
        return f"{self.dataset_dir(dataset)}/{GENERATOR}"

    def generator_metadata(self, dataset: str = "{dataset}") -> str:
        return f"{self.generator_dir(dataset)}/{GENERATOR_METADATA}"

    def fine_tuned_dir(self, dataset: str = "{dataset}", class_index: Any = "{class_index}") -> str:
        """One class's fine-tuned weights and ``fine_tuning.json`` (the fine_tune job's output folder)."""
        return f"{self.dataset_dir(dataset)}/{FINE_TUNED}/class{class_index}"

    def fine_tuning_checkpoint(self, dataset: str = "{dataset}", class_index: Any = "{class_index}") -> str:
        """A running fine-tuning job's checkpoint: outside its output folder, which Snakemake clears first."""
        return f"{self.dataset_dir(dataset)}/{FINE_TUNED}/checkpoints/class{class_index}.pt"

    def generated_dir(self, dataset: str = "{dataset}") -> str:
        return f"{self.dataset_dir(dataset)}/{GENERATED}"

    def generated_part(self, dataset: str = "{dataset}", class_index: Any = "{class_index}") -> str:
        """One generation job's rows (all image sets of one training class); written last."""
        return f"{self.generated_dir(dataset)}/parts/class{class_index}.csv"

    def filtered_part(self, dataset: str = "{dataset}", class_index: Any = "{class_index}") -> str:
        """One filter job's rows: every generated image of the class with its score and kept/rejected/unused."""
        return f"{self.generated_dir(dataset)}/filtered/class{class_index}.csv"

    def image_set_dir(self, dataset: str = "{dataset}", image_set: str = "{image_set}") -> str:
        """An image set's folder: its manifest and ``images/`` (manifest paths are relative to it)."""
        return f"{self.generated_dir(dataset)}/{image_set}"

    def image_set_manifest(self, dataset: str = "{dataset}", image_set: str = "{image_set}") -> str:
        return f"{self.image_set_dir(dataset, image_set)}/{MANIFEST}"

    def image_set_images(self, dataset: str = "{dataset}", image_set: str = "{image_set}") -> str:
        return f"{self.image_set_dir(dataset, image_set)}/{IMAGES}"

    # Training runs -------------------------------------------------------------------------
    def run(self, dataset: str = "{dataset}", method: str = "{method}", loss: str = "{loss}", seed: Any = "{seed}") -> RunFolder:
        return RunFolder(f"{self.results}/runs/{dataset}/{method}/{loss}/seed{seed}")

    def runs_dir(self) -> str:
        return f"{self.results}/runs"

    # Results -------------------------------------------------------------------------------
    def table_files(self) -> "TableFiles":
        """What the table job writes (:func:`dmlsynth.table.write_table`)."""
        return TableFiles.under(self.results)

    def table_csv(self) -> str:
        return self.table_files().csv

    def table_json(self) -> str:
        """Every number of the table and of every run, nested (machine-readable)."""
        return self.table_files().json

    def headline_metrics(self) -> str:
        """The few numbers ``dvc metrics show`` prints: R@1 and its paired difference per row."""
        return self.table_files().headline

    def summary_md(self) -> str:
        return self.table_files().summary_md

    def figures_dir(self) -> str:
        return f"{self.results}/figures"

    def recall_figure(self) -> str:
        return self.table_files().figure

    def table_outputs(self) -> list[str]:
        return self.table_files().all()

    def comparison_csv(self) -> str:
        """``dmlsynth compare``: one row per dataset x loss x method (statistics, published numbers, cost)."""
        return f"{self.results}/comparison.csv"

    def comparison_report(self) -> str:
        """The same as readable markdown, with the forest plots."""
        return f"{self.results}/comparison.md"

    def comparison_html(self) -> str:
        """The report as a page with its forest plots embedded, for the Snakemake report (beside the markdown)."""
        return comparison_html_of(self.comparison_report())

    def forest_figure(self, dataset: str = "{dataset}", loss: str = "{loss}") -> str:
        """Paired differences to baseline of one dataset x loss."""
        return f"{self.figures_dir()}/{forest_figure_name(dataset, loss)}"

    def comparison_outputs(self, groups: Sequence[tuple[str, str]]) -> list[str]:
        """What ``dmlsynth compare`` writes for these (dataset, loss) groups."""
        return [
            self.comparison_csv(), self.comparison_report(), self.comparison_html(),
            *(self.forest_figure(d, l) for d, l in groups),
        ]  # fmt: skip

    def generation_csv(self) -> str:
        return f"{self.results}/generation.csv"

    def generated_grid(self, dataset: str = "{dataset}") -> str:
        return f"{self.figures_dir()}/generated_{dataset}.png"

    def report_html(self) -> str:
        return f"{self.results}/report.html"

    # Logs ----------------------------------------------------------------------------------
    def log(self, rule: str, *parts: str) -> str:
        """``{logs}/{rule}/{parts...}.log``, e.g. ``log("train", "{dataset}", ..., "seed{seed}")``."""
        return "/".join([self.logs, rule, *parts]) + ".log" if parts else f"{self.logs}/{rule}.log"

    def benchmark(self, rule: str, *parts: str) -> str:
        """What Snakemake's ``benchmark:`` directive measures of the job logged at ``log(rule, *parts)``:
        ``{logs}/benchmarks/{rule}/{parts...}.tsv``, one row of wall seconds, max RSS and CPU time."""
        return "/".join([self.benchmarks(), rule, *parts]) + ".tsv" if parts else f"{self.benchmarks()}/{rule}.tsv"

    def benchmarks(self) -> str:
        """The folder of every job's benchmark file."""
        return f"{self.logs}/benchmarks"


# The workflow's own bookkeeping (not results): the merged config every job reads.
WORKFLOW_STATE = ".snakemake/dmlsynth"
