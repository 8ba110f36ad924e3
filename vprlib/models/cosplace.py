"""CosPlace retriever on depth and segmentation maps (paper section III-C; Berton et al., CVPR 2022).

Follows gmberton/CosPlace: a torchvision backbone cut before its pooling (ResNet-18/50/101/152
without avgpool and fc, VGG16 features without the last ReLU and MaxPool), then the aggregation
head L2Norm -> GeM (p=3, learnable) -> Flatten -> Linear(features, descriptor_size) -> L2Norm.
The first convolution takes the encoded maps (`EncodingConfig.in_channels`) instead of RGB.
Training is classification with the Large Margin Cosine Loss (s=30, m=0.4), one classifier per
CosPlace group of UTM cells and heading bins (`cosplace_groups`).

`CosPlace(config)(x B,C,H,W) -> B,descriptor_size` (unit norm); `embed(depth, seg)` encodes maps first.
Building never downloads; `load_imagenet(model, path)` adapts a local torchvision state dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vprlib.models.archs import BACKBONES
from vprlib.models.encodings import EncodingConfig
from vprlib.models.retriever import Retriever


@dataclass(frozen=True)
class CosPlaceConfig:
    backbone: str = "resnet50"  # one of BACKBONES; ResNet-50 is the paper's best trade-off (Table 1)
    descriptor_size: int = 512  # CosPlace's fc_output_dim
    encoding: EncodingConfig = field(default_factory=EncodingConfig)  # which maps, how segmentation is encoded
    gem_p: float = 3.0  # initial GeM exponent (learnable)
    train_all_layers: bool = False  # False: freeze the first layers as CosPlace does, once ImageNet weights load

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {', '.join(BACKBONES)}")


class L2Norm(nn.Module):
    """Unit L2 norm along `dim` (channels of a feature map, or descriptor entries)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim)


class GeM(nn.Module):
    """Generalized-mean pooling B,C,H,W -> B,C,1,1 with a learnable exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


def build_backbone(name: str, in_channels: int) -> nn.Sequential:
    """Random-weight torchvision backbone cut as CosPlace cuts it, first conv taking `in_channels`."""
    model = _random_torchvision(name)
    set_first_conv(model, name, conv_like(first_conv(model, name), in_channels))
    return cut_backbone(model, name)


def _random_torchvision(name: str) -> nn.Module:
    """torchvision model with random weights; VGG16 as features only (its 120M-weight classifier is cut anyway)."""
    if name != "vgg16":
        return getattr(torchvision.models, name)(weights=None)
    model = nn.Module()
    model.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    for conv in model.features.modules():
        if isinstance(conv, nn.Conv2d):  # torchvision VGG's own initialisation
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
    return model


def conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh convolution shaped like `conv` but taking `in_channels`."""
    bias = conv.bias is not None
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=bias)


def first_conv(model: nn.Module, name: str) -> nn.Conv2d:
    return model.conv1 if name.startswith("resnet") else model.features[0]


def set_first_conv(model: nn.Module, name: str, conv: nn.Conv2d) -> None:
    if name.startswith("resnet"):
        model.conv1 = conv
    else:
        model.features[0] = conv


def cut_backbone(model: nn.Module, name: str) -> nn.Sequential:
    """ResNet without avgpool and fc; VGG16 features without the last ReLU and MaxPool (as CosPlace)."""
    if name.startswith("resnet"):
        return nn.Sequential(*list(model.children())[:-2])
    return nn.Sequential(*list(model.features.children())[:-2])


class CosPlace(Retriever):
    """forward(x B,in_channels,H,W) -> B,descriptor_size unit-norm descriptors; embed(depth, seg) likewise."""

    family = "cosplace"
    config_class = CosPlaceConfig

    def __init__(self, config: CosPlaceConfig | None = None):
        super().__init__(config or CosPlaceConfig())
        self.backbone = build_backbone(self.config.backbone, self.config.encoding.in_channels)
        self.aggregation = nn.Sequential(
            L2Norm(),
            GeM(self.config.gem_p),
            nn.Flatten(),
            nn.Linear(BACKBONES[self.config.backbone], self.config.descriptor_size),
            L2Norm(),
        )

    @property
    def descriptor_size(self) -> int:
        return self.config.descriptor_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(x))  # B,C,H,W -> B,F,H/32,W/32 (/16 VGG16) -> B,D


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB filters O,3,k,k -> O,in_channels,k,k: their mean replicated, scaled by 3/in_channels.

    The scaling keeps a filter's response to an input equal in every channel as it was to gray RGB.
    """
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def load_imagenet(model: CosPlace, path: str | os.PathLike) -> CosPlace:
    """Load a local torchvision ImageNet state dict (e.g. resnet50-0676ba61.pth) into the backbone.

    The first convolution is adapted to the maps' channels; unless `train_all_layers`, the first
    layers are frozen as in CosPlace (ResNet: before layer3; VGG16: all but the last 5 layers),
    except the adapted first convolution, whose input is maps rather than RGB.
    """
    config = model.config
    load_imagenet_backbone(model.backbone, config.backbone, path, freeze=not config.train_all_layers)
    return model


def load_imagenet_backbone(backbone: nn.Sequential, name: str, path: str | os.PathLike, freeze: bool) -> None:
    """Fill a `build_backbone` cut with a torchvision ImageNet state dict, first conv adapted, maybe frozen."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = getattr(torchvision.models, name)(weights=None)
    reference.load_state_dict(state)
    rgb = first_conv(reference, name)
    in_channels = backbone[0].in_channels
    adapted = conv_like(rgb, in_channels)
    adapted.load_state_dict({**rgb.state_dict(), "weight": adapt_first_conv(rgb.weight.data, in_channels)})
    set_first_conv(reference, name, adapted)
    backbone.load_state_dict(cut_backbone(reference, name).state_dict())
    if freeze:
        freeze_first_layers(backbone, name)


