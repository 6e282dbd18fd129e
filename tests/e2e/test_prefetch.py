"""`dmlsynth prefetch` fetches everything the paper config's jobs download; they then load it offline.

Dataset archives come from a loopback HTTP server, models from a loopback Hugging Face hub serving
tiny saved models (tests/helpers/hub.py); nothing reaches the internet.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import models, prefetch
from tests.conftest import ROOT
from tests.helpers.datasets import cars_fixture, cub_fixture, serve
from tests.helpers.generation import save_tiny_captioner, save_tiny_clip, save_tiny_stable_diffusion
from tests.helpers.hub import serve_hub
from tests.helpers.workflow import snakemake, tiny_workflow

pytestmark = pytest.mark.slow

SD, CLIP, CAPTIONER = "fake-org/tiny-sd", "fake-org/tiny-clip", "fake-org/tiny-blip"

# In a job, offline: the three loaders of BLenDeR generation find their models in HF_HOME.
LOAD_OFFLINE = f"""
import sys
from PIL import Image
from dmlsynth.generation.stable_diffusion import load_stable_diffusion
from dmlsynth.generation.filtering import clip_scores
from dmlsynth.generation.prompts import load_captioner
load_stable_diffusion({{"model_id": "{SD}", "device": "cpu"}})
Image.new("RGB", (16, 16)).save(sys.argv[1])
print("clip", clip_scores([sys.argv[1]], ["a photo of a bird"], "{CLIP}", device="cpu"))
load_captioner("{CAPTIONER}", "cpu")
print("all loaded")
"""


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    folders = {SD: save_tiny_stable_diffusion(root / "sd"), CLIP: save_tiny_clip(root / "clip"), CAPTIONER: save_tiny_captioner(root / "blip")}
    # What a real repository also holds, which no loader reads.
    (folders[SD] / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"fp16 variant")
    (folders[SD] / "v1-5-pruned.safetensors").write_bytes(b"single-file checkpoint")
    (folders[SD] / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (folders[CLIP] / "tf_model.h5").write_bytes(b"tensorflow weights")
    (folders[CLIP] / "pytorch_model.bin").write_bytes(b"pickled weights beside the safetensors ones")
    return folders


def _env(tmp_path, **extra) -> dict:
    """This test's caches; the hubs online and at their usual address unless ``extra`` says otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"), **extra}


