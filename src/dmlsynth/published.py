"""Published Recall@1 of the methods and their base losses, the one machine-readable copy.

``published.csv`` (next to this module) has one row per method x paper x
backbone x base loss x dataset (CUB-200-2011, Cars-196, Stanford Online
Products, In-Shop): ``method`` and ``loss`` are the project's names (N-pair is
``n_pairs``, semi-hard triplet ``semihard_triplet``, lifted structure
``lifted_structure``; ``method`` is empty for a base loss's own paper, whose
number is the baseline's), ``*_name`` how the paper calls them. Rows are the
main results tables whose losses all exist here (Symmetrical Synthesis's
Tables 1–3, IAA's Tables III–IV, SGAR's and BLenDeR's results); IAA's Table X
(six base losses) has no rows, since not all of its losses exist here.
Further columns: ``backbone_key`` and
``embedding_dim`` the registry backbone and size the row was measured with,
``base_recall_at_1`` / ``method_recall_at_1`` the published R@1 in % (empty
where the paper gives none) and ``method_recall_at_1_std`` its published
spread, where given; ``source`` says where each number was read. docs/protocols.md's
"Published numbers" table (:func:`render`) and docs/methods.md §8
(:func:`render_plain`) are generated blocks of it (checked by
``tests/unit/test_docblocks.py``), and ``dmlsynth compare`` puts these numbers
beside the measured ones, per protocol the rows of the same backbone and loss
(:func:`same_setting`).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


FILE = "published.csv"  # in the package, beside this module
DATASET_NAMES = {"cub200": "CUB", "cars196": "Cars", "sop": "SOP", "inshop": "In-Shop"}
# The backbone of config/paper.yaml: only rows with it are comparable in absolute terms.
PAPER_BACKBONE = "ResNet-50 512-d"


def text() -> str:
    """The CSV text of the published numbers."""
    return resources.files("dmlsynth").joinpath(FILE).read_text()


def published() -> "pd.DataFrame":
    """The published numbers (see the module docstring for the columns)."""
    import io

    import pandas as pd

    frame = pd.read_csv(io.StringIO(text()), dtype={"loss": str}, keep_default_na=False, na_values=[""])
    frame["gain"] = frame["method_recall_at_1"] - frame["base_recall_at_1"]
    return frame


def same_setting(frame: "pd.DataFrame", dataset: str, method: str, loss: str, backbone: str, embedding_dim: int) -> "pd.DataFrame":
    """The published rows of ``method`` with ``loss`` on ``dataset`` measured with the same backbone and
    embedding size as a run (for ``baseline``: the loss's own paper's rows with that backbone)."""
    rows = matching(frame, dataset, method, loss)
    return rows[(rows["loss"] == loss) & (rows["backbone_key"] == backbone) & (rows["embedding_dim"] == int(embedding_dim))]


def matching(frame: "pd.DataFrame", dataset: str, method: str, loss: str) -> "pd.DataFrame":
    """The published rows of ``method`` on ``dataset`` (any loss and backbone); for ``baseline``,
    the base loss's own paper (rows without a method, of ``loss``)."""
    if method == "baseline":
        return frame[(frame["dataset"] == dataset) & frame["method"].isna() & (frame["loss"] == loss)]
    return frame[(frame["dataset"] == dataset) & (frame["method"] == method)]


def _number(value: float) -> str:
    return "–" if value != value else f"{value:.1f}"  # NaN: not published


def result_text(base: float, value: float, spread: float, own: bool = False) -> str:
    """``base → value``, or a base loss's own number (``own``): ``value ± spread``, or ``value``."""
    if spread == spread:  # not NaN
        return f"{value:.1f} ± {spread:.1f}"
    if own and base != base:
        return _number(value)
    return f"{_number(base)} → {_number(value)}"


def render(frame: "pd.DataFrame", bold_paper_backbone: bool = True) -> str:
    """docs/protocols.md's table: one line per method x paper x backbone x loss, the four datasets side by side
    (the backbone of ``config/paper.yaml`` in bold)."""
    keys = ["method_name", "paper", "backbone", "loss_name"]
    datasets = [d for d in DATASET_NAMES if d in set(frame["dataset"])]
    header = "| method | paper | backbone | base loss | " + " | ".join(f"{DATASET_NAMES[d]} base → method" for d in datasets) + " |"
    lines = [header, "|" + "---|" * (4 + len(datasets))]
    for key, part in frame.groupby(keys, sort=False):
        method_name, paper, backbone, loss_name = key
        cells = []
        for dataset in datasets:
            row = part[part["dataset"] == dataset]
            if row.empty:
                cells.append("–")
            else:
                first = row.iloc[0]
                own = not isinstance(first["method"], str) or not first["method"]  # a base loss's own paper
                cells.append(result_text(first["base_recall_at_1"], first["method_recall_at_1"], first.get("method_recall_at_1_std", float("nan")), own))
        shown = f"**{backbone}**" if backbone == PAPER_BACKBONE and bold_paper_backbone else backbone
        lines.append(f"| {method_name} | {paper} | {shown} | {loss_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_plain(frame: "pd.DataFrame") -> str:
    """docs/methods.md's table: the same without bold."""
    return render(frame, bold_paper_backbone=False)