def freeze_first_layers(backbone: nn.Sequential, name: str) -> None:
    """CosPlace's freezing, sparing the first convolution (index 0, it sees maps, not RGB)."""
    # ResNet children: conv1, bn1, relu, maxpool, layer1, layer2 | layer3, layer4.
    frozen = list(backbone.children())[1:6] if name.startswith("resnet") else list(backbone.children())[1:-5]
    for layer in frozen:
        for parameter in layer.parameters():
            parameter.requires_grad = False


class LargeMarginCosineLoss(nn.Module):
    """CosFace / LMCL classifier of one CosPlace group: loss = CE(s * (cos(x, W_y) - m * [y]), y)."""

    def __init__(self, descriptor_size: int, num_classes: int, s: float = 30.0, m: float = 0.4):
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(num_classes, descriptor_size))
        nn.init.xavier_uniform_(self.weight)

    def logits(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """B,D descriptors, B labels -> B,num_classes margin-adjusted scaled cosines."""
        cosine = F.linear(F.normalize(descriptors), F.normalize(self.weight))
        margin = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype) * self.m
        return self.s * (cosine - margin)

    def forward(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(descriptors, labels), labels)


# CosPlace's `min_images_per_class`: classes with fewer images are left out of training.
MIN_IMAGES_PER_CLASS = 10


def cosplace_groups(
    utm_east: np.ndarray,
    utm_north: np.ndarray,
    heading: np.ndarray,
    cell_m: float = 10.0,
    heading_deg: float = 30.0,
    n: int = 5,
    l: int = 2,  # noqa: E741 - CosPlace's name for the heading group count
    min_images_per_class: int = MIN_IMAGES_PER_CLASS,
) -> tuple[np.ndarray, np.ndarray]:
    """CosPlace classes and groups as CosPlace's training set builds them: (class per image, group per image).

    An image's class is its cell of `cell_m` metres (M) and its heading bin of `heading_deg` degrees (alpha), and
    its group is that class's cell and bin taken modulo N cells and L bins, so no two classes of a group are
    neighbours; all in CosPlace's own arithmetic (`int(x // M * M)`, then `% (M * N) // M`). Classes with fewer than
    `min_images_per_class` images are dropped: their images get class and group -1. Groups are numbered 0, 1, ...
    in the order their first image of a kept class comes in the input, as CosPlace numbers them over its (sorted)
    image list, so that training "groups 0-7" on the same image order trains CosPlace's groups 0-7. Classes are
    numbered likewise, by their first image (CosPlace keys them by tuple and has no class number of its own).

    Departs from CosPlace in one respect: headings are wrapped into [0, 360) first. CosPlace bins the raw value, so
    360 and 0 degrees (or -10 and 350) fall in different classes although they face the same way; here they share
    one. Headings already in [0, 360) are binned exactly as CosPlace bins them.
    """
    class_keys, group_keys = _class_and_group_keys(utm_east, utm_north, heading, cell_m, heading_deg, n, l)
    classes, class_sizes = _first_appearance_ids(class_keys)
    kept = class_sizes[classes] >= min_images_per_class
    class_per_image = np.full(len(classes), -1, dtype=np.int64)
    group_per_image = np.full(len(classes), -1, dtype=np.int64)
    class_per_image[kept] = _first_appearance_ids(class_keys[kept])[0]
    group_per_image[kept] = _first_appearance_ids(group_keys[kept])[0]
    return class_per_image, group_per_image


def _class_and_group_keys(utm_east, utm_north, heading, cell_m, heading_deg, n, n_bins) -> tuple[np.ndarray, ...]:
    """Per image, CosPlace's class id and group id as N,3 integer rows (east, north, heading)."""
    east, north, heading = (np.asarray(v, dtype=np.float64) for v in (utm_east, utm_north, heading))
    if not east.ndim == 1 or not east.shape == north.shape == heading.shape:
        raise ValueError("utm_east, utm_north and heading must be 1-D arrays of one length")
    if not (np.isfinite(east).all() and np.isfinite(north).all() and np.isfinite(heading).all()):
        raise ValueError("utm_east, utm_north and heading must be finite (CosPlace cannot place NaN or inf either)")
    wrapped = np.mod(heading, 360.0)
    wrapped[wrapped == 360.0] = 0.0  # a tiny negative heading wraps to 360.0 in floating point: it faces north
    values = [east, north, wrapped]
    steps = [(cell_m, n), (cell_m, n), (heading_deg, n_bins)]
    keys = [_cosplace_rounding(v, size, period) for v, (size, period) in zip(values, steps, strict=True)]
    return np.stack([k[0] for k in keys], axis=1), np.stack([k[1] for k in keys], axis=1)


def _cosplace_rounding(values: np.ndarray, size: float, period: int) -> tuple[np.ndarray, np.ndarray]:
    """One coordinate as CosPlace rounds it: class part `int(v // size * size)`, group part `that % (size * period)
    // size` (floor division and modulo as Python's, which numpy's follow)."""
    rounded = np.trunc(np.floor_divide(values, size) * size).astype(np.int64)
    return rounded, np.floor_divide(np.mod(rounded, size * period), size).astype(np.int64)


def _first_appearance_ids(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number the distinct rows of `keys` 0, 1, ... in the order they first appear: (id per row, rows per id)."""
    _, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)], counts[order]
