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
