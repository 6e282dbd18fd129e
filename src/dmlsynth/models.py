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
from dmlsynth.weights import PublishedWeights, WeightsError, WeightsSource


def build_backbone(
    name: str, embedding_dim: int, pretrained: bool, in_channels: int, weights: WeightsSource | None = None
) -> nn.Module:
    """The backbone ``name``; ``weights`` (with ``pretrained``) says where its ImageNet weights come from
    (:mod:`dmlsynth.weights`; None: the backbone's own source)."""
    if name not in registry.BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(registry.BACKBONES))}")
    if weights is not None and not pretrained:
        raise ValueError(f"weights are given for backbone {name!r} but pretrained is false: set pretrained: true or unset weights")
    build = registry.load_object(registry.BACKBONES[name].build)
    extra = {"weights": weights} if weights is not None else {}
    return build(embedding_dim=embedding_dim, pretrained=pretrained, in_channels=in_channels, **extra)


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


class GlobalAvgPool(nn.Module):
    """Global average pooling (GoogLeNet's head in IAA's and Symmetrical Synthesis's code): ``(B, C, H, W)`` -> ``(B, C)``."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))


class FrozenBatchNormNet(EmbeddingNet):
    """A pretrained trunk (its pooling included) with BatchNorm kept in eval mode, then a linear embedding.

    Frozen BN (docs/methods.md §1; the Proxy-Anchor code's ``bn_freeze``): running statistics stay those of
    ImageNet and the affine parameters are not trained. The embedding is Kaiming-normal (fan out) with a
    zero bias, as in the Proxy-Anchor and IAA code.
    """

    def __init__(self, trunk: nn.Module, features: int, embedding_dim: int):
        embedding = nn.Linear(features, embedding_dim)
        nn.init.kaiming_normal_(embedding.weight, mode="fan_out")
        nn.init.zeros_(embedding.bias)
        super().__init__(trunk, embedding)
        for module in self.trunk.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenBatchNormNet":
        super().train(mode)
        for module in self.trunk.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


class FrozenBatchNormResNet(FrozenBatchNormNet):
    """ResNet-50 trunk with frozen BatchNorm, avg+max pooling (Proxy-Anchor's head), linear embedding."""

    def __init__(self, body: nn.Module, embedding_dim: int):
        super().__init__(nn.Sequential(body, AvgMaxPool()), 2048, embedding_dim)


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], backbone: str, where: str) -> None:
    """Load ``state`` into ``module``; every parameter and buffer must be there with its shape."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape differs
        raise WeightsError(f"the weights in {where} do not fit backbone {backbone!r} ({exc}); give its published weights") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:4])
        raise WeightsError(
            f"the weights in {where} are not those of backbone {backbone!r}: {len(missing)} missing and "
            f"{len(unexpected)} unexpected entries (e.g. {shown}); give its published weights"
        )


def _user_weights(backbone: str, weights: WeightsSource, published: PublishedWeights | None, drop: tuple[str, ...]) -> dict:
    """The state dict of a user-given (or published) weights file, less the classifier entries ``drop``."""
    from dmlsynth import weights as weight_files

    path = weight_files.resolve(backbone, weights, published)
    state = weight_files.load_state_dict(path)
    return {k: v for k, v in state.items() if not k.startswith(drop)}


def imagenet_weights():
    """The torchvision ImageNet weights the resnet50 backbone starts from."""
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V1


def googlenet_weights():
    """The torchvision ImageNet weights the googlenet backbone starts from."""
    from torchvision.models import GoogLeNet_Weights

    return GoogLeNet_Weights.IMAGENET1K_V1


# The torchvision weights a backbone loads when pretrained (`dmlsynth prefetch` downloads them beforehand);
# bn_inception's published file comes through dmlsynth.weights (PUBLISHED_WEIGHTS, below).
PRETRAINED_WEIGHTS = {"resnet50": imagenet_weights, "googlenet": googlenet_weights}


def resnet50(embedding_dim: int, pretrained: bool = True, in_channels: int = 3, weights: WeightsSource | None = None) -> nn.Module:
    from torchvision.models import resnet50 as tv_resnet50

    if in_channels != 3:
        raise ValueError("resnet50 expects RGB images (in_channels=3)")
    # Weights come through torchvision's own download/cache mechanism on the user's machine (TORCH_HOME), or
    # from the file dataset_settings.<dataset>.weights names (checksum-verified, dmlsynth.weights).
    model = tv_resnet50(weights=imagenet_weights() if pretrained and weights is None else None)
    if weights is not None:
        model.fc = nn.Identity()  # the classifier's entries are dropped from the file
        _load_into(model, _user_weights("resnet50", weights, None, ("fc.",)), "resnet50", str(weights.location))
    return FrozenBatchNormResNet(nn.Sequential(*list(model.children())[:-2]), embedding_dim)


# GoogLeNet (Szegedy et al. 2015) ----------------------------------------------------------------


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel (and a channel reorder): converts the project's input convention
    (RGB, ImageNet mean/std normalised, dmlsynth.data.images) into the one a backbone's weights expect."""

    def __init__(self, scale: tuple[float, ...], shift: tuple[float, ...], order: tuple[int, ...] = (0, 1, 2)):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.order = list(order)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, self.order] * self.scale.to(images.dtype) + self.shift.to(images.dtype)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def googlenet_input() -> ChannelAffine:
    """torchvision's ``transform_input``: from ImageNet normalisation to the (x − 0.5) / 0.5 its GoogLeNet weights expect."""
    return ChannelAffine(tuple(s / 0.5 for s in IMAGENET_STD), tuple((m - 0.5) / 0.5 for m in IMAGENET_MEAN))


