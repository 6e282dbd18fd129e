"""Figures of the results that need every run: the training loss of each method, mean over its seeds.

Written by the table job (:func:`dmlsynth.table.write_table`) as a PNG, which ``dvc plots show`` shows
offline (DVC's data plots need vega from a CDN) and the Snakemake report can embed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from dmlsynth.errors import DmlsynthError
from dmlsynth.io import save_figure
from dmlsynth.layout import RunFolder


class FigureError(DmlsynthError, ValueError):
    """A run lacks what a figure draws; the message names the run and the job that writes it."""


def training_loss_curves(runs: Sequence) -> pd.DataFrame:
    """Per dataset, loss, method (the table's row name) and epoch: the mean, lowest and highest training
    loss over the row's seeds, and how many seeds there are. ``runs``: :class:`dmlsynth.table.Run`."""
    frames = []
    for run in runs:
        log = Path(RunFolder(str(run.folder)).history)
        try:
            history = pd.read_csv(log, usecols=["epoch", "loss"])
        except (OSError, ValueError) as exc:
            raise FigureError(f"cannot read the training log {log} ({exc}); train the run again (its training job writes it)") from exc
        frames.append(history.assign(dataset=run.dataset, loss_name=run.loss, method=run.method, seed=run.seed))
    every = pd.concat(frames, ignore_index=True)
    order = list(dict.fromkeys(zip(every["dataset"], every["loss_name"], every["method"])))
    curves = (
        every.groupby(["dataset", "loss_name", "method", "epoch"], sort=False)["loss"]
        .agg(mean="mean", low="min", high="max", seeds="count")
        .reset_index()
        .rename(columns={"loss_name": "loss"})
    )
    rank = {key: i for i, key in enumerate(order)}
    curves["_order"] = [rank[key] for key in zip(curves["dataset"], curves["loss"], curves["method"])]
    return curves.sort_values(["_order", "epoch"], kind="stable").drop(columns="_order").reset_index(drop=True)


def plot_training_loss(runs: Sequence, out: str | Path, controls: Sequence[str] = ()) -> Path:
    """One panel per dataset x loss: each method's mean training loss per epoch over its seeds (a band from
    the lowest to the highest seed), one colour per method; ``controls`` (rows without synthesis) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = training_loss_curves(runs)
    groups = list(curves.groupby(["dataset", "loss"], sort=False))
    methods = list(dict.fromkeys(curves["method"]))
    palette = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    colours = {method: palette(i % palette.N) for i, method in enumerate(methods)}
    columns = min(2, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns + 2.2, 3.6 * rows), squeeze=False)
    for ax, ((dataset, loss), part) in zip(axes.flat, groups):
        for method, curve in part.groupby("method", sort=False):
            dashed = method in controls
            ax.plot(curve["epoch"], curve["mean"], color=colours[method], linestyle="--" if dashed else "-",
                    marker="." if len(curve) <= 30 else None, linewidth=1.4,
                    label=f"{method} ({int(curve['seeds'].max())} seeds)")  # fmt: skip
            if curve["seeds"].max() > 1:
                ax.fill_between(curve["epoch"], curve["low"], curve["high"], color=colours[method], alpha=0.12, linewidth=0)
        ax.set_title(f"{dataset} · {loss}: training loss per epoch", fontsize=10, loc="left")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss (mean over seeds; band: lowest–highest seed)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    seen: dict[str, object] = {}
    for ax in list(axes.flat)[: len(groups)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(seen.values(), seen.keys(), loc="center right", fontsize=8, frameon=False, title="method (dashed: control)")
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (6.5 * columns + 2.2), 1))
    return save_figure(fig, out)

