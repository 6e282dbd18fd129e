"""Backbones: image -> un-normalised embedding.

Embeddings are returned un-normalised (IAA models their distribution);
losses on cosine similarity and the evaluation normalise them.
"""

from __future__ import annotations

import torch
from torch import nn

from dmlsynth import registry


def build_backbone(name: str, embedding_dim: int, pretrained: bool, in_channels: int) -> nn.Module:
    if name not in registry.BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(registry.BACKBONES))}")
    build = registry.load_object(registry.BACKBONES[name].build)
    return build(embedding_dim=embedding_dim, pretrained=pretrained, in_channels=in_channels)


def small_cnn(embedding_dim: int, pretrained: bool = False, in_channels: int = 1) -> nn.Module:
    if pretrained:
        raise ValueError("backbone 'small_cnn' has no pretrained weights; set pretrained: false")

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.Sequential(
        block(in_channels, 32),
        block(32, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, embedding_dim),
    )


class FrozenBatchNormResNet(nn.Module):
    """ResNet-50 trunk with BatchNorm kept in eval mode, avg+max pooling, linear embedding."""

    def __init__(self, trunk: nn.Module, embedding_dim: int):
        super().__init__()
        self.trunk = trunk
        self.embedding = nn.Linear(2048, embedding_dim)
        nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
        nn.init.zeros_(self.embedding.bias)
        for module in self.trunk.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenBatchNormResNet":
        super().train(mode)
        # Frozen BN: running statistics stay those of ImageNet (METHODS.md §1).
        for module in self.trunk.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.trunk(images)
        pooled = features.mean(dim=(2, 3)) + features.amax(dim=(2, 3))
        return self.embedding(pooled)


def resnet50(embedding_dim: int, pretrained: bool = True, in_channels: int = 3) -> nn.Module:
    from torchvision.models import ResNet50_Weights
    from torchvision.models import resnet50 as tv_resnet50

    if in_channels != 3:
        raise ValueError("resnet50 expects RGB images (in_channels=3)")
    # Weights come through torchvision's own download/cache mechanism on the user's machine.
    model = tv_resnet50(weights=ResNet50_Weights.IMAGENET1K_V1 if pretrained else None)
    trunk = nn.Sequential(*list(model.children())[:-2])
    return FrozenBatchNormResNet(trunk, embedding_dim)
