"""The demo inpainter: a small Big-LaMa generator (lama.LAMA_ARCHS["demo"]) trained on a synthetic city to fill the
dynamic objects' pixels with what the same capture shows without them (`rgb_static/`, jobs/synthcity.py
--static-rgb). The hole is the dynamic mask grown by 0 to `max_dilation` pixels (the segmenter's masks miss object
borders by a pixel or two) plus up to `boxes` random rectangles (more holes to learn from: dynamic objects cover
about 4% of the pixels). Loss: L1 inside the hole, plus `outside_weight` times L1 on the rest of the generator's
output (discarded when blended, an easy auxiliary signal). Validation: L1 and PSNR inside the true dynamic mask."""

from __future__ import annotations

import numpy as np
import torch

from vprlib.demo.extractors.city import in_order, photos, prepare_city
from vprlib.demo.extractors.loop import Recipe, train_loop
from vprlib.models.dynamic import dilate_mask
from vprlib.models.lama import LAMA_ARCHS, LamaGenerator, LamaInpainter, LamaNet
from vprlib.train.config import TrainConfig
from vprlib.train.loop import Prepared

KEYS = ("image", "static", "dynamic")


def architecture(config: TrainConfig) -> dict:
    return {"family": "lama", "arch": config.options.arch}


def build(config: TrainConfig) -> LamaInpainter:
    arch = LAMA_ARCHS[config.options.arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return LamaInpainter(LamaNet(LamaGenerator(arch)), arch)


def prepare(config: TrainConfig) -> Prepared:
    return prepare_city(config, KEYS, f"inpainter ({config.options.arch})", architecture(config), need_static=True)


def random_boxes(shape: tuple[int, int, int], count: int, generator: torch.Generator) -> torch.Tensor:
    """B,H,W bool: up to `count` rectangles per image, 1/32 to 1/3 of the side each way, in the lower 3/4 (where
    the city's vehicles and people stand)."""
    b, h, w = shape
    mask = torch.zeros(shape, dtype=torch.bool)
    for i in range(b):
        for _ in range(int(torch.randint(0, count + 1, (1,), generator=generator))):
            bh, bw = (int(torch.randint(max(1, s // 32), s // 3 + 1, (1,), generator=generator)) for s in (h, w))
            top = int(torch.randint(h // 4, max(h // 4 + 1, h - bh + 1), (1,), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
            mask[i, top : top + bh, left : left + bw] = True
    return mask


def training_hole(dynamic: torch.Tensor, generator: torch.Generator, max_dilation: int, boxes: int) -> torch.Tensor:
    """The dynamic mask grown by a random 0..max_dilation pixels per batch, plus random boxes (B,H,W bool)."""
    grow = int(torch.randint(0, max_dilation + 1, (1,), generator=generator))
    return dilate_mask(dynamic, grow) | random_boxes(tuple(dynamic.shape), boxes, generator).to(dynamic.device)


def loss(model, batch: dict, generator: torch.Generator, options) -> torch.Tensor:
    """`options`: the family's (max_dilation, boxes, outside_weight)."""
    hole = training_hole(batch["dynamic"], generator, options.max_dilation, options.boxes)[:, None].float()
    image, target = photos(batch["image"]), photos(batch["static"])
    net = model.module.net if hasattr(model, "module") else model.net
    generated = net.generator(torch.cat([image * (1 - hole), hole], dim=1))
    error = (generated - target).abs().mean(dim=1, keepdim=True)
    inside = (error * hole).sum() / hole.sum().clamp(min=1)
    outside = (error * (1 - hole)).sum() / (1 - hole).sum().clamp(min=1)
    return inside + options.outside_weight * outside


def validate(model: LamaInpainter, data: dict) -> dict:
    """L1 (0-255 levels) and PSNR (dB) of the blended output inside the true dynamic mask, over the captures that
    have one."""
    errors, squares, pixels = 0.0, 0.0, 0
    for batch in in_order(data, 32):
        hole = batch["dynamic"]
        if not bool(hole.any()):
            continue
        out = model(photos(batch["image"]), hole[:, None].float())
        diff = (out - photos(batch["static"])) * 255.0
        inside = hole[:, None].expand_as(diff)
        errors += float(diff.abs()[inside].sum())
        squares += float(diff.pow(2)[inside].sum())
        pixels += int(inside.sum())
    mse = squares / max(pixels, 1)
    return {"hole_l1": errors / max(pixels, 1), "hole_psnr": float(10 * np.log10(255.0**2 / max(mse, 1e-12)))}


FAMILY = Recipe("inpainter", build, loss, validate, context=lambda train, config: config.options)


def train_func(payload: dict) -> None:
    train_loop(payload, FAMILY)
