"""NetVLAD retriever on depth and segmentation maps (paper section III-C; Arandjelovic et al., CVPR 2016).

Follows Nanne/pytorch-NetVlad: VGG16 conv5_3 features (without the last ReLU and MaxPool), the
first convolution taking the encoded maps, then a NetVLAD layer of 64 clusters: soft assignment by
a 1x1 convolution, residuals to the centroids summed per cluster, intra-normalisation, then L2.
Centroids come from k-means over sampled L2-normalised local descriptors, and the assignment
sharpness alpha = -log(0.01) / mean(top-1 minus top-2 cosine to the centroids) (vladv1 init_params).
Training uses the triplet margin loss with margin sqrt(0.1).

`NetVLAD(config)(x B,C,H,W) -> B,num_clusters*512` (unit norm); `embed(depth, seg)` encodes maps first.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vprlib.models.cosplace import build_backbone, load_imagenet_backbone
from vprlib.models.encodings import EncodingConfig
from vprlib.models.retriever import Retriever

VGG16_CONV5_CHANNELS = 512
TRIPLET_MARGIN = math.sqrt(0.1)


@dataclass(frozen=True)
class NetVLADConfig:
    num_clusters: int = 64  # K of the NetVLAD layer
    encoding: EncodingConfig = field(default_factory=EncodingConfig)  # which maps, how segmentation is encoded
    train_all_layers: bool = False  # False: with ImageNet weights, train only conv5 (the last 5 layers)


class NetVLADLayer(nn.Module):
    """B,D,H,W local features -> B,K*D: soft-assigned residuals, intra-normalised, L2-normalised."""

    def __init__(self, num_clusters: int = 64, dim: int = VGG16_CONV5_CHANNELS):
        super().__init__()
        self.num_clusters, self.dim = num_clusters, dim
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))
        self.register_buffer("alpha", torch.zeros(()))  # set by init_params, kept for the record

    def init_params(self, centroids: np.ndarray, descriptors: np.ndarray) -> None:
        """k-means centroids K,D and the descriptors N,D they came from (both float32) set conv and centroids."""
        assigned = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        dots = np.sort(assigned @ descriptors.T, axis=0)[::-1]  # per descriptor, cosines descending
        alpha = float(-np.log(0.01) / np.mean(dots[0] - dots[1]))
        with torch.no_grad():
            self.alpha.fill_(alpha)
            self.centroids.copy_(torch.from_numpy(centroids))
            self.conv.weight.copy_(torch.from_numpy(alpha * assigned)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, p=2.0, dim=1).flatten(2)  # B,D,N
        assign = F.softmax(self.conv(x.unsqueeze(-1)).squeeze(-1), dim=1)  # B,K,N
        # sum_i a_ki (x_i - c_k) = sum_i a_ki x_i - c_k sum_i a_ki
        vlad = assign @ x.transpose(1, 2) - assign.sum(dim=2, keepdim=True) * self.centroids  # B,K,D
        vlad = F.normalize(vlad, p=2.0, dim=2)  # intra-normalisation
        return F.normalize(vlad.flatten(1), p=2.0, dim=1)  # B,K*D


class NetVLAD(Retriever):
    """forward(x B,in_channels,H,W) -> B,num_clusters*512 unit-norm descriptors; embed(depth, seg) likewise."""

    family = "netvlad"
    config_class = NetVLADConfig

    def __init__(self, config: NetVLADConfig | None = None):
        super().__init__(config or NetVLADConfig())
        self.backbone = build_backbone("vgg16", self.config.encoding.in_channels)
        self.pool = NetVLADLayer(self.config.num_clusters, VGG16_CONV5_CHANNELS)

    @property
    def descriptor_size(self) -> int:
        return self.config.num_clusters * VGG16_CONV5_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone(x))  # B,C,H,W -> B,512,H/16,W/16 -> B,K*512

    def local_descriptors(self, x: torch.Tensor) -> torch.Tensor:
        """B,C,H,W -> B,H/16*W/16,512 L2-normalised conv5 descriptors (what k-means clusters)."""
        return F.normalize(self.backbone(x), p=2.0, dim=1).flatten(2).transpose(1, 2)


def load_imagenet(model: NetVLAD, path: str | os.PathLike) -> NetVLAD:
    """Load a local torchvision VGG16 ImageNet state dict, first conv adapted; conv5 only trains by default."""
    load_imagenet_backbone(model.backbone, "vgg16", path, freeze=not model.config.train_all_layers)
    return model


@torch.no_grad()
def sample_descriptors(
    model: NetVLAD, batches: Iterable[torch.Tensor], per_image: int = 100, max_descriptors: int = 50_000, seed: int = 0
) -> np.ndarray:
    """Up to `per_image` random local descriptors from each encoded map of `batches`: float32 N,512."""
    generator = torch.Generator().manual_seed(seed)
    samples, total = [], 0
    for x in batches:
        for image in model.local_descriptors(x):  # N_i,512
            keep = torch.randperm(image.shape[0], generator=generator)[:per_image]
            samples.append(image[keep.to(image.device)].cpu())
            total += len(keep)
        if total >= max_descriptors:
            break
    return torch.cat(samples)[:max_descriptors].numpy().astype(np.float32)


def kmeans(descriptors: np.ndarray, k: int, niter: int = 100, seed: int = 0) -> np.ndarray:
    """faiss k-means centroids K,D (float32) of descriptors N,D."""
    import faiss  # only needed for clustering

    clustering = faiss.Kmeans(descriptors.shape[1], k, niter=niter, seed=seed, verbose=False)
    clustering.train(np.ascontiguousarray(descriptors, dtype=np.float32))
    return clustering.centroids


def init_clusters(model: NetVLAD, batches: Iterable[torch.Tensor], niter: int = 100, seed: int = 0, **sample) -> float:
    """Initialise the NetVLAD layer from k-means over sampled descriptors; returns alpha."""
    was_training = model.training
    model.eval()
    descriptors = sample_descriptors(model, batches, seed=seed, **sample)
    if len(descriptors) < model.config.num_clusters:
        raise ValueError(f"{len(descriptors)} descriptors cannot seed {model.config.num_clusters} clusters")
    model.pool.init_params(kmeans(descriptors, model.config.num_clusters, niter, seed), descriptors)
    model.train(was_training)
    return float(model.pool.alpha)


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, margin: float = TRIPLET_MARGIN
) -> torch.Tensor:
    """Triplet margin loss of B,D anchors and positives against B,N,D negatives, averaged over all triplets."""
    count = negatives.shape[1]
    return F.triplet_margin_loss(
        anchor.unsqueeze(1).expand(-1, count, -1).flatten(0, 1),
        positive.unsqueeze(1).expand(-1, count, -1).flatten(0, 1),
        negatives.flatten(0, 1),
        margin=margin,
        p=2,
    )
