"""``dmlsynth prefetch``: everything a config's jobs would download, fetched beforehand.

For clusters whose compute nodes have no internet: run it on the login node, then run the
workflow with ``cluster.offline: true`` (its jobs then read the hubs' caches only,
:data:`dmlsynth.cluster.OFFLINE_VARIABLES`). What a config needs (:func:`plan`):

- **dataset files**: every raw file of every configured dataset (its module's ``FILES``, with the
  config's mirrors and checksums, :func:`dmlsynth.data.sources.resolve_sources`), into the dataset's
  raw folder through :func:`dmlsynth.data.download.fetch` (md5-checked, resumable); ``prepare_data``
  then finds them there;
- **torchvision weights** of pretrained backbones (:data:`dmlsynth.models.PRETRAINED_WEIGHTS`), and
  the ImageNet ResNet-50 of the generation report on photo datasets, into ``$TORCH_HOME/hub/checkpoints``
  where torchvision looks for them;
- **Hugging Face models** of BLenDeR generation, into ``$HF_HOME/hub``: the Stable Diffusion
  ``model_id`` (its unet, vae, text_encoder, tokenizer and scheduler), the CLIP model of the filter
  and the captioner of ``prompts.source: captions``. Only the files the loaders read: configs,
  tokenizers and the safetensors weights (``.bin`` where a folder has no safetensors), no
  fp16/EMA variants or other frameworks' weights. A local folder is used as it is.

Everything already present is kept (a second run downloads nothing).
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from dmlsynth import models, registry
from dmlsynth.layout import Layout
from dmlsynth.errors import DmlsynthError
from dmlsynth.weights import resolve as resolve_weights
from dmlsynth.weights import source_of as weight_source

log = logging.getLogger("dmlsynth.prefetch")

# What from_pretrained reads of a Stable Diffusion repository (dmlsynth.generation.stable_diffusion).
STABLE_DIFFUSION_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Configs, tokenizers, processors, chat templates; weights are chosen per folder.
SMALL_FILES = ("*.json", "*.txt", "*.model", "*.jinja")
# Weights of other variants (fp16, EMA) and frameworks, which the loaders never read.
OTHER_WEIGHTS = ("*.fp16.*", "*.non_ema.*", "*.ema.*", "*.ckpt", "*.msgpack", "*.h5", "*.onnx*", "*.ot", "*.tflite", "*.pb")


@dataclass
class Plan:
    """What a config downloads: dataset files, torchvision weights, Hugging Face models."""

    dataset_files: list[dict[str, Any]] = field(default_factory=list)  # url, dest, md5, config_key
    torch_weights: dict[str, str] = field(default_factory=dict)  # url -> what needs it
    # Backbone weight files (dmlsynth.weights): a user-given URL or path, or a backbone's published file.
    weight_files: dict[tuple[str, Any], str] = field(default_factory=dict)  # (backbone, source) -> what needs it
    hub_models: dict[str, tuple[str, tuple[str, ...] | None]] = field(default_factory=dict)  # id -> (what, folders)


def _dataset_files(config: Mapping[str, Any], dataset: str) -> list[dict[str, Any]]:
    from dmlsynth.data.sources import resolve_sources

    module = importlib.import_module(registry.dataset(dataset).prepare.split(":")[0])
    files = getattr(module, "FILES", None)
    if not files:  # ships with a library (digits): nothing to download
        return []
    sources = resolve_sources(dataset, registry.dataset_settings(config, dataset), files, getattr(module, "EXPECTED", {}))
    raw = Path(Layout.of(config).raw_dir(dataset))
    return [
        {
            "url": sources.urls[key], "dest": raw / sources.filenames[key], "md5": sources.md5[key],
            "config_key": f"dataset_settings.{dataset}.urls.{key}",
        }  # fmt: skip
        for key in files
    ]


def plan(config: Mapping[str, Any]) -> Plan:
    """What the jobs of ``config`` (validated) would download."""
    from dmlsynth.generation import settings as generation

    needed = Plan()
    for dataset in config["datasets"]:
        needed.dataset_files += _dataset_files(config, dataset)
        settings = registry.dataset_settings(config, dataset)
        source = weight_source(settings)
        what = f"the {settings['backbone']} backbone of {dataset}"
        if source is not None or (settings["pretrained"] and settings["backbone"] in models.PUBLISHED_WEIGHTS):
            needed.weight_files.setdefault((settings["backbone"], source), what)
        elif settings["pretrained"] and settings["backbone"] in models.PRETRAINED_WEIGHTS:
            weights = models.PRETRAINED_WEIGHTS[settings["backbone"]]()
            needed.torch_weights.setdefault(weights.url, what)
    if not generation.needs_generation(config):
        return needed
    for dataset in config["datasets"]:
        settings = generation.generation_settings(config, dataset)
        if settings["generator"] == "stable-diffusion":
            needed.hub_models.setdefault(
                str(settings["model_id"]), (f"generation.{dataset}.model_id", STABLE_DIFFUSION_FOLDERS)
            )
        if generation.filter_scorer(settings) == "clip":
            needed.hub_models.setdefault(str(settings["filter"]["clip_model"]), (f"generation.{dataset}.filter.clip_model", None))
        if settings["prompts"]["source"] == "captions" and settings["prompts"].get("captioner"):
            needed.hub_models.setdefault(str(settings["prompts"]["captioner"]), (f"generation.{dataset}.prompts.captioner", None))
        # The generation report's feature network (dmlsynth.generation.quality): an ImageNet ResNet-50 on photos.
        if registry.dataset(dataset).image_mode != "L" and registry.dataset_settings(config, dataset)["pretrained"]:
            needed.torch_weights.setdefault(models.imagenet_weights().url, f"the generation report of {dataset}")
    # A local folder is loaded from where it is.
    needed.hub_models = {k: v for k, v in needed.hub_models.items() if not Path(k).exists()}
    return needed


def hub_files(repo_files: Iterable[str], folders: tuple[str, ...] | None) -> list[str]:
    """The files of a Hugging Face repository its loaders read: those in ``folders`` and the pipeline's
    model_index.json, or (``folders`` None) those at the top level."""
    chosen, by_folder = [], {}
    for name in repo_files:
        folder, _, base = name.rpartition("/")
        if folders is not None and not folder:
            chosen += [name] if base == "model_index.json" else []
        elif (folders is None) == bool(folder) or (folders is not None and folder not in folders):
            continue
        elif not any(fnmatch.fnmatch(base, pattern) for pattern in OTHER_WEIGHTS):
            by_folder.setdefault(folder, []).append(name)
    for names in by_folder.values():
        safetensors = [n for n in names if n.endswith(".safetensors")]
        chosen += safetensors or [n for n in names if n.endswith(".bin")]
        chosen += [n for n in names if any(fnmatch.fnmatch(n.rpartition("/")[2], p) for p in SMALL_FILES)]
    return sorted(set(chosen))


def _fetch_hub_model(model_id: str, what: str, folders: tuple[str, ...] | None) -> str:
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = hub_files(HfApi().list_repo_files(model_id), folders)
        folder = snapshot_download(model_id, allow_patterns=files)
    except Exception as error:  # noqa: BLE001 — the hub's many errors: say which setting and what to do
        raise PrefetchError(
            f"cannot download {model_id!r} ({what}) from the Hugging Face hub: {type(error).__name__}: {error}. "
            f"Check the id, accept the model's license and `huggingface-cli login` where it is gated, or set {what} "
            "to a local folder saved with save_pretrained"
        ) from error
    return f"{model_id} ({what}): {len(files)} files in {folder}"


def _fetch_torch_weights(url: str, what: str) -> str:
    import torch.hub

    # Where torch.hub.load_state_dict_from_url (torchvision) looks: <hub dir>/checkpoints/<file name of the URL>.
    dest = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if dest.is_file():
        return f"{dest.name} ({what}): present in {dest.parent}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    found = torch.hub.HASH_REGEX.search(dest.name)
    try:
        torch.hub.download_url_to_file(url, str(dest), found.group(1) if found else None, progress=True)
    except (OSError, RuntimeError) as error:  # no connection (URLError is an OSError), a wrong checksum
        raise PrefetchError(
            f"cannot download {url} ({what}): {error}. Download it on a machine with internet and place it at {dest}"
        ) from error
    return f"{dest.name} ({what}): downloaded to {dest.parent}"


class PrefetchError(DmlsynthError, RuntimeError):
    """A model could not be downloaded; the message names the setting."""


def prefetch(config: Mapping[str, Any]) -> list[str]:
    """Download what ``config``'s jobs need; one line per item, saying where it is."""
    from dmlsynth.data.download import fetch

    needed = plan(config)
    done = []
    for item in needed.dataset_files:
        path = fetch(item["url"], item["dest"], item["md5"], config_key=item["config_key"])
        done.append(f"{path.name}: md5 ok in {path.parent}")
    for url, what in needed.torch_weights.items():
        done.append(_fetch_torch_weights(url, what))
    for (backbone, source), what in needed.weight_files.items():
        # Downloaded into torch hub's checkpoints and SHA-256-checked, or a local file checked where it is.
        path = resolve_weights(backbone, source, models.PUBLISHED_WEIGHTS.get(backbone))
        done.append(f"{path.name}: sha256 ok in {path.parent} ({what})")
    for model_id, (what, folders) in needed.hub_models.items():
        done.append(_fetch_hub_model(model_id, what, folders))
    for line in done:
        log.info("%s", line)
    return done
