"""What a row of the results costs: training seconds per seed (every attempt), sampling seconds, GPU-hours.

One rule for every row, so the summary and the comparison report agree. A row's own cost is its training
runs (``train_seconds_per_seed``: the mean over its seeds; ``train_seconds_total``) and the sampling of its
own image set (``generation_seconds``); its ``gpu_hours`` are those seconds spent on a CUDA device / 3600
(0 for a row that ran on the CPU: the reports show it blank, see :func:`gpu_hours_text`). The generator's
training (or per-class fine-tuning) is shared by every image set of the dataset (``blender`` and
``sd_plain`` sample from one generator): ``generator_train_seconds`` and ``generator_gpu_hours`` carry it on
each row that uses it, and the reports show it once per dataset, counted in no row. A row whose generation
device is not recorded (a generation report of older code) counts as unknown.
"""

from __future__ import annotations

from typing import Any, Iterable

from dmlsynth import registry
from dmlsynth.errors import DmlsynthError


class CostError(DmlsynthError, ValueError):
    """A method trained on generated images, but their cost is not known."""


def is_cuda(device: Any) -> bool:
    return isinstance(device, str) and device.startswith("cuda")



def generation_cost(generation: Any, dataset: str, method: str) -> dict[str, float]:
    """Sampling seconds of the method's image set and the generator training (or fine-tuning) seconds.

    ``generation``: the rows of ``results/generation.csv`` (a pandas frame), or None when nothing was
    generated. Seconds count towards GPU-seconds when the report's ``device`` says CUDA.
    """
    image_set = registry.METHODS[method].synthetic_images if method in registry.METHODS else None
    if image_set is None:
        return {"generation_seconds": 0.0, "generator_train_seconds": 0.0, "gpu_seconds": 0.0, "generator_gpu_seconds": 0.0}
    if generation is None:
        raise CostError(
            f"method {method!r} trains on generated images, but no generation report was given: "
            f"pass --generation results/generation.csv"
        )
    rows = generation[(generation["dataset"] == dataset) & (generation["image_set"] == image_set)]
    if rows.empty:
        raise CostError(f"generation report has no row for dataset {dataset!r}, image set {image_set!r}: re-run generation_report")
    # An image set that mixes operators has a pooled 'all' row; a single-operator set has one row.
    row = rows[rows["operator"] == "all"].iloc[0] if (rows["operator"] == "all").any() else rows.iloc[0]
    sampling = float(row["seconds_per_image"]) * float(row["images"])
    train = float(row.get("generator_train_seconds", 0.0) or 0.0)
    # Sampled on CUDA, on the CPU, or (a report of older code, parts of both) not known.
    device = str(row.get("device")) if "device" in rows.columns else "unknown"
    on_gpu = 1.0 if device == "cuda" else 0.0 if device == "cpu" else float("nan")
    return {
        "generation_seconds": sampling, "generator_train_seconds": train,
        "gpu_seconds": sampling * on_gpu, "generator_gpu_seconds": train * on_gpu,
    }  # fmt: skip


def row_cost(runs: Iterable[Any], generation: Any, dataset: str, method: str) -> dict[str, Any]:
    """The cost of one row from its runs (``table.Run``: ``train_seconds``, ``device``) and the generation report."""
    runs = list(runs)
    seconds = [float(r.train_seconds) for r in runs]
    generated = generation_cost(generation, dataset, method)
    on_gpu = sum(s for r, s in zip(runs, seconds) if is_cuda(r.device))
    return {
        "train_device": ";".join(sorted({str(r.device) for r in runs})),
        "train_seconds_per_seed": sum(seconds) / len(seconds) if seconds else float("nan"),
        "train_seconds_total": sum(seconds),
        "generation_seconds": generated["generation_seconds"],
        "gpu_hours": (on_gpu + generated["gpu_seconds"]) / 3600,
        "generator_train_seconds": generated["generator_train_seconds"],
        "generator_gpu_hours": generated["generator_gpu_seconds"] / 3600,
    }


COLUMNS = (
    "train_device", "train_seconds_per_seed", "train_seconds_total", "generation_seconds", "gpu_hours",
    "generator_train_seconds", "generator_gpu_hours",
)  # fmt: skip


def gpu_hours_text(value: float, na: str = "n/a", digits: int = 2) -> str:
    """GPU-hours as the reports show them: blank where nothing ran on a GPU, ``na`` where unknown."""
    if value != value:  # NaN: the device of some part is not recorded
        return na
    return "" if value == 0 else f"{value:.{digits}f}"


def shared_generators(frame: Any, methods_column: str = "method") -> list[tuple[str, float, float, list[str]]]:
    """Per dataset, the shared generator's cost, once: (dataset, seconds, GPU-hours, the rows that use it)."""
    out = []
    for dataset, part in frame.groupby("dataset", sort=False):
        using = part[part["generator_train_seconds"].fillna(0) > 0]
        if len(using):
            names = list(dict.fromkeys(using[methods_column]))
            out.append((str(dataset), float(using["generator_train_seconds"].max()), float(using["generator_gpu_hours"].max()), names))
    return out


def shared_generator_lines(frame: Any) -> list[str]:
    """The markdown sentence(s) that state the shared generator's cost once per dataset."""
    lines = []
    for dataset, seconds, hours, names in shared_generators(frame):
        gpu = gpu_hours_text(hours)
        lines.append(
            f"Generator of the {dataset} images, used by {', '.join(f'`{n}`' for n in names)}: {seconds:,.0f} s of "
            f"training{f' ({gpu} GPU-h)' if gpu else ''}, stated here once and in no row's cost."
        )
    return lines
