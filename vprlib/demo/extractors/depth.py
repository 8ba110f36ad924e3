"""The demo depth estimator: a small DPT-Hybrid (dpt.DPT_ARCHS["demo"]) trained on a synthetic city's photos to the
inverse of their observed depth (`obs_depth`, with the dynamic objects; sky, depth 0, is inverse depth 0: the
farthest), with MiDaS' scale-and-shift-invariant loss (Ranftl et al., TPAMI 2022, eq. 5-7 and 11): prediction and
target are each normalised per image by their median and mean absolute deviation, then the mean absolute difference
plus a multi-scale gradient-matching term. So, like MiDaS' DPT, it predicts inverse depth up to scale and shift, and
`normalize_depth` of its output approaches the min-max normalised ground truth. The normalisation keeps the sign
(unlike a least-squares fit, which may turn the prediction upside down): the output grows with inverse depth, as
DPT's final ReLU needs. Validation: the metrics of `depth_metrics`, chosen by `rmse`."""

from __future__ import annotations

import numpy as np
import torch

from vprlib.demo.extractors.city import in_order, photos, prepare_city
from vprlib.demo.extractors.loop import Recipe, train_loop
from vprlib.models.dpt import DepthConfig, DepthEstimator, build_dpt, dpt_architecture, normalize_depth
from vprlib.train.config import TrainConfig
from vprlib.train.loop import Prepared

KEYS = ("image", "depth")
GRADIENT_SCALES = 4  # MiDaS: the gradient-matching term at full, 1/2, 1/4 and 1/8 resolution
FARTHEST_M = 1000.0  # predicted depth is capped here in the metrics (the city's ground reaches 1 km)


def architecture(config: TrainConfig) -> dict:
    arch = config.options.arch
    return {"family": "dpt", "arch": arch, "input_size": dpt_architecture(arch).image_size}


def build(config: TrainConfig) -> DepthEstimator:
    """The estimator, its head's last bias at 1 so the ReLU after it starts open (a closed one passes no gradient)."""
    arch = config.options.arch
    model = build_dpt(arch, config.seed)
    torch.nn.init.constant_(model.head.head[-2].bias, 1.0)
    return DepthEstimator(model, DepthConfig(input_size=dpt_architecture(arch).image_size))


def prepare(config: TrainConfig) -> Prepared:
    arch = architecture(config)
    return prepare_city(config, KEYS, f"depth ({config.options.arch} at {arch['input_size']} px)", arch)


def inverse_depth(metres: torch.Tensor) -> torch.Tensor:
    """1 / metres, 0 where there is no geometry (sky)."""
    return torch.where(metres > 0, 1.0 / metres.clamp(min=1e-6), torch.zeros_like(metres))


def align(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`prediction` (B,H,W) scaled and shifted per image to fit `target` best in least squares."""
    p, t = prediction.flatten(1).double(), target.flatten(1).double()
    n = p.shape[1]
    a00, a01, b0, b1 = (p * p).sum(1), p.sum(1), (p * t).sum(1), t.sum(1)
    det = a00 * n - a01 * a01
    flat = det.abs() < 1e-12  # a constant prediction: the best fit is the target's mean
    det = torch.where(flat, torch.ones_like(det), det)
    scale = torch.where(flat, torch.zeros_like(det), (n * b0 - a01 * b1) / det)
    shift = torch.where(flat, b1 / n, (a00 * b1 - a01 * b0) / det)
    return (scale[:, None, None] * prediction.double() + shift[:, None, None]).to(prediction.dtype)


def normalise(depth: torch.Tensor) -> torch.Tensor:
    """MiDaS' scale-and-shift normalisation of B,H,W maps: minus the median, over the mean absolute deviation."""
    flat = depth.flatten(1)
    shift = flat.median(dim=1, keepdim=True).values
    scale = (flat - shift).abs().mean(dim=1, keepdim=True).clamp(min=1e-6)
    return ((flat - shift) / scale).view_as(depth)


def ssi_loss(prediction: torch.Tensor, target: torch.Tensor, gradient_weight: float) -> torch.Tensor:
    """MiDaS' scale-and-shift-invariant loss: mean absolute difference of the `normalise`d maps, plus
    `gradient_weight` times the mean absolute gradient of that difference at GRADIENT_SCALES scales."""
    residual = normalise(prediction) - normalise(target)
    loss = residual.abs().mean()
    for scale in range(GRADIENT_SCALES):
        r = residual[:, :: 2**scale, :: 2**scale]
        loss = loss + gradient_weight * ((r[:, :, 1:] - r[:, :, :-1]).abs().mean()
                                         + (r[:, 1:] - r[:, :-1]).abs().mean())
    return loss


def loss(model, batch: dict, generator: torch.Generator, context=None) -> torch.Tensor:
    return ssi_loss(model(photos(batch["image"])), inverse_depth(batch["depth"]), gradient_weight=0.5)


def depth_metrics(prediction: torch.Tensor, metres: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image, the prediction (relative inverse depth, B,H,W) against the depth in metres (0 = sky):
    - rmse: RMSE of the aligned prediction against the inverse depth, over all pixels, in units of the image's
      largest inverse depth (as the maps hold it: sky 0, the nearest pixel 1);
    - minmax_rmse: RMSE of `normalize_depth` of the prediction against the min-max normalised inverse depth: the
      error of the maps the extraction job writes;
    - abs_rel, delta1: mean |d - d*| / d* and the share of max(d/d*, d*/d) < 1.25 over pixels with geometry, d the
      aligned prediction as depth (capped at FARTHEST_M), d* the truth (MiDaS' evaluation);
    - pearson: correlation of prediction and inverse depth over all pixels."""
    target = inverse_depth(metres).double()
    prediction = prediction.double()
    peak = target.flatten(1).amax(1).clamp(min=1e-9)[:, None, None]
    aligned = align(prediction, target)
    rmse = ((aligned - target) / peak).pow(2).flatten(1).mean(1).sqrt()
    minmax = (normalize_depth(prediction) - normalize_depth(target)).pow(2).flatten(1).mean(1).sqrt()
    solid = metres > 0
    depth = 1.0 / aligned.clamp(min=1.0 / FARTHEST_M)
    rel = torch.where(solid, (depth - metres).abs() / metres.clamp(min=1e-6), 0.0)
    ratio = torch.maximum(depth / metres.clamp(min=1e-6), metres / depth)
    count = solid.flatten(1).sum(1).clamp(min=1)
    p, t = prediction.flatten(1), target.flatten(1)
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    pearson = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)).clamp(min=1e-12)
    values = {"rmse": rmse, "minmax_rmse": minmax, "abs_rel": rel.flatten(1).sum(1) / count,
              "delta1": ((ratio < 1.25) & solid).flatten(1).sum(1) / count, "pearson": pearson}
    return {k: v.float().cpu().numpy() for k, v in values.items()}


def validate(model: DepthEstimator, data: dict) -> dict:
    per_image = [depth_metrics(model(photos(batch["image"])), batch["depth"]) for batch in in_order(data, 32)]
    return {k: float(np.mean(np.concatenate([m[k] for m in per_image]))) for k in per_image[0]}


FAMILY = Recipe("depth", build, loss, validate)


def train_func(payload: dict) -> None:
    train_loop(payload, FAMILY)
