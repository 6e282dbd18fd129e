"""Backbones: image -> un-normalised embedding.

Every backbone is an :class:`EmbeddingNet`: a ``trunk`` (image -> pooled
feature vector) followed by a linear ``embedding`` layer (features ->
embedding). Methods that synthesise in the feature space before the
embedding layer (SGAR) use the two parts separately.

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


class EmbeddingNet(nn.Module):
    """``trunk`` (images -> ``(B, F)`` features) then ``embedding`` (``(B, F)`` -> ``(B, D)``)."""

    def __init__(self, trunk: nn.Module, embedding: nn.Linear):
        super().__init__()
        self.trunk = trunk
        self.embedding = embedding

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.trunk(images))


def small_cnn(embedding_dim: int, pretrained: bool = False, in_channels: int = 1) -> nn.Module:
    if pretrained:
        raise ValueError("backbone 'small_cnn' has no pretrained weights; set pretrained: false")

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    trunk = nn.Sequential(
        block(in_channels, 32),
        block(32, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return EmbeddingNet(trunk, nn.Linear(128, embedding_dim))


class AvgMaxPool(nn.Module):
    """Global average + max pooling (Proxy-Anchor's ResNet-50 head): ``(B, C, H, W)`` -> ``(B, C)``."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3)) + features.amax(dim=(2, 3))


class FrozenBatchNormResNet(EmbeddingNet):
    """ResNet-50 trunk with BatchNorm kept in eval mode, avg+max pooling, linear embedding."""

    def __init__(self, body: nn.Module, embedding_dim: int):
        embedding = nn.Linear(2048, embedding_dim)
        nn.init.kaiming_normal_(embedding.weight, mode="fan_out")
        nn.init.zeros_(embedding.bias)
        super().__init__(nn.Sequential(body, AvgMaxPool()), embedding)
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


def imagenet_weights():
    """The torchvision ImageNet weights the resnet50 backbone starts from."""
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1


# The torchvision weights a backbone loads when pretrained (`dmlsynth prefetch` downloads them beforehand).
PRETRAINED_WEIGHTS = {"resnet50": imagenet_weights}


def resnet50(embedding_dim: int, pretrained: bool = True, in_channels: int = 3) -> nn.Module:
    from torchvision.models import resnet50 as tv_resnet50

    if in_channels != 3:
        raise ValueError("resnet50 expects RGB images (in_channels=3)")
    # Weights come through torchvision's own download/cache mechanism on the user's machine (TORCH_HOME).
    model = tv_resnet50(weights=imagenet_weights() if pretrained else None)
    return FrozenBatchNormResNet(nn.Sequential(*list(model.children())[:-2]), embedding_dim)
