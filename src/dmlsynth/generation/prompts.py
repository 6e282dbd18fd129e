"""Per-class prompts from attributes (docs/methods.md §7), written to an editable file.

- digits: stroke thickness (ink mass), slant (second image moments) and size
  (bounding box), measured on the training images and bucketed into words by
  the tertiles of all training images (:func:`digit_attributes`).
- CUB-200-2011: the class's strongest attributes from
  ``attributes/class_attribute_labels_continuous.txt``.
- Cars-196: colour, viewpoint and background phrases.
- any other dataset: the class name alone.

With ``generation.<dataset>.prompts.source: captions`` the attribute prompts
are replaced by captions of real images: a captioning model
(``prompts.captioner``, any transformers ``image-text-to-text`` model such as
BLIP) describes ``prompts.images_per_class`` training images of each class,
drawn with the generation seed (:func:`caption_prompts`), and each caption
becomes the prompt ``{plain}, {caption}`` — per-image descriptions of the
class's intra-class variation (the paper takes its attributes from image
captions; the exact prompt form is a **[project definition]**). Only
training images are captioned.

The prompts file (``{data}/{dataset}/prompts.yaml``) lists, for every
training class, its label, name, the single ``plain`` prompt and the
``prompts`` that BLenDeR draws its K conditions from. Users may edit it: when
the ``prompts`` job runs again (a new manifest, prompts settings or code), a
file edited by hand is kept and the new prompts are written beside it
(``prompts.rebuilt.yaml``, :func:`update_prompts`), with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from dmlsynth import layout, registry
from dmlsynth.io import atomic_write_text, read_yaml
from dmlsynth.errors import DmlsynthError

log = logging.getLogger("dmlsynth.generation.prompts")

THICKNESS = ("thin strokes", "medium strokes", "thick strokes")
SLANT = ("slanted left", "upright", "slanted right")
SIZE = ("small", "medium size", "large")
DIGIT_ATTRIBUTES = {"thickness": THICKNESS, "slant": SLANT, "size": SIZE}

CAR_COLOURS = ("red", "white", "black", "silver", "blue", "grey")
CAR_VIEWS = ("front view", "side view", "rear view", "three-quarter view")
CAR_BACKGROUNDS = ("on a city street", "in a parking lot", "on a country road", "in a showroom")

MIN_SHARE = 0.15  # an attribute word describes a class when this share of its images has it


class PromptsError(DmlsynthError, ValueError):
    """The prompts file is missing, malformed or does not cover the training classes."""


def digit_measurements(images: np.ndarray) -> pd.DataFrame:
    """Raw attribute values of grayscale images ``(N, H, W)`` (0–255).

    thickness: ink mass (sum of intensities / 255); slant: horizontal shear
    ``-mu11 / mu02`` of the intensity moments (positive = top leans right);
    size: area of the bounding box of pixels above a quarter of full ink.
    """
    images = np.asarray(images, dtype=np.float64) / 255.0
    n, h, w = images.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    mass = images.sum(axis=(1, 2))
    safe = np.where(mass > 0, mass, 1.0)
    cy = (images * ys).sum(axis=(1, 2)) / safe
    cx = (images * xs).sum(axis=(1, 2)) / safe
    dy = ys[None] - cy[:, None, None]
    dx = xs[None] - cx[:, None, None]
    mu11 = (images * dx * dy).sum(axis=(1, 2))
    mu02 = (images * dy * dy).sum(axis=(1, 2))
    slant = -mu11 / np.where(mu02 > 0, mu02, 1.0)
    ink = images > 0.25
    rows = ink.any(axis=2)
    cols = ink.any(axis=1)
    height = np.where(rows.any(axis=1), h - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1), 0)
    width = np.where(cols.any(axis=1), w - cols[:, ::-1].argmax(axis=1) - cols.argmax(axis=1), 0)
    return pd.DataFrame({"thickness": mass, "slant": slant, "size": (height * width).astype(float)})


def tertile_thresholds(measurements: pd.DataFrame) -> dict[str, list[float]]:
    """The 1/3 and 2/3 quantiles of every attribute (the bucket edges)."""
    return {name: [float(q) for q in np.quantile(measurements[name], [1 / 3, 2 / 3])] for name in DIGIT_ATTRIBUTES}


def digit_words(measurements: pd.DataFrame, thresholds: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """One attribute phrase per image and attribute (columns as in :data:`DIGIT_ATTRIBUTES`)."""
    out = {}
    for name, words in DIGIT_ATTRIBUTES.items():
        bucket = np.searchsorted(np.asarray(thresholds[name]), measurements[name].to_numpy(), side="right")
        out[name] = [words[i] for i in bucket]
    return pd.DataFrame(out, index=measurements.index)


def digit_caption(class_name: str, phrases: Sequence[str]) -> str:
    return ", ".join([f"a digit {class_name}", *phrases])


def load_gray_images(files: Sequence[str], size: int | None = None) -> np.ndarray:
    from PIL import Image

    arrays = []
    for file in files:
        with Image.open(file) as image:
            image = image.convert("L")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            arrays.append(np.asarray(image, dtype=np.uint8))
    return np.stack(arrays)


def digits_prompts(train_frame: pd.DataFrame, search_dirs: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """The class prompt, and the class prompt with each attribute word common in the class, alone and in pairs."""
    images = load_gray_images(train_frame["file"].tolist())
    measurements = digit_measurements(images)
    words = digit_words(measurements, tertile_thresholds(measurements))
    classes = []
    for (label, class_name), index in train_frame.reset_index(drop=True).groupby(["label", "class_name"]).groups.items():
        class_words = words.loc[index]
        common = {
            name: [w for w in DIGIT_ATTRIBUTES[name] if (class_words[name] == w).mean() >= MIN_SHARE]
            for name in DIGIT_ATTRIBUTES
        }
        prompts = [digit_caption(class_name, [])]
        prompts += [digit_caption(class_name, [w]) for name in DIGIT_ATTRIBUTES for w in common[name]]
        prompts += [
            digit_caption(class_name, [a, b])
            for i, first in enumerate(DIGIT_ATTRIBUTES)
            for second in list(DIGIT_ATTRIBUTES)[i + 1 :]
            for a in common[first]
            for b in common[second]
        ]
        classes.append({"label": int(label), "class_name": str(class_name), "plain": prompts[0], "prompts": prompts})
    return classes


def _find(root: Path, name: str) -> Path | None:
    matches = sorted(root.rglob(name)) if root.is_dir() else []
    return matches[0] if matches else None


def _cub_phrase(attribute: str) -> str:
    # "has_wing_color::blue" -> "blue wing color"; "has_size::small_(5_-_9_in)" -> "small size"
    part, _, value = attribute.partition("::")
    part = part.removeprefix("has_").replace("_", " ")
    value = value.split("_(")[0].replace("_", " ")
    return f"{value} {part}".strip()


def cub_prompts(train_frame: pd.DataFrame, search_dirs: Sequence[Path], top: int = 6) -> list[dict[str, Any]]:
    """CUB: ``a photo of a {bird}, {attribute}`` for the class's ``top`` strongest attributes.

    Reads ``class_attributes.csv`` (written by the cub200 preparation: ``class_id``,
    ``class_name``, one column per attribute) when present, else the raw
    ``class_attribute_labels_continuous.txt`` + ``attributes.txt``.
    """
    for root in search_dirs:
        prepared = Path(root) / layout.CLASS_ATTRIBUTES
        if prepared.is_file():
            table = pd.read_csv(prepared)
            attribute_columns = [c for c in table.columns if "::" in c]
            scores = table.set_index("class_id")[attribute_columns]
            return _cub_classes(train_frame, lambda label: scores.loc[int(label)].to_numpy(float), attribute_columns, top)
    table = names = None
    for root in search_dirs:
        table = table or _find(Path(root), "class_attribute_labels_continuous.txt")
        names = names or _find(Path(root), "attributes.txt")
    if table is None or names is None:
        raise PromptsError(
            "CUB prompts need CUB_200_2011/attributes/class_attribute_labels_continuous.txt and attributes.txt "
            f"under one of {[str(d) for d in search_dirs]}; prepare the cub dataset first"
        )
    matrix = np.loadtxt(table)  # (200 classes, 312 attributes), class ids 1..200 in row order
    attribute_names = [line.split(maxsplit=1)[1] for line in names.read_text().splitlines() if line.strip()]
    return _cub_classes(train_frame, lambda label: matrix[int(label) - 1], attribute_names, top)


def _cub_classes(train_frame: pd.DataFrame, scores_of, attribute_names: Sequence[str], top: int) -> list[dict[str, Any]]:
    classes = []
    for (label, class_name), _ in train_frame.groupby(["label", "class_name"]):
        name = str(class_name).split(".", 1)[-1].replace("_", " ")
        order = np.argsort(-scores_of(label), kind="stable")[:top]
        base = f"a photo of a {name}, a bird"
        prompts = [base] + [f"{base}, {_cub_phrase(attribute_names[i])}" for i in order]
        classes.append({"label": int(label), "class_name": str(class_name), "plain": base, "prompts": prompts})
    return classes


def cars_prompts(train_frame: pd.DataFrame, search_dirs: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """Cars: ``a photo of a {model}`` with colour, viewpoint and background phrases."""
    classes = []
    for (label, class_name), _ in train_frame.groupby(["label", "class_name"]):
        base = f"a photo of a {class_name}, a car"
        prompts = [base]
        prompts += [f"{base}, {colour} car" for colour in CAR_COLOURS]
        prompts += [f"{base}, {view}" for view in CAR_VIEWS]
        prompts += [f"{base}, {background}" for background in CAR_BACKGROUNDS]
        classes.append({"label": int(label), "class_name": str(class_name), "plain": base, "prompts": prompts})
    return classes


def generic_prompts(train_frame: pd.DataFrame, search_dirs: Sequence[Path] = ()) -> list[dict[str, Any]]:
    classes = []
    for (label, class_name), _ in train_frame.groupby(["label", "class_name"]):
        base = f"a photo of a {class_name}"
        classes.append({"label": int(label), "class_name": str(class_name), "plain": base, "prompts": [base]})
    return classes


def build_prompts(dataset: str, train_frame: pd.DataFrame, search_dirs: Sequence[Path] = ()) -> dict[str, Any]:
    """The prompts document of ``dataset`` built from its training split only."""
    if set(train_frame["split"]) != {"train"}:
        raise ValueError("prompts are built from the training split only")
    # The dataset's registry entry names its builder; a dataset the registry does not know gets class names.
    spec = registry.datasets().get(dataset)
    builder = registry.load_object(spec.prompts) if spec is not None else generic_prompts
    return {"dataset": dataset, "classes": builder(train_frame, search_dirs)}


def pick_caption_images(train_frame: pd.DataFrame, per_class: int, seed: int) -> dict[int, list[str]]:
    """``label -> files``: ``per_class`` training images of each class (all when fewer), drawn with ``seed``."""
    if set(train_frame["split"]) != {"train"}:
        raise ValueError("captions are made of the training split only")
    picked = {}
    for label, rows in train_frame.sort_values("file").groupby("label"):
        rng = np.random.default_rng([int(seed), int(label)])
        chosen = rng.choice(len(rows), size=min(per_class, len(rows)), replace=False)
        picked[int(label)] = [rows["file"].iloc[i] for i in sorted(chosen)]
    return picked


def load_captioner(model_id: str, device: str = "auto"):
    """A transformers ``image-text-to-text`` pipeline of ``model_id`` (Hub id or local folder)."""
    from transformers import pipeline

    from dmlsynth.device import pick_device

    target = pick_device(str(device), "generation.<dataset>.device")
    try:
        return pipeline("image-text-to-text", model=str(model_id), device=target)
    except (OSError, ValueError) as error:
        raise PromptsError(
            f"cannot load the captioning model {model_id!r} (generation.<dataset>.prompts.captioner): {error}. "
            "Give a transformers image-to-text model (e.g. Salesforce/blip-image-captioning-base) or a local "
            "folder saved with save_pretrained, or set prompts.source to attributes"
        ) from error


def caption_images(captioner, files: Sequence[str], max_new_tokens: int = 30, batch_size: int = 8) -> list[str]:
    """One caption per image (greedy decoding: the same model gives the same captions)."""
    from PIL import Image

    captions = []
    for start in range(0, len(files), batch_size):
        images = []
        for file in files[start : start + batch_size]:
            with Image.open(file) as image:
                images.append(image.convert("RGB"))
        # An empty text prompt: the model captions the image unprompted.
        outputs = captioner(images=images, text=[""] * len(images), max_new_tokens=max_new_tokens, generate_kwargs={"do_sample": False})
        for output in outputs:
            output = output[0] if isinstance(output, list) else output
            captions.append(" ".join(str(output["generated_text"]).split()))
    return captions


def caption_prompts(
    document: Mapping[str, Any], train_frame: pd.DataFrame, options: Mapping[str, Any], seed: int, device: str = "auto"
) -> dict[str, Any]:
    """``document`` with each class's ``prompts`` replaced by ``{plain}, {caption}`` of its captioned images.

    ``options``: ``generation.<dataset>.prompts`` (``captioner``, ``images_per_class``, ``max_new_tokens``).
    The class's ``plain`` prompt stays first; empty and repeated captions are dropped.
    """
    if not options.get("captioner"):
        raise PromptsError(
            "generation.<dataset>.prompts.source is captions but prompts.captioner is not set; "
            "give a transformers image-to-text model id or folder"
        )
    captioner = load_captioner(str(options["captioner"]), device)
    files = pick_caption_images(train_frame, int(options["images_per_class"]), seed)
    classes = []
    for entry in document["classes"]:
        captions = caption_images(captioner, files[int(entry["label"])], int(options["max_new_tokens"]))
        described = [f"{entry['plain']}, {c}" for c in captions if c]
        classes.append({**entry, "prompts": list(dict.fromkeys([entry["plain"], *described])), "captions": captions})
    return {**document, "source": "captions", "captioner": str(options["captioner"]), "classes": classes}


DIGEST_LINE = "# written by dmlsynth, sha256 of the lines below: "


def _body_digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def write_prompts(document: Mapping[str, Any], path: str | Path) -> Path:
    """Write the prompts file; its header records the digest of what was written (see :func:`is_edited`)."""
    body = yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True)
    header = (
        "# Prompts per training class for BLenDeR generation (docs/methods.md §7). Editable:\n"
        "# 'plain' is sd_plain's single prompt; each BLenDeR image draws its K conditions from 'prompts'.\n"
        f"{DIGEST_LINE}{_body_digest(body)}\n"
    )
    atomic_write_text(path, header + body)
    return Path(path)


def _split(text: str) -> tuple[str | None, str]:
    """(recorded digest or None, the YAML below the header comments)."""
    lines = text.splitlines(keepends=True)
    digest, start = None, 0
    while start < len(lines) and lines[start].startswith("#"):
        if lines[start].startswith(DIGEST_LINE):
            digest = lines[start][len(DIGEST_LINE) :].strip()
        start += 1
    return digest, "".join(lines[start:])


def is_edited(path: str | Path) -> bool:
    """Whether the prompts file at ``path`` was changed after dmlsynth wrote it (no digest: written by hand)."""
    digest, body = _split(Path(path).read_text())
    return digest != _body_digest(body)


def update_prompts(document: Mapping[str, Any], path: str | Path, rebuilt: str | Path) -> bool:
    """Write ``document`` to ``path`` unless the file there was edited by hand; return whether it was written.

    An edited file that differs from the new prompts is kept: the new prompts go to ``rebuilt``
    instead, with a warning saying how to take them. The same prompts overwrite nothing that matters.
    """
    path = Path(path)
    if path.is_file() and is_edited(path):
        body = yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True)
        try:
            same = yaml.safe_load(_split(path.read_text())[1]) == yaml.safe_load(body)
        except yaml.YAMLError:
            same = False  # kept: the generation jobs reading it say what is wrong with it
        if not same:
            write_prompts(document, rebuilt)
            log.warning(
                "%s was edited by hand: kept as it is. The prompts built now are in %s; copy what you need "
                "from there, or delete %s and run again to use them", path, rebuilt, path,
            )  # fmt: skip
            return False
    write_prompts(document, path)
    return True


def read_prompts(path: str | Path, train_labels: Sequence[int] | None = None) -> dict[int, dict[str, Any]]:
    """``label -> class entry``; checks that every entry has a name, a plain prompt and prompts."""
    path = Path(path)
    document = read_yaml(path, PromptsError, "build the prompts file with `dmlsynth prompts`")
    if not isinstance(document, dict) or not isinstance(document.get("classes"), list):
        raise PromptsError(f"prompts file {path} must be a mapping with a 'classes' list")
    entries = {}
    for i, entry in enumerate(document["classes"]):
        if not isinstance(entry, dict) or not {"label", "class_name", "plain", "prompts"} <= set(entry):
            raise PromptsError(f"{path}: classes[{i}] needs keys label, class_name, plain, prompts")
        prompts = entry["prompts"]
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise PromptsError(f"{path}: classes[{i}] (label {entry['label']}) needs a non-empty list of prompt strings")
        if not isinstance(entry["plain"], str) or not entry["plain"].strip():
            raise PromptsError(f"{path}: classes[{i}] (label {entry['label']}) needs a non-empty 'plain' prompt")
        entries[int(entry["label"])] = entry
    if train_labels is not None:
        missing = sorted(set(int(l) for l in train_labels) - set(entries))
        if missing:
            raise PromptsError(f"{path} has no prompts for training class(es) {missing}; rebuild or add them")
        extra = sorted(set(entries) - set(int(l) for l in train_labels))
        if extra:
            raise PromptsError(
                f"{path} lists class(es) {extra} that are not training classes; test classes never get synthetic images"
            )
    return entries