def googlenet(embedding_dim: int, pretrained: bool = True, in_channels: int = 3, weights: WeightsSource | None = None) -> nn.Module:
    """torchvision's GoogLeNet (Inception v1 with BatchNorm, 1024-d), global average pooling, linear embedding.

    The head of IAA's official code (darkpromise98/IAA ``model/backbone/googlenet.py``: torchvision's
    GoogLeNet, average pooling, a Kaiming-initialised linear layer). Symmetrical Synthesis's code uses the
    original Caffe GoogLeNet (no BatchNorm) converted to TensorFlow; the project uses torchvision's
    [project definition]. Auxiliary classifiers are not built; BatchNorm is frozen.

    Input [project definition]: torchvision's ``transform_input`` rescale (:func:`googlenet_input`), the
    input these weights were trained on, which torchvision's ``googlenet()`` turns on with them. IAA's code
    builds ``GoogLeNet(init_weights=True)`` directly (``transform_input`` off) and so feeds ImageNet-normalised
    images without it (docs/methods.md §5).
    """
    from torchvision.models import GoogLeNet_Weights
    from torchvision.models import googlenet as tv_googlenet

    if in_channels != 3:
        raise ValueError("googlenet expects RGB images (in_channels=3)")
    if pretrained and weights is None:
        model = tv_googlenet(weights=googlenet_weights())  # transform_input on, aux classifiers dropped
    else:
        model = tv_googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True)
        if weights is not None:
            model.fc = nn.Identity()
            _load_into(model, _user_weights("googlenet", weights, None, ("fc.", "aux1.", "aux2.")), "googlenet", str(weights.location))
    layers = [
        "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
        "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
        "inception5a", "inception5b",
    ]  # fmt: skip
    trunk = nn.Sequential(googlenet_input(), *[getattr(model, name) for name in layers], GlobalAvgPool())
    return FrozenBatchNormNet(trunk, 1024, embedding_dim)


# BN-Inception (Ioffe & Szegedy 2015) ------------------------------------------------------------

# The published BN-Inception ImageNet weights the deep metric learning papers start from (Proxy-Anchor's
# net/bn_inception.py and IAA's model/backbone/bninception.py load this file); its name carries the
# leading digits of its SHA-256, as torch hub names files.
BN_INCEPTION_WEIGHTS = PublishedWeights(
    "bn_inception-52deb4733.pth", "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth", "52deb4733"
)
# Backbones whose ImageNet weights come as a published file (dmlsynth.weights), not through torchvision.
PUBLISHED_WEIGHTS = {"bn_inception": BN_INCEPTION_WEIGHTS}

# Inception modules of the BN-Inception of Ioffe & Szegedy (2015, Fig. 5 / Table 1 layout as released in
# Caffe): name, #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool, pool projection.
# #1x1 = 0 marks the grid-reduction modules (3c, 4e): stride 2 in the 3x3 branches, max pool passed through.
BN_INCEPTION_MODULES = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32),
    ("3b", 64, 64, 96, 64, 96, "avg", 64),
    ("3c", 0, 128, 160, 64, 96, "max", 0),
    ("4a", 224, 64, 96, 96, 128, "avg", 128),
    ("4b", 192, 96, 128, 96, 128, "avg", 128),
    ("4c", 160, 128, 160, 128, 160, "avg", 128),
    ("4d", 96, 128, 192, 160, 192, "avg", 128),
    ("4e", 0, 128, 192, 192, 256, "max", 0),
    ("5a", 352, 192, 320, 160, 224, "avg", 128),
    ("5b", 352, 192, 320, 192, 224, "max", 128),
)


