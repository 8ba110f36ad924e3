"""How well a models preset (the demo's, or any `--models`) segments, estimates depth and inpaints a synthetic city's
held-out captures, run in this process as the extraction job's `inpaint` chain runs them (vprlib.extract.stages):

- segmenter: mIoU (and per-class IoU, pixel accuracy) over the ADE20K classes the city uses, against `obs_seg`;
- depth: depth.depth_metrics against `obs_depth` (per image after scale-shift alignment: RMSE of inverse depth,
  RMSE of the min-max normalised maps, AbsRel, delta < 1.25, Pearson), averaged over images;
- inpainter: the segmenter's dynamic pixel share on the photos (S(x)), after inpainting its dynamic mask (S(y):
  what the maps keep), and the ground truth's; with the city's static RGB also the L1 and PSNR of the inpainted
  pixels inside the true dynamic mask, inpainting that mask.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import torch

from vprlib.demo.city import ADE_NAMES, STATIC_RGB
from vprlib.demo.extractors.city import city_rows, load_captures, photos
from vprlib.demo.extractors.depth import depth_metrics
from vprlib.demo.extractors.segmenter import CITY_CLASSES, confusion, iou_per_class
from vprlib.models import zoo
from vprlib.models.dynamic import dynamic_mask
from vprlib.storage import url_to_fs

HELD_OUT = ("database", "query")  # the city's evaluation area: places no training capture saw


def evaluate_models(city: str, models: str = zoo.DEMO, splits: tuple[str, ...] = HELD_OUT, dilation: int = 0,
                    batch_size: int = 32, limit: int = 0) -> dict:
    """The figures (module docstring) of `models` on the captures of `splits` of `city` (the first `limit`, 0 =
    all). `dilation`: pixels the dynamic mask grows by before inpainting (the extraction job's --dilation)."""
    fs, root = url_to_fs(city)
    static = fs.exists(posixpath.join(root, STATIC_RGB))
    rows = pa.concat_tables([city_rows(city, split) for split in splits])
    rows = rows.slice(0, limit) if limit else rows
    segmenter, depth, inpainter = (zoo.load(role, models) for role in zoo.SMALL_ROLES)
    keys = ("image", "labels", "depth", "dynamic") + (("static",) if static else ())
    counts, depth_rows, shares, hole, pixels = 0, [], np.zeros(3), np.zeros(3), 0
    with torch.inference_mode():
        for start in range(0, rows.num_rows, batch_size):
            part = {k: np.asarray(v) for k, v in rows.slice(start, batch_size).to_pydict().items()}
            batch = {k: torch.from_numpy(v) for k, v in load_captures(part, keys).items() if k != "image_id"}
            x, pixels = photos(batch["image"]), pixels + batch["dynamic"].numel()
            labels = segmenter.labels(x)
            counts = counts + confusion(labels, batch["labels"])
            depth_rows.append(depth_metrics(depth(x), batch["depth"]))
            shares += _dynamic_shares(segmenter, inpainter, x, labels, batch["dynamic"], dilation)
            if static:
                hole += _hole_error(inpainter, x, photos(batch["static"]), batch["dynamic"])
    return _figures(models, city, splits, rows.num_rows, pixels, counts, depth_rows, shares, hole if static else None)


def _dynamic_shares(segmenter, inpainter, x, labels, truth, dilation) -> np.ndarray:
    """Dynamic pixels (summed over the batch) by S(x), by S(y) after inpainting S(x)'s mask, and in truth."""
    mask = dynamic_mask(labels, dilation=dilation)
    after = labels.clone()
    holes = mask.flatten(1).any(dim=1)
    if bool(holes.any()):
        inpainted = inpainter(x[holes], mask[holes][:, None].float())
        after[holes] = segmenter.labels(inpainted)
    return np.array([float(dynamic_mask(labels).sum()), float(dynamic_mask(after).sum()), float(truth.sum())])


def _hole_error(inpainter, x, target, truth) -> np.ndarray:
    """Summed absolute and squared error (0-255 levels) and the count of values inside the true dynamic mask."""
    rows = truth.flatten(1).any(dim=1)
    if not bool(rows.any()):
        return np.zeros(3)
    diff = (inpainter(x[rows], truth[rows][:, None].float()) - target[rows]) * 255.0
    inside = truth[rows][:, None].expand_as(diff)
    return np.array([float(diff.abs()[inside].sum()), float(diff.pow(2)[inside].sum()), float(inside.sum())])


def _figures(models, city, splits, images, pixels, counts, depth_rows, shares, hole) -> dict:
    iou = iou_per_class(counts)
    figures = {
        "models": models, "city": city, "splits": list(splits), "images": images,
        "segmenter": {"miou": float(np.nanmean(iou)), "pixel_acc": float(np.trace(counts[:, :-1]) / counts.sum()),
                      "iou": {ADE_NAMES[c]: round(float(v), 4) for c, v in zip(CITY_CLASSES, iou, strict=True)}},
        "depth": {k: float(np.mean(np.concatenate([r[k] for r in depth_rows]))) for k in depth_rows[0]},
        "inpainter": {"dynamic_share_before": shares[0] / pixels, "dynamic_share_after": shares[1] / pixels,
                      "dynamic_share_truth": shares[2] / pixels,
                      "removed": 1.0 - shares[1] / shares[0] if shares[0] else float("nan")},
    }
    if hole is not None and hole[2]:
        mse = hole[1] / hole[2]
        figures["inpainter"] |= {"hole_l1": hole[0] / hole[2], "hole_psnr": float(10 * np.log10(255.0**2 / mse))}
    return figures


def format_figures(figures: dict) -> str:
    s, d, i = figures["segmenter"], figures["depth"], figures["inpainter"]
    hole = f"; true mask inpainted: L1 {i['hole_l1']:.1f}/255, PSNR {i['hole_psnr']:.1f} dB" if "hole_l1" in i else ""
    return "\n".join([
        f"demo evaluation: models {figures['models']} on {figures['images']} captures ({', '.join(figures['splits'])})"
        f" of {figures['city']}",
        f"segmenter: mIoU {s['miou']:.3f} over {len(s['iou'])} classes, pixel accuracy {s['pixel_acc']:.3f}; IoU "
        + ", ".join(f"{name} {v:.2f}" for name, v in s["iou"].items()),
        f"depth: RMSE {d['rmse']:.3f} (inverse depth, aligned, units of its maximum), min-max maps RMSE "
        f"{d['minmax_rmse']:.3f}, AbsRel {d['abs_rel']:.3f}, delta<1.25 {d['delta1']:.3f}, Pearson {d['pearson']:.3f}",
        f"inpainter: dynamic pixels {i['dynamic_share_before']:.2%} by the segmenter before inpainting, "
        f"{i['dynamic_share_after']:.2%} after ({i['removed']:.0%} removed); ground truth "
        f"{i['dynamic_share_truth']:.2%}{hole}",
    ])
