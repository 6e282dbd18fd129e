"""Quality of generated images: fidelity, diversity and sample grids.

- **fidelity**: share of generated images that a classifier trained on the
  real training images assigns to their intended class. The classifier is a
  logistic regression on image features (standardised pixels for grayscale
  datasets; ImageNet ResNet-50 pooled features for RGB datasets). Its own
  5-fold cross-validated accuracy on the real images is reported as
  ``real_accuracy`` (the ceiling), and ``chance`` is 1 / classes.
- **diversity**: per class, the mean pairwise Euclidean distance of the
  generated images' features (pixels in [0, 1], or ResNet-50 features; not
  standardised, so near-constant background pixels do not inflate it), divided by the same quantity
  for the real images of that class; averaged over classes. 1 means as
  varied as the real images, 0 means one image repeated.

Rows of ``results/generation.csv``: one per dataset x image set x operator
(``all`` pools a set's operators when it mixes several).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from dmlsynth.config import atomic_write_text

log = logging.getLogger("dmlsynth.generate.quality")

COLUMNS = [
    "dataset",
    "image_set",
    "operator",
    "generator",
    "images",
    "classes",
    "fidelity",
    "chance",
    "real_accuracy",
    "diversity",
    "diversity_generated",
    "diversity_real",
    "seconds_per_image",
    "generator_train_seconds",
]


def load_images(files: Sequence[str], image_mode: str, size: int) -> np.ndarray:
    """``(N, size, size[, 3])`` uint8 arrays."""
    from PIL import Image

    arrays = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert(image_mode)
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            arrays.append(np.asarray(image, dtype=np.uint8))
    return np.stack(arrays)


def features(files: Sequence[str], image_mode: str, image_size: int, pretrained: bool = True) -> np.ndarray:
    """Feature vectors the fidelity classifier and the diversity measure use."""
    if image_mode == "L":
        return load_images(files, "L", image_size).reshape(len(files), -1).astype(np.float64) / 255.0
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    model = resnet50(weights=weights)
    model.fc = torch.nn.Identity()
    model.eval()
    transform = ResNet50_Weights.IMAGENET1K_V1.transforms()
    from PIL import Image

    out = []
    with torch.no_grad():
        for start in range(0, len(files), 64):
            batch = []
            for file in files[start : start + 64]:
                with Image.open(file) as image:
                    batch.append(transform(image.convert("RGB")))
            out.append(model(torch.stack(batch)).numpy())
    return np.concatenate(out).astype(np.float64)


def mean_pairwise_distance(x: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    squared = (x * x).sum(1)
    d2 = np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0)
    n = len(x)
    return float(np.sqrt(d2)[np.triu_indices(n, 1)].mean())


def quality_rows(
    dataset: str,
    real_train: pd.DataFrame,
    generated: Mapping[str, pd.DataFrame],
    image_mode: str,
    image_size: int,
    generator: str,
    pretrained: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """Fidelity and diversity of every generated image set against the real training images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real_x = features(real_train["file"].tolist(), image_mode, image_size, pretrained)
    real_y = real_train["label"].to_numpy()
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=seed))
    folds = min(5, int(pd.Series(real_y).value_counts().min()))
    real_accuracy = float(cross_val_score(classifier, real_x, real_y, cv=folds).mean()) if folds >= 2 else float("nan")
    classifier.fit(real_x, real_y)
    real_diversity = {c: mean_pairwise_distance(real_x[real_y == c]) for c in np.unique(real_y)}
    chance = 1.0 / len(np.unique(real_y))

    rows = []
    for image_set, frame in sorted(generated.items()):
        unknown = sorted(set(frame["label"]) - set(real_diversity))
        if unknown:
            raise ValueError(f"image set {image_set!r} has images of classes {unknown} that are not training classes")
        x = features(frame["file"].tolist(), image_mode, image_size, pretrained)
        y = frame["label"].to_numpy()
        predicted = classifier.predict(x)
        operators = frame["operator"].to_numpy() if "operator" in frame else np.array(["all"] * len(frame))
        groups = [("all", np.ones(len(frame), bool))] if len(set(operators)) > 1 else []
        groups += [(name, operators == name) for name in sorted(set(operators))]
        for name, mask in groups:
            per_class = [
                (mean_pairwise_distance(x[mask & (y == c)]), real_diversity[c]) for c in np.unique(y[mask])
            ]
            generated_div = float(np.nanmean([g for g, _ in per_class]))
            real_div = float(np.nanmean([r for _, r in per_class]))
            rows.append(
                {
                    "dataset": dataset,
                    "image_set": image_set,
                    "operator": "cfg" if name == "conjunction" and image_set == "plain" else name,
                    "generator": generator,
                    "images": int(mask.sum()),
                    "classes": int(len(np.unique(y[mask]))),
                    "fidelity": float((predicted[mask] == y[mask]).mean()),
                    "chance": chance,
                    "real_accuracy": real_accuracy,
                    "diversity": float(np.nanmean([g / r for g, r in per_class if r > 0])),
                    "diversity_generated": generated_div,
                    "diversity_real": real_div,
                    # What the images cost: sampling time per image (the generator's training is extra).
                    "seconds_per_image": float(frame["seconds"].to_numpy()[mask].mean()) if "seconds" in frame else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def sample_grid(
    real_train: pd.DataFrame,
    generated: Mapping[str, pd.DataFrame],
    columns: Sequence[str],
    out: str | Path,
    image_mode: str,
    per_cell: int = 6,
    cell_size: int = 32,
) -> Path:
    """One row per class; columns ``real`` then the image sets in ``columns`` (those generated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [("real", real_train)] + [(name, generated[name]) for name in columns if name in generated]
    labels = sorted(real_train["label"].unique())
    names = dict(zip(real_train["label"], real_train["class_name"]))
    fig, axes = plt.subplots(
        len(labels), len(sets), figsize=(1.0 + 1.6 * len(sets) * per_cell / 4, 0.5 + 1.0 * len(labels)), squeeze=False
    )
    for r, label in enumerate(labels):
        for c, (name, frame) in enumerate(sets):
            files = frame.loc[frame["label"] == label, "file"].tolist()[:per_cell]
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if files:
                tiles = load_images(files, image_mode, cell_size)
                strip = np.concatenate(list(tiles), axis=1)
                ax.imshow(strip, cmap="gray" if image_mode == "L" else None, vmin=0, vmax=255, interpolation="nearest")
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(str(names[label]), rotation=0, ha="right", va="center")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def write_report(rows: Sequence[pd.DataFrame], out_csv: str | Path) -> pd.DataFrame:
    table = pd.concat(list(rows), ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)
    atomic_write_text(out_csv, table.to_csv(index=False, float_format="%.4f"))
    return table


def log_to_mlflow(table: pd.DataFrame, uri: str, artifacts: Sequence[str | Path] = (), experiment: str = "generation") -> None:
    """One MLflow run per dataset x image set x operator (found again by its key, so re-runs update it)."""
    from mlflow.tracking import MlflowClient

    from dmlsynth.tracking import KEY_TAG, _experiment_id, store_lock

    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, experiment)
        for row in table.to_dict("records"):
            key = f"generation/{row['dataset']}/{row['image_set']}/{row['operator']}"
            existing = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'")
            run_id = existing[0].info.run_id if existing else client.create_run(
                experiment_id, run_name=key.removeprefix("generation/"), tags={KEY_TAG: key}
            ).info.run_id
            for name in ("dataset", "image_set", "operator", "generator"):
                client.set_tag(run_id, name, str(row[name]))
            for name in ("fidelity", "chance", "real_accuracy", "diversity", "diversity_generated", "diversity_real", "images"):
                if pd.notna(row[name]):
                    client.log_metric(run_id, name, float(row[name]))
            for file in artifacts:
                if Path(file).is_file() and Path(file).name in (f"generated_{row['dataset']}.png", "generation.csv"):
                    client.log_artifact(run_id, str(file))
            client.set_terminated(run_id, "FINISHED")
