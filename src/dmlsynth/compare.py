"""The comparison report: does a method beat baseline, how does that relate to the papers, what does it cost?

``dmlsynth compare`` reads the results table (its paired differences, intervals
and Holm-corrected significance), the runs' ``run.yaml`` (training time and
device) and ``results/generation.csv`` (generation cost), and writes:

- ``comparison.csv``: one row per dataset x loss x method (docs/outputs.md defines the columns);
- ``comparison.md``: the same per dataset x loss as readable tables, with the forest plots;
- a forest plot per dataset x loss (:func:`dmlsynth.layout.forest_figure_name`): per method, the paired difference to its control
  (R@1 and MAP@R, percentage points) with its t interval over seeds (thick) and
  query-bootstrap interval (thin), filled when significant after Holm, and the
  published R@1 gains (:mod:`dmlsynth.published`) beside ours.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from dmlsynth import published as published_numbers
from dmlsynth import cost, html_pages, recovery, registry
from dmlsynth.io import atomic_write_text, save_figure
from dmlsynth.layout import comparison_html_of, forest_figure_name
from dmlsynth import stats
from dmlsynth.table import BASELINE, NOT_AVAILABLE, POINTS, Run, in_points, seeds_text, verdict
from dmlsynth.errors import DmlsynthError

# What the forest plots and the report show, in this order.
SHOWN = ("recall@1", "map@r")
STAT_COLUMNS = (
    "mean", "delta", "delta_ci_low", "delta_ci_high", "delta_boot_low", "delta_boot_high", "p_holm", "significant",
    "delta_adj_low", "delta_adj_high", "mdd", "seeds_needed",
)  # fmt: skip


class CompareError(DmlsynthError, ValueError):
    """The table, runs or generation report given to ``dmlsynth compare`` do not fit together."""


def _published_text(rows: pd.DataFrame) -> str:
    parts = []
    for row in rows.itertuples(index=False):
        gain = "" if pd.isna(row.gain) else f" ({row.gain:+.1f})"
        result = published_numbers.result_text(row.base_recall_at_1, row.method_recall_at_1, row.method_recall_at_1_std, not isinstance(row.method, str))
        what = row.loss_name if isinstance(row.method, str) else f"{row.method_name} {row.loss_name}"  # a loss's own paper
        parts.append(f"{what}, {row.backbone}: {result}{gain}")
    return "; ".join(parts)


def run_backbone(run: Run) -> tuple[str, int]:
    """The backbone and embedding size a run was trained with (its run.yaml)."""
    import yaml

    from dmlsynth.layout import RunFolder

    record = yaml.safe_load(Path(RunFolder(str(run.folder)).record).read_text())
    settings = (record.get("params") or {}).get("dataset_settings") or {}
    spec = registry.datasets().get(run.dataset)
    backbone = settings.get("backbone", spec.default_backbone if spec else "unknown")
    return str(backbone), int(settings.get("embedding_dim", spec.default_embedding_dim if spec else 0))


def published_same_setting(reference: pd.DataFrame, dataset: str, method: str, loss: str, backbone: str, dim: int) -> tuple[float, float]:
    """Published (base, method) R@1 of the same dataset, loss, backbone and embedding size as our runs.

    A method's own row gives both; ``baseline`` gets the base that the papers of this loss and backbone
    report (a method paper's base, else the loss's own paper's number) and no method value; NaN when
    the papers report different bases (Symmetrical Synthesis's and IAA's GoogLeNet triplet: 35.9 and
    54.4 on CUB): each method's row has its own paper's.
    """
    if method != BASELINE and not registry.is_control_label(method):
        rows = published_numbers.same_setting(reference, dataset, method, loss, backbone, dim)
        return (float(rows["base_recall_at_1"].iloc[0]), float(rows["method_recall_at_1"].iloc[0])) if len(rows) else (np.nan, np.nan)
    rows = reference[
        (reference["dataset"] == dataset) & (reference["loss"] == loss)
        & (reference["backbone_key"] == backbone) & (reference["embedding_dim"] == dim)
    ]  # fmt: skip
    bases = set(rows["base_recall_at_1"].dropna()) or set(rows[rows["method"].isna()]["method_recall_at_1"].dropna())
    return (float(bases.pop()) if len(bases) == 1 else np.nan), np.nan


def comparison(table: pd.DataFrame, runs: list[Run], generation: pd.DataFrame | None) -> pd.DataFrame:
    """One row per dataset x loss x method: the table's statistics for SHOWN, published numbers, cost."""
    reference = published_numbers.published()
    rows = []
    for record in table.to_dict(orient="records"):
        dataset, method, loss = record["dataset"], record["method"], record["loss"]
        members = [r for r in runs if (r.dataset, r.method, r.loss) == (dataset, method, loss)]
        if len(members) != record["seeds"]:
            raise CompareError(
                f"the table has {record['seeds']} seed(s) of {dataset}/{method}/{loss} but {len(members)} run folder(s) "
                f"were given: rebuild the table from the same runs ({recovery.rerun('table')}; the comparison follows)"
            )
        row: dict[str, Any] = {
            k: record.get(k, np.nan)
            for k in ("dataset", "loss", "method", "control", "seeds", "pairs", "test", "optimisation_steps", "batch_size", "threads", "device")
        }
        for name in SHOWN:
            for stat in STAT_COLUMNS:
                row[f"{name}_{stat}"] = record.get(f"{name}_{stat}", np.nan)
        papers = published_numbers.matching(reference, dataset, method, loss)
        same_loss = papers[(papers["loss"] == loss) & papers["gain"].notna()]
        row["published"] = _published_text(papers) or np.nan
        row["published_gain_same_loss"] = float(same_loss["gain"].iloc[0]) if len(same_loss) else np.nan
        # Per protocol: the published numbers of the very setting our runs used (backbone, size, loss).
        settings = sorted({run_backbone(r) for r in members})
        backbone, dim = settings[0]
        row["backbone"] = ";".join(f"{b} {d}-d" for b, d in settings)
        base, value = published_same_setting(reference, dataset, method, loss, backbone, dim) if len(settings) == 1 else (np.nan, np.nan)
        row["published_base_same_setting"], row["published_method_same_setting"] = base, value
        try:
            row.update(cost.row_cost(members, generation, dataset, method))
        except cost.CostError as exc:
            raise CompareError(str(exc)) from exc
        rows.append(row)
    return pd.DataFrame(rows)


def _points(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{POINTS * value:+.1f}"


def _interval(low: float, high: float) -> str:
    return NOT_AVAILABLE if pd.isna(low) else f"[{POINTS * low:+.1f}, {POINTS * high:+.1f}]"


def _significance(value: Any) -> str:
    return NOT_AVAILABLE if value is None or (isinstance(value, float) and np.isnan(value)) else ("**yes**" if value else "no")


def _seconds(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{value:,.0f}"


def _verdict(record: Mapping[str, Any], name: str) -> str:
    """yes / no / underpowered / one run (the table's verdict, dmlsynth.table.verdict); n/a for a control."""
    said = verdict(record, name) if record.get("test") not in (None, NOT_AVAILABLE) else None
    return {None: NOT_AVAILABLE, "significant": "**yes**", "not significant": "no", "underpowered": "no (underpowered)",
            "one training run": "one run"}[said]  # fmt: skip


def _p(value: float) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{value:.3g}"


def markdown(frame: pd.DataFrame, figure_dir: str, confidence: float) -> str:
    """The readable report: per dataset x loss, the forest plot and a table per method."""
    level = f"{100 * confidence:g} %"
    lines = [
        "# Does it really help? Methods vs their controls",
        "",
        "Each method's difference is taken against its *control*: `baseline` with the same loss params (a method's "
        "own, e.g. IAA's beta = 40, give a control of their own such as `baseline+beta=40`), batch size, "
        "optimisation steps, threads and device — the method with its synthesis switched off. "
        f"Differences are paired (same dataset, loss and seed) in percentage points, with the {level} "
        "t interval over seeds (needs 2 or more paired seeds) and the "
        f"{level} bootstrap interval over test queries (one seed suffices; it ignores training randomness). "
        "*significant*: Holm-adjusted p-value below alpha over the methods compared in the same dataset and loss "
        "(paired t-test over 2 or more paired seeds; one seed gets no verdict, *one run*: the query bootstrap leaves "
        "training randomness out). *Holm CI*: the family-wise interval at the level of the verdict (it holds 0 exactly "
        f"when the row is not significant). *MDD*: the smallest difference the seeds detect with {100 * stats.POWER:g} % "
        "power at alpha / m (m: the methods compared), from the paired spread over seeds; *seeds for Δ*: the seeds that "
        "would detect the observed ΔR@1 so; a non-significant row whose MDD exceeds |Δ| is *underpowered*, not evidence "
        "of no effect. Published gains are R@1 "
        "of the papers (other backbones and recipes except the ResNet-50 rows). Units: R@1 in %, every Δ and "
        "interval in percentage points. Cost: *train s / seed*, the mean training seconds of one seed's run (every "
        "attempt counted); *sampling s*, the seconds that made the row's own generated images; *GPU-h*, the row's "
        "seconds on a CUDA device / 3600, blank where nothing ran on a GPU; a generator that several rows' images "
        "share is stated once under the table, in no row.",
        "",
    ]
    for (dataset, loss), part in frame.groupby(["dataset", "loss"], sort=False):
        lines += [f"## {dataset} · {loss}", "", f"![forest plot]({figure_dir}/{forest_figure_name(dataset, loss)})", ""]
        lines += [_what_was_compared(part), ""]
        lines += [
            "| method | compared with | seeds | R@1 % | ΔR@1 | t CI | Holm CI | bootstrap CI | p (Holm) | significant "
            "| MDD | seeds for Δ | ΔMAP@R | Holm CI | significant | published R@1 | train s / seed | sampling s | GPU-h |",
            "|---|---|---:|---:|---:|---|---|---|---:|---|---:|---:|---:|---|---|---|---:|---:|---:|",
        ]
        for r in part.to_dict(orient="records"):
            p_holm = r["recall@1_p_holm"]
            generated = r["generation_seconds"]
            compared_with = r["control"] if isinstance(r["control"], str) and r["control"] != NOT_AVAILABLE else "— (a control)"
            lines.append(
                f"| {r['method']} | {compared_with} | {r['seeds']} | {POINTS * r['recall@1_mean']:.1f} | {_points(r['recall@1_delta'])} "
                f"| {_interval(r['recall@1_delta_ci_low'], r['recall@1_delta_ci_high'])} "
                f"| {_interval(r['recall@1_delta_adj_low'], r['recall@1_delta_adj_high'])} "
                f"| {_interval(r['recall@1_delta_boot_low'], r['recall@1_delta_boot_high'])} "
                f"| {_p(p_holm)} | {_verdict(r, 'recall@1')} "
                f"| {_points(r['recall@1_mdd']).lstrip('+')} | {seeds_text(r['recall@1_seeds_needed'])} "
                f"| {_points(r['map@r_delta'])} | {_interval(r['map@r_delta_adj_low'], r['map@r_delta_adj_high'])} "
                f"| {_verdict(r, 'map@r')} | {r['published'] if isinstance(r['published'], str) else '—'} "
                f"| {_seconds(r['train_seconds_per_seed'])} | {_seconds(generated) if generated else '—'} "
                f"| {cost.gpu_hours_text(r['gpu_hours'], NOT_AVAILABLE)} |"
            )
        shared = cost.shared_generator_lines(part)
        lines += ["", *shared] if shared else []
        lines.append("")
    lines += side_by_side(frame)
    lines += ["## Published numbers (R@1, %)", "", published_numbers.render(published_numbers.published())]
    return "\n".join(lines)


def _what_was_compared(part: pd.DataFrame) -> str:
    """One sentence per dataset x loss: what every delta is taken against, and what the table checked."""
    def shared(column: str) -> str:
        values = {str(int(v)) if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) else str(v)
                  for v in part.get(column, pd.Series(dtype=object)).dropna() if str(v) != NOT_AVAILABLE}
        return ", ".join(sorted(values)) or NOT_AVAILABLE

    controls = sorted({c for c in part["control"].dropna() if c != NOT_AVAILABLE})
    return (
        f"Each method is compared with its control ({', '.join(f'`{c}`' for c in controls) or 'none'}): `baseline` "
        "trained with the method's own loss params, seed by seed. The table checked every pair: the same dataset "
        f"settings, loss params, batch size ({shared('batch_size')}), optimisation steps ({shared('optimisation_steps')}), "
        f"seeds, threads ({shared('threads')}) and device ({shared('device')}); they differ only in the synthesis."
    )
def side_by_side(frame: pd.DataFrame) -> list[str]:
    """Per dataset, published vs ours for the same backbone, embedding size and loss (the protocol's setting).

    Ours are means over seeds; a paper's base and ours may still differ in other parts of the recipe
    (docs/protocols.md lists what each protocol config reproduces and what it does not).
    """
    lines = ["## Published vs ours: the same backbone, embedding size and loss (R@1, %)", ""]
    lines += [
        "| dataset | loss | backbone | method | published base → method (gain) | ours control → method (gain) |",
        "|---|---|---|---|---|---|",
    ]
    for (dataset, loss), part in frame.groupby(["dataset", "loss"], sort=False):
        by_name = part.set_index("method")
        plain = by_name.loc[BASELINE] if BASELINE in by_name.index else None
        published_base = float(plain["published_base_same_setting"]) if plain is not None else np.nan
        compared = part[part["control"].notna() & (part["control"] != NOT_AVAILABLE)]
        for r in compared.to_dict(orient="records"):
            # Ours: the method against its own control (the paired comparison the table makes).
            control = by_name.loc[r["control"]] if r["control"] in by_name.index else None
            ours_base = POINTS * float(control["recall@1_mean"]) if control is not None else np.nan
            pub_base = r["published_base_same_setting"] if not pd.isna(r["published_base_same_setting"]) else published_base
            pub_value = r["published_method_same_setting"]
            ours_value = POINTS * r["recall@1_mean"]
            published = (
                "no published number with this backbone and loss"
                if pd.isna(pub_value)
                else f"{published_numbers._number(pub_base)} → {pub_value:.1f}" + ("" if pd.isna(pub_base) else f" ({pub_value - pub_base:+.1f})")
            )
            ours = f"{published_numbers._number(ours_base)} → {ours_value:.1f}" + ("" if pd.isna(ours_base) else f" ({ours_value - ours_base:+.1f})")
            lines.append(f"| {dataset} | {loss} | {r['backbone']} | {r['method']} | {published} | {ours} |")
    return lines + [""]


def forest_plot(part: pd.DataFrame, out: str | Path, confidence: float) -> None:
    """One dataset x loss: paired differences to their controls per method, R@1 and MAP@R panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset, loss = part["dataset"].iloc[0], part["loss"].iloc[0]
    compared = part[part["control"].notna() & (part["control"] != NOT_AVAILABLE)].iloc[::-1]
    level = f"{100 * confidence:g} %"
    height = 1.6 + 0.55 * max(1, len(compared))
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(5.2 * len(SHOWN), height), sharey=True, squeeze=False)
    y = np.arange(len(compared))
    for ax, name in zip(axes[0], SHOWN):
        ax.axvline(0, color="#333333", linewidth=0.8)
        if compared.empty:
            ax.text(0.5, 0.5, "no method compared with baseline", transform=ax.transAxes, ha="center")
        for yi, row in zip(y, compared.to_dict(orient="records")):
            delta = POINTS * row[f"{name}_delta"]
            boot = (POINTS * row[f"{name}_delta_boot_low"], POINTS * row[f"{name}_delta_boot_high"])
            t_ci = (POINTS * row[f"{name}_delta_ci_low"], POINTS * row[f"{name}_delta_ci_high"])
            if np.isfinite(boot[0]):
                ax.plot(boot, [yi, yi], color="#4c72b0", linewidth=1.2)
            if np.isfinite(t_ci[0]):
                ax.plot(t_ci, [yi, yi], color="#4c72b0", linewidth=4, alpha=0.6, solid_capstyle="butt")
            significant = row[f"{name}_significant"] is True
            if np.isfinite(delta):
                ax.plot(
                    [delta], [yi], "o", markersize=7, color="#4c72b0",
                    markerfacecolor="#4c72b0" if significant else "white", zorder=3,
                )  # fmt: skip
            if name == "recall@1" and np.isfinite(row.get("published_gain_same_loss", np.nan)):
                ax.plot([row["published_gain_same_loss"]], [yi + 0.25], "D", color="#c44e52", markersize=6, zorder=3)
        ax.set_title(f"{name}: method − control (points)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"difference (%-points); thick: {level} t CI over seeds, thin: {level} query bootstrap", fontsize=7)
    axes[0, 0].set_yticks(y, [f"{m} ({s} seed{'s' if s != 1 else ''})" for m, s in zip(compared["method"], compared["seeds"])])
    from matplotlib.lines import Line2D

    legend = [
        Line2D([], [], marker="o", color="#4c72b0", markerfacecolor="#4c72b0", linestyle="", label="significant (Holm)"),
        Line2D([], [], marker="o", color="#4c72b0", markerfacecolor="white", linestyle="", label="not significant"),
    ]
    if compared["published_gain_same_loss"].notna().any():
        legend.append(Line2D([], [], marker="D", color="#c44e52", linestyle="", label="published R@1 gain, same loss"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.suptitle(f"{dataset} · {loss}: paired difference to each method's control", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, out, dpi=120)


def write_comparison(
    table: pd.DataFrame,
    runs: list[Run],
    generation: pd.DataFrame | None,
    out_csv: str | Path,
    out_report: str | Path,
    figure_dir: str | Path,
    settings: Mapping[str, Any],
) -> pd.DataFrame:
    """The comparison report; ``settings``: the validated ``statistics`` block."""
    confidence = float(settings["confidence"])
    frame = comparison(table, runs, generation)
    figure_dir = Path(figure_dir)
    for (dataset, loss), part in frame.groupby(["dataset", "loss"], sort=False):
        forest_plot(part, figure_dir / forest_figure_name(dataset, loss), confidence)
    # The report links its figures relative to its own folder, so results/ can be moved as a whole.
    relative = os.path.relpath(figure_dir, Path(out_report).parent)
    report = markdown(frame, Path(relative).as_posix(), confidence)
    atomic_write_text(out_report, report)
    atomic_write_text(comparison_html_of(out_report), html_pages.from_markdown("Methods vs their controls", report, Path(out_report).parent))
    csv = in_points(frame)  # one unit in every file: the metrics in % and points, like table.csv
    csv["gpu_hours"] = csv["gpu_hours"].map(lambda v: cost.gpu_hours_text(v, NOT_AVAILABLE, 6)).astype(object)
    csv["generator_gpu_hours"] = csv["generator_gpu_hours"].map(lambda v: cost.gpu_hours_text(v, NOT_AVAILABLE, 6)).astype(object)
    for column in [c for c in csv.columns if c.endswith("_significant")]:
        csv[column] = csv[column].map({True: "yes", False: "no"})
    csv["pairs"] = csv["pairs"].astype("Int64")
    atomic_write_text(out_csv, csv.to_csv(index=False, float_format="%.6f", na_rep=NOT_AVAILABLE))
    return frame

