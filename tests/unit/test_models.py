"""The ResNet-50 backbone of the paper protocol, built without downloading weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dmlsynth.models import build_backbone


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet50", embedding_dim=512, pretrained=False, in_channels=3)


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_resnet50_gives_512d_embeddings(model):
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 160, 160))
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()


def test_resnet50_batchnorm_stays_frozen_in_train_mode(model):
    norms = batchnorms(model)
    assert len(norms) == 53  # every BatchNorm of torchvision's ResNet-50
    model.train()
    assert model.training
    assert all(not bn.training for bn in norms)
    assert all(not p.requires_grad for bn in norms for p in bn.parameters())
    before = [bn.running_mean.clone() for bn in norms]
    out = model(torch.randn(2, 3, 96, 96) * 3 + 1)  # statistics far from the running ones
    out.sum().backward()
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, norms))
    # the rest of the network does learn
    assert model.embedding.weight.grad is not None
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.requires_grad and conv.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_resnet50_train_and_eval_agree_because_bn_is_frozen(model):
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        model.train()
        a = model(x)
        model.eval()
        b = model(x)
    assert torch.allclose(a, b)


def test_resnet50_rejects_grayscale():
    with pytest.raises(ValueError, match="RGB"):
        build_backbone("resnet50", embedding_dim=512, pretrained=False, in_channels=1)


# GoogLeNet and BN-Inception (the protocols of IAA, Symmetrical Synthesis, SGAR) ---------------------------

import hashlib  # noqa: E402
import pickle  # noqa: E402

from dmlsynth import models, weights as weight_files  # noqa: E402
from dmlsynth.models import BNInceptionFeatures, published_bn_inception_state  # noqa: E402
from dmlsynth.weights import PublishedWeights, WeightsError, WeightsSource  # noqa: E402
from tests.helpers.datasets import serve  # noqa: E402


def published_format(features: BNInceptionFeatures) -> dict[str, torch.Tensor]:
    """A state dict laid out like the published BN-Inception file: BatchNorm vectors as (1, C), a classifier."""
    state = {}
    for key, value in features.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        is_bn_vector = "_bn." in key and value.dim() == 1
        state[key] = value.unsqueeze(0).clone() if is_bn_vector else value.clone()
    state["last_linear.weight"] = torch.zeros(1000, 1024)
    state["last_linear.bias"] = torch.zeros(1000)
    return state


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def bn_inception_file(tmp_path_factory):
    torch.manual_seed(3)
    features = BNInceptionFeatures()
    for module in features.modules():  # statistics that differ from a fresh layer's
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("weights") / "bn_inception.pth"
    torch.save(published_format(features), path)
    return path, features.state_dict()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["googlenet", "bn_inception"])
def test_inception_backbones_give_1024_features_and_freeze_batchnorm(name):
    torch.manual_seed(0)
    model = build_backbone(name, embedding_dim=512, pretrained=False, in_channels=3)
    assert model.embedding.in_features == 1024
    model.train()
    norms = batchnorms(model)
    assert norms and all(not bn.training and not bn.weight.requires_grad for bn in norms)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 227, 227)).shape == (2, 512)  # Symmetrical Synthesis's input size


def test_bn_inception_has_the_published_architecture():
    features = BNInceptionFeatures()
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    # 3 stem convolutions + 7 per ordinary module x 8 + 5 per grid-reduction module x 2.
    assert len(convs) == 3 + 7 * 8 + 5 * 2
    # With its 1,025,000-parameter ImageNet classifier: 11.3 M, the size reported for BN-Inception.
    assert sum(p.numel() for p in features.parameters()) == 10_270_240
    assert features(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)


def test_bn_inception_loads_the_published_file_over_http_after_its_checksum(bn_inception_file, hub_dir, monkeypatch):
    path, reference = bn_inception_file
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with serve({"/bn_inception-x.pth": data}) as server:
        monkeypatch.setattr(models, "BN_INCEPTION_WEIGHTS", PublishedWeights("bn_inception-x.pth", server.url("/bn_inception-x.pth"), digest[:9]))
        model = build_backbone("bn_inception", embedding_dim=8, pretrained=True, in_channels=3)
        again = build_backbone("bn_inception", embedding_dim=8, pretrained=True, in_channels=3)  # the kept copy
    assert len(server.requests) == 1 and (hub_dir / "bn_inception-x.pth").is_file()
    features = model.trunk[1].state_dict()
    for key, value in reference.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(features[key], value), key
    assert torch.equal(again.trunk[1].conv1_7x7_s2.weight, model.trunk[1].conv1_7x7_s2.weight)


def test_a_wrong_download_is_refused_and_not_kept(bn_inception_file, hub_dir, monkeypatch):
    path, _ = bn_inception_file
    with serve({"/w.pth": path.read_bytes()}) as server:
        monkeypatch.setattr(models, "BN_INCEPTION_WEIGHTS", PublishedWeights("w.pth", server.url("/w.pth"), "0123456789"))
        with pytest.raises(WeightsError, match="do not match SHA-256 0123456789"):
            build_backbone("bn_inception", embedding_dim=8, pretrained=True, in_channels=3)
    assert not (hub_dir / "w.pth").exists()


def test_a_given_file_is_checked_and_a_mismatch_leaves_it_alone(bn_inception_file, tmp_path):
    path, _ = bn_inception_file
    good = WeightsSource(str(path), sha256(path))
    model = build_backbone("bn_inception", embedding_dim=8, pretrained=True, in_channels=3, weights=good)
    assert isinstance(model, models.FrozenBatchNormNet)
    with pytest.raises(WeightsError, match="SHA-256 .* expected one starting deadbeef"):
        build_backbone("bn_inception", embedding_dim=8, pretrained=True, in_channels=3, weights=WeightsSource(str(path), "deadbeef"))
    assert path.is_file()
    with pytest.raises(WeightsError, match="no checksum"):
        weight_files.resolve("resnet50", WeightsSource(str(path), None), None)
    with pytest.raises(ValueError, match="pretrained is false"):
        build_backbone("bn_inception", embedding_dim=8, pretrained=False, in_channels=3, weights=good)


def test_pickled_code_is_refused(tmp_path):
    class Payload:  # what weights_only loading must never run
        def __reduce__(self):
            return (print, ("this ran",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1_7x7_s2.weight": Payload()}))
    with pytest.raises(WeightsError, match="loaded safely"):
        build_backbone("bn_inception", 8, True, 3, weights=WeightsSource(str(path), sha256(path)))


def test_weights_of_another_network_are_named(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"conv1_7x7_s2.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightsError, match="missing"):
        build_backbone("bn_inception", 8, True, 3, weights=WeightsSource(str(path), sha256(path)))


def test_googlenet_and_resnet50_load_a_given_torchvision_file(tmp_path):
    from torchvision.models import googlenet as tv_googlenet

    reference = tv_googlenet(weights=None, aux_logits=False, init_weights=True)
    path = tmp_path / "googlenet.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = build_backbone("googlenet", 8, True, 3, weights=WeightsSource(str(path), sha256(path)))
    assert torch.equal(model.trunk[1].conv.weight, reference.conv1.conv.weight)


def test_bn_inception_input_layer_is_the_caffe_convention():
    """ImageNet-normalised RGB in, BGR 0-255 less the Caffe mean out (the Proxy-Anchor transform)."""
    rgb = torch.rand(1, 3, 4, 4)
    mean, std = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
    expected = rgb[:, [2, 1, 0]] * 255 - torch.tensor([104.0, 117.0, 128.0]).view(1, 3, 1, 1)
    assert torch.allclose(models.bn_inception_input()((rgb - mean) / std), expected, atol=1e-3)
    # torchvision's GoogLeNet transform_input: (x - 0.5) / 0.5
    assert torch.allclose(models.googlenet_input()((rgb - mean) / std), (rgb - 0.5) / 0.5, atol=1e-5)


def test_published_layout_is_squeezed_and_its_classifier_dropped():
    state = published_bn_inception_state({"a_bn.weight": torch.ones(1, 5), "c.weight": torch.ones(1, 3, 3, 3), "last_linear.bias": torch.ones(3)})
    assert state["a_bn.weight"].shape == (5,) and state["c.weight"].shape == (1, 3, 3, 3) and "last_linear.bias" not in state


def test_googlenet_head_is_global_average_pooling():
    # IAA's model/backbone/googlenet.py ends in torchvision's average pool, not Proxy-Anchor's average + max.
    torch.manual_seed(0)
    model = build_backbone("googlenet", embedding_dim=8, pretrained=False, in_channels=3).eval()
    for module in model.trunk.modules():  # activations of order 1 (torchvision's init leaves them near 1e-11)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feature_maps = model.trunk[:-1](images)
        assert feature_maps.shape[1:] == (1024, 3, 3) and feature_maps.amax() > 0.1
        torch.testing.assert_close(model.trunk(images), feature_maps.mean(dim=(2, 3)))
        torch.testing.assert_close(model(images), model.embedding(feature_maps.mean(dim=(2, 3))))