def _paper_config(tmp_path, cub, cars, server) -> Path:
    config = cfg.load(ROOT / "config" / "paper.yaml")
    config["paths"] = {"data": str(tmp_path / "data"), "results": str(tmp_path / "results"), "logs": str(tmp_path / "logs")}
    config["dataset_settings"]["cub200"].update(
        urls={"archive": server.url("/cub.tgz")}, md5={"archive": cub.md5}
    )
    config["dataset_settings"]["cars196"].update(
        urls={"images": server.url("/car_ims.tgz"), "annotations": server.url("/cars_annos.mat")},
        md5=cars.md5,
    )  # fmt: skip
    for dataset, settings in config["generation"].items():
        settings["model_id"] = SD
        settings["filter"]["clip_model"] = CLIP
        settings["prompts"] = {"source": "captions", "captioner": CAPTIONER}
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_prefetch_fetches_what_the_jobs_load_and_they_load_it_offline(repos, tmp_path):
    cub, cars = cub_fixture(), cars_fixture()
    files = {"/cub.tgz": cub.archive, "/car_ims.tgz": cars.images, "/cars_annos.mat": cars.annotations}
    # The ImageNet weights are on disk already (torchvision's own download is tested below).
    weights = tmp_path / "torch" / "hub" / "checkpoints" / Path(models.imagenet_weights().url).name
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    with serve(files) as server, serve_hub(repos) as hub:
        config = _paper_config(tmp_path, cub, cars, server)
        command = [sys.executable, "-m", "dmlsynth", "prefetch", "--config", str(config)]
        env = _env(tmp_path, HF_ENDPOINT=hub.endpoint)
        first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert first.returncode == 0, first.stderr
        fetched = list(hub.downloads)
        served = len(server.requests)
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert again.returncode == 0, again.stderr
        assert hub.downloads == fetched and len(server.requests) == served  # the second run downloads nothing

    for name in ("cub200/CUB_200_2011.tgz", "cars196/car_ims.tgz", "cars196/cars_annos.mat"):
        assert (tmp_path / "data" / "raw" / name).is_file(), name
    assert f"{weights.name} (the resnet50 backbone of cub200): present" in first.stdout
    # Only what the loaders read: no fp16 variant, single-file checkpoint, TensorFlow or duplicate .bin weights.
    assert f"{SD}/unet/diffusion_pytorch_model.safetensors" in fetched and f"{SD}/model_index.json" in fetched
    assert not any(name.endswith((".fp16.safetensors", "v1-5-pruned.safetensors", ".h5", ".bin")) for name in fetched), fetched
    assert {name.split("/")[1] for name in fetched} == {"tiny-sd", "tiny-clip", "tiny-blip"}

    # The jobs' loaders, with the hubs offline (cluster.offline) and no hub to reach.
    offline = _env(tmp_path, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    loaded = subprocess.run([sys.executable, "-c", LOAD_OFFLINE, str(tmp_path / "image.png")], capture_output=True, text=True, env=offline, timeout=600)
    assert loaded.returncode == 0 and "all loaded" in loaded.stdout, loaded.stderr
    # Without the prefetch, the same offline load fails: the cache is what made it work.
    empty = {**offline, "HF_HOME": str(tmp_path / "empty-hf")}
    failed = subprocess.run([sys.executable, "-c", LOAD_OFFLINE, str(tmp_path / "image.png")], capture_output=True, text=True, env=empty, timeout=600)
    assert failed.returncode != 0 and f"cannot load Stable Diffusion model {SD!r}" in failed.stderr


def test_torchvision_weights_go_where_torchvision_looks(monkeypatch, tmp_path):
    import torch
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    downloads = []

    def download(url, dst, hash_prefix=None, progress=True):
        downloads.append((url, hash_prefix))
        torch.save({"weight": torch.ones(2)}, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    config = cfg.load(ROOT / "config" / "paper.yaml")
    config["methods"] = ["baseline"]  # no generation: the backbones' weights only
    needed = prefetch.plan(config)
    url = models.imagenet_weights().url
    assert needed.torch_weights == {url: "the resnet50 backbone of cub200"} and not needed.hub_models
    assert prefetch.prefetch({**config, "datasets": []}) == []
    line = prefetch._fetch_torch_weights(url, "the backbone")
    assert "downloaded" in line and downloads == [(url, Path(url).stem.split("-")[-1])]
    # torchvision's loader finds the file there and downloads nothing more.
    assert torch.hub.load_state_dict_from_url(url, progress=False)["weight"].sum() == 2 and len(downloads) == 1
    assert "present" in prefetch._fetch_torch_weights(url, "the backbone")

    def unreachable(url, dst, hash_prefix=None, progress=True):
        raise OSError("<urlopen error [Errno 101] Network is unreachable>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(prefetch.PrefetchError, match=r"cannot download .*Network is unreachable.*place it at .*empty"):
        prefetch._fetch_torch_weights(url, "the backbone")


def test_the_embedded_default_needs_nothing(default_params):
    needed = prefetch.plan(cfg.validate(default_params))
    assert needed == prefetch.Plan()


def test_jobs_run_offline_with_cluster_offline(default_params, tmp_path):
    tiny_workflow(default_params, tmp_path, cluster={"offline": True})
    snakemake(tmp_path, "data/digits/manifest.csv")
    assert "models from the local caches only (cluster.offline)" in (tmp_path / "logs/prepare_data/digits.log").read_text()


def test_a_model_the_hub_does_not_have_is_named_with_its_setting(repos, tmp_path):
    cub, cars = cub_fixture(), cars_fixture()
    files = {"/cub.tgz": cub.archive, "/car_ims.tgz": cars.images, "/cars_annos.mat": cars.annotations}
    weights = tmp_path / "torch" / "hub" / "checkpoints" / Path(models.imagenet_weights().url).name
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    with serve(files) as server, serve_hub({CLIP: repos[CLIP], CAPTIONER: repos[CAPTIONER]}) as hub:  # no Stable Diffusion
        config = _paper_config(tmp_path, cub, cars, server)
        result = subprocess.run(
            [sys.executable, "-m", "dmlsynth", "prefetch", "--config", str(config)],
            capture_output=True, text=True, env=_env(tmp_path, HF_ENDPOINT=hub.endpoint), timeout=600,
        )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"dmlsynth prefetch: error: cannot download {SD!r} (generation.cub200.model_id) from the Hugging Face hub" in result.stderr


def test_protocol_backbone_weights_are_fetched_and_checked(monkeypatch, tmp_path):
    """The SGAR protocol's BN-Inception and the IAA protocol's GoogLeNet: their weight files are in the plan;
    a user-given weights URL is downloaded into torch hub's checkpoints and SHA-256-checked there."""
    import hashlib

    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(prefetch, "_dataset_files", lambda config, dataset: [])  # the weights alone
    weights = tmp_path / "served" / "bn_inception-test.pth"
    weights.parent.mkdir()
    torch.save({"weight": torch.ones(3)}, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    with serve({"/bn_inception-test.pth": weights.read_bytes()}) as server:
        config = cfg.load(ROOT / "config" / "protocols" / "sgar.yaml")
        config["datasets"] = ["cub200"]
        config["dataset_settings"]["cub200"] = {
            **config["dataset_settings"].get("cub200", {}), "weights": server.url("/bn_inception-test.pth"), "weights_sha256": digest,
        }
        needed = prefetch.plan(config)
        assert list(needed.weight_files.values()) == ["the bn_inception backbone of cub200"]
        lines = [line for line in prefetch.prefetch({**config, "methods": ["baseline"]}) if "sha256" in line]
    assert lines and "bn_inception-test.pth: sha256 ok" in lines[0]
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "bn_inception-test.pth").read_bytes() == weights.read_bytes()
    iaa = cfg.load(ROOT / "config" / "protocols" / "iaa.yaml")
    assert models.googlenet_weights().url in prefetch.plan({**iaa, "methods": ["baseline"]}).torch_weights
