"""Input encodings of depth and segmentation maps for the retrievers (paper section III-C).

The retriever f(d, s) sees maps, not RGB. Which maps (depth, segmentation or both, the paper's
ablations of Table 1; or, as the baseline the method is measured against, the photo itself: "rgb") and how a
segmentation map becomes channels are chosen by `EncodingConfig`:
- "label": the label id as one float channel, id / (classes - 1) (the paper, inpainting strategy);
- "probabilities": class probabilities as they come, one channel per class (the synthetic strategy,
  whose refiner predicts 4 classes);
- "onehot": one channel per class from a label map;
- "embedding": a learned embedding of each label id, trained with the retriever.
`InputEncoder(config)(depth B,1,H,W, seg, rgb) -> B,in_channels,H,W` with `config.in_channels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vprlib.models.archs import MODALITIES, SEG_ENCODING_NAMES

# ImageNet's channel statistics: the photo is normalised as torchvision's backbones expect it.
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncodingConfig:
    modalities: str = "depth+seg"  # one of MODALITIES; the paper's best uses both
    seg_encoding: str = "label"  # one of SEG_ENCODINGS; the paper feeds the label map as one channel
    num_classes: int = 150  # classes of the segmentation map: 150 ADE20K, 4 after the synthetic refiner
    embedding_dim: int = 4  # width of the learned label embedding ("embedding" only)

    def __post_init__(self):
        _check_known("modality", self.modalities, MODALITIES)
        _check_known("segmentation encoding", self.seg_encoding, SEG_ENCODINGS)

    @property
    def uses_depth(self) -> bool:
        return MODALITIES[self.modalities][0]

    @property
    def uses_seg(self) -> bool:
        return MODALITIES[self.modalities][1]

    @property
    def uses_rgb(self) -> bool:
        return MODALITIES[self.modalities][2]

    @property
    def seg_channels(self) -> int:
        """Channels the segmentation map contributes (0 without segmentation)."""
        return SEG_ENCODINGS[self.seg_encoding].channels(self) if self.uses_seg else 0

    @property
    def in_channels(self) -> int:
        """Channels of the encoded input: 1 for depth plus the segmentation's channels (3 for the photo)."""
        return int(self.uses_depth) + self.seg_channels + 3 * int(self.uses_rgb)


def _check_known(kind: str, name: str, registry: dict) -> None:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(registry)}")


def _as_labels(seg: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label map B,H,W or B,1,H,W (any dtype holding integers) -> int64 B,H,W with every label outside the classes
    (the ground truth's ignore label 255: no class) set to 0, and the bool mask of the labels that are in them."""
    labels = (seg.squeeze(1) if seg.dim() == 4 else seg).round().long()
    known = (labels >= 0) & (labels < num_classes)
    return torch.where(known, labels, 0), known


def label_channel(seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label map B,H,W (or B,1,H,W) -> float B,1,H,W id / (classes - 1), in [0, 1]: the paper's one-channel encoding
    of a segmentation map, for the retrievers and the refiners alike. A pixel of no class counts as 0."""
    return (_as_labels(seg, num_classes)[0].float() / max(num_classes - 1, 1)).unsqueeze(1)


class LabelChannel(nn.Module):
    """Label map -> B,1,H,W float id / (classes - 1), in [0, 1]."""

    def __init__(self, config: EncodingConfig):
        super().__init__()
        self.num_classes = config.num_classes

    @staticmethod
    def channels(config: EncodingConfig) -> int:
        return 1

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        return label_channel(seg, self.num_classes)


class Probabilities(nn.Module):
    """Class probabilities B,C,H,W passed through (checked against num_classes)."""

    def __init__(self, config: EncodingConfig):
        super().__init__()
        self.num_classes = config.num_classes

    @staticmethod
    def channels(config: EncodingConfig) -> int:
        return config.num_classes

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        if seg.dim() != 4 or seg.shape[1] != self.num_classes:
            raise ValueError(f"expected probabilities B,{self.num_classes},H,W, got {tuple(seg.shape)}")
        return seg.float()


class OneHot(nn.Module):
    """Label map -> B,C,H,W one-hot."""

    def __init__(self, config: EncodingConfig):
        super().__init__()
        self.num_classes = config.num_classes

    @staticmethod
    def channels(config: EncodingConfig) -> int:
        return config.num_classes

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        labels, known = _as_labels(seg, self.num_classes)  # a pixel of no class: all channels 0
        return (F.one_hot(labels, self.num_classes) * known[..., None]).permute(0, 3, 1, 2).float()


class LearnedEmbedding(nn.Module):
    """Label map -> B,E,H,W, a trainable vector per class."""

    def __init__(self, config: EncodingConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.num_classes, config.embedding_dim)

    @staticmethod
    def channels(config: EncodingConfig) -> int:
        return config.embedding_dim

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        labels, known = _as_labels(seg, self.embedding.num_embeddings)  # a pixel of no class: a zero vector
        return (self.embedding(labels) * known[..., None]).permute(0, 3, 1, 2)


SEG_ENCODINGS = dict(zip(SEG_ENCODING_NAMES, (LabelChannel, Probabilities, OneHot, LearnedEmbedding), strict=True))


class InputEncoder(nn.Module):
    """(depth B,1,H,W, seg, rgb) -> B,in_channels,H,W: depth first, then the encoded segmentation (or the photo,
    uint8 B,H,W,3, normalised as ImageNet's)."""

    def __init__(self, config: EncodingConfig | None = None):
        super().__init__()
        self.config = config or EncodingConfig()
        self.seg = SEG_ENCODINGS[self.config.seg_encoding](self.config) if self.config.uses_seg else None

    def forward(self, depth: torch.Tensor | None, seg: torch.Tensor | None,
                rgb: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if self.config.uses_rgb:
            if rgb is None:
                raise ValueError(f"modalities {self.config.modalities!r} need the photo (maps extracted with --rgb)")
            x = rgb.permute(0, 3, 1, 2).float().div(255.0)
            mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (RGB_MEAN, RGB_STD))
            parts.append((x - mean) / std)
        if self.config.uses_depth:
            if depth is None:
                raise ValueError(f"modalities {self.config.modalities!r} need a depth map")
            parts.append(depth.float() if depth.dim() == 4 else depth.float().unsqueeze(1))
        if self.seg is not None:
            if seg is None:
                raise ValueError(f"modalities {self.config.modalities!r} need a segmentation map")
            parts.append(self.seg(seg))
        return torch.cat(parts, dim=1)