class BNInceptionFeatures(nn.Module):
    """BN-Inception up to its last Inception module: images -> ``(B, 1024, H/32, W/32)``.

    Every convolution is followed by BatchNorm (eps 1e-5) and ReLU. The layers are named as in the published
    weights file (``conv1_7x7_s2``, ``inception_3a_1x1``, ... and ``<name>_bn``), so that file loads as is.
    Its input convention is Caffe's (BGR, 0-255, mean 104/117/128 subtracted), which the trunk's first layer
    makes from the project's (:func:`bn_inception_input`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.units: list[str] = []
        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        channels = 192
        for name, n1x1, n3r, n3, nd_r, nd, pool, proj in BN_INCEPTION_MODULES:
            prefix, reduce = f"inception_{name}", n1x1 == 0
            stride = 2 if reduce else 1
            if n1x1:
                self._unit(f"{prefix}_1x1", channels, n1x1, 1)
            self._unit(f"{prefix}_3x3_reduce", channels, n3r, 1)
            self._unit(f"{prefix}_3x3", n3r, n3, 3, stride=stride)
            self._unit(f"{prefix}_double_3x3_reduce", channels, nd_r, 1)
            self._unit(f"{prefix}_double_3x3_1", nd_r, nd, 3)
            self._unit(f"{prefix}_double_3x3_2", nd, nd, 3, stride=stride)
            if reduce:
                setattr(self, f"{prefix}_pool", nn.MaxPool2d(3, stride=2, ceil_mode=True))
            elif pool == "max":
                setattr(self, f"{prefix}_pool", nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True))
            else:
                setattr(self, f"{prefix}_pool", nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True))
            if proj:
                self._unit(f"{prefix}_pool_proj", channels, proj, 1)
            channels = n1x1 + n3 + nd + (proj or channels)

    def _unit(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))
        setattr(self, f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-5))
        self.units.append(name)

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1_3x3_s2(self._run("conv1_7x7_s2", x))
        x = self.pool2_3x3_s2(self._run("conv2_3x3", self._run("conv2_3x3_reduce", x)))
        for name, n1x1, _, _, _, _, _, proj in BN_INCEPTION_MODULES:
            p = f"inception_{name}"
            branches = [self._run(f"{p}_1x1", x)] if n1x1 else []
            branches.append(self._run(f"{p}_3x3", self._run(f"{p}_3x3_reduce", x)))
            double = self._run(f"{p}_double_3x3_1", self._run(f"{p}_double_3x3_reduce", x))
            branches.append(self._run(f"{p}_double_3x3_2", double))
            pooled = getattr(self, f"{p}_pool")(x)
            branches.append(self._run(f"{p}_pool_proj", pooled) if proj else pooled)
            x = torch.cat(branches, dim=1)
        return x


def bn_inception_input() -> ChannelAffine:
    """From RGB ImageNet normalisation to Caffe's BGR 0-255 with the mean 104/117/128 subtracted
    (the Proxy-Anchor code's RGBToBGR, ScaleIntensities and Normalize for bn_inception)."""
    caffe_mean = (104.0, 117.0, 128.0)  # B, G, R
    bgr = (2, 1, 0)
    scale = tuple(255.0 * IMAGENET_STD[c] for c in bgr)
    shift = tuple(255.0 * IMAGENET_MEAN[c] - caffe_mean[i] for i, c in enumerate(bgr))
    return ChannelAffine(scale, shift, order=bgr)


def published_bn_inception_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published file's tensors as :class:`BNInceptionFeatures` names them: its BatchNorm vectors are
    stored as ``(1, C)`` and its ImageNet classifier (``last_linear``) is dropped."""
    return {
        k: (v.squeeze(0) if v.dim() == 2 and v.shape[0] == 1 else v) for k, v in state.items() if not k.startswith("last_linear.")
    }


def bn_inception(embedding_dim: int, pretrained: bool = True, in_channels: int = 3, weights: WeightsSource | None = None) -> nn.Module:
    """BN-Inception (1024-d), global average + max pooling, linear embedding: the backbone of Proxy-Anchor,
    SGAR and IAA's BN512 rows (Proxy-Anchor ``net/bn_inception.py``: GAP + GMP, Kaiming embedding).

    No maintained library ships BN-Inception (timm and torchvision do not; pretrainedmodels is unmaintained
    since 2018), so the published architecture is written here. ``pretrained``: the published ImageNet
    weights (:data:`BN_INCEPTION_WEIGHTS`), or the file ``weights`` names, SHA-256-verified and loaded with
    ``weights_only`` (:mod:`dmlsynth.weights`). BatchNorm is frozen.
    """
    if in_channels != 3:
        raise ValueError("bn_inception expects RGB images (in_channels=3)")
    features = BNInceptionFeatures()
    if pretrained:
        state = _user_weights("bn_inception", weights or WeightsSource(None, None), BN_INCEPTION_WEIGHTS, ())
        _load_into(features, published_bn_inception_state(state), "bn_inception", str((weights and weights.location) or BN_INCEPTION_WEIGHTS.filename))
    return FrozenBatchNormNet(nn.Sequential(bn_inception_input(), features, AvgMaxPool()), 1024, embedding_dim)
