"""The demo segmenter: a small SegFormer (segformer.SEGFORMER_ARCHS["demo"]) trained on a synthetic city's photos
to their observed ADE20K labels (`obs_seg`: the static classes and the dynamic objects). The loss is cross-entropy
over the 150 ADE20K classes at the labels' side, the logits upsampled as `Segmenter.labels` does, with two economies:
the 139 classes the city never shows are pooled into one logit (their log-sum-exp) before upsampling, so 12 channels
are upsampled rather than 150 (an upper bound of the full loss, log-sum-exp being convex, and no looser than
interpolating a log-sum-exp can be); and the city's classes are weighted by inverse square-root frequency (persons
and bicycles are rare). Validation: mIoU over the city's classes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vprlib.demo.city import ADE_NAMES
from vprlib.demo.extractors.city import in_order, photos, prepare_city
from vprlib.demo.extractors.loop import Recipe, train_loop
from vprlib.models.segformer import Segmenter, SegmenterConfig, build_segformer
from vprlib.spec import ADE20K_NUM_CLASSES
from vprlib.train.config import TrainConfig
from vprlib.train.loop import Prepared

CITY_CLASSES = tuple(sorted(ADE_NAMES))  # the ADE20K ids the synthetic city uses
KEYS = ("image", "labels")


def architecture(config: TrainConfig) -> dict:
    return {"family": "segformer", "arch": config.options.arch, "input_size": config.options.input_size}


def build(config: TrainConfig) -> Segmenter:
    o = config.options
    return Segmenter(build_segformer(o.arch, config.seed), SegmenterConfig(input_size=o.input_size))


def prepare(config: TrainConfig) -> Prepared:
    return prepare_city(config, KEYS, f"segmenter ({config.options.arch} at {config.options.input_size} px)",
                        architecture(config))


OTHERS = tuple(c for c in range(ADE20K_NUM_CLASSES) if c not in CITY_CLASSES)
IGNORE = -100  # F.cross_entropy's ignore_index: a label of no city class (none in a synthetic city)


def city_index(labels: torch.Tensor) -> torch.Tensor:
    """ADE20K ids -> their index in CITY_CLASSES (int64), IGNORE for any other id."""
    lookup = torch.full((256,), IGNORE, dtype=torch.long, device=labels.device)
    lookup[list(CITY_CLASSES)] = torch.arange(len(CITY_CLASSES), device=labels.device)
    return lookup[labels.long()]


def class_weights(labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy weights of the city's classes and the pooled others (len(CITY_CLASSES) + 1): each class by
    1/sqrt(its pixel share), scaled to a pixel-weighted mean of 1; classes absent from `labels` (and the pooled
    others, never a target) 1."""
    index = city_index(labels).flatten()
    counts = torch.bincount(index[index != IGNORE], minlength=len(CITY_CLASSES) + 1).double()
    present = counts > 0
    weights = torch.ones(len(counts), dtype=torch.float64)
    weights[present] = (counts[present] / counts.sum()).rsqrt()
    weights[present] /= (weights[present] * counts[present]).sum() / counts.sum()
    return weights.float()


def loss(model, batch: dict, generator: torch.Generator, weights: torch.Tensor) -> torch.Tensor:
    labels = batch["labels"]
    logits = model(photos(batch["image"]))  # B,150,S/4,S/4
    pooled = torch.cat([logits[:, list(CITY_CLASSES)], logits[:, list(OTHERS)].logsumexp(1, keepdim=True)], dim=1)
    pooled = F.interpolate(pooled, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(pooled, city_index(labels), weight=weights.to(pooled.device), ignore_index=IGNORE)


def confusion(predicted: torch.Tensor, truth: torch.Tensor, classes: tuple[int, ...] = CITY_CLASSES) -> np.ndarray:
    """C x C+1 pixel counts of (true class, predicted class) over `classes`; the last column: any other class."""
    lookup = torch.full((256,), len(classes), dtype=torch.long, device=truth.device)
    lookup[list(classes)] = torch.arange(len(classes), device=truth.device)
    t, p = lookup[truth.long().flatten()], lookup[predicted.long().clamp(0, 255).flatten()]
    keep = t < len(classes)
    counts = torch.bincount(t[keep] * (len(classes) + 1) + p[keep], minlength=len(classes) * (len(classes) + 1))
    return counts.reshape(len(classes), len(classes) + 1).cpu().numpy()


def iou_per_class(counts: np.ndarray) -> np.ndarray:
    """IoU of each class of a `confusion` matrix; NaN for a class absent from both truth and prediction."""
    hits = np.diag(counts[:, :-1]).astype(np.float64)
    union = counts.sum(axis=1) + counts[:, :-1].sum(axis=0) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def validate(model: Segmenter, data: dict) -> dict:
    counts = sum(confusion(model.labels(photos(batch["image"])), batch["labels"]) for batch in in_order(data, 32))
    iou = iou_per_class(counts)
    pixels = counts.sum()
    return {"miou": float(np.nanmean(iou)), "pixel_acc": float(np.trace(counts[:, :-1]) / pixels)}


FAMILY = Recipe("segmenter", build, loss, validate, context=lambda train, config: class_weights(train["labels"]))


def train_func(payload: dict) -> None:
    train_loop(payload, FAMILY)
