"""Parameter counts and CPU forward times of every model of the pipeline at the paper's sizes.

Models: SegFormer-B5, DPT-Hybrid, Big-LaMa ("paper-random" of vprlib.models.zoo), the two refiners
(paper Fig. 3), CosPlace with each backbone (depth + label map, descriptor 512) and NetVLAD (VGG16,
64 clusters), all with random weights. Each network runs at --side (the segmenter is set to that
side instead of resizing up to 512), except DPT-Hybrid, whose position embeddings fix its input
at 384: it resizes every image to 384 as in real use ("net side" column). Time: median of --repeats
forwards after one warm-up, which also counts FLOPs (torch.utils.flop_counter, 2 per multiply-add).

    python benchmarks/model_sizes.py [--side 128] [--batch 8] [--repeats 3] [--threads 1] [--only cosplace-resnet18]
"""

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from vprlib.models import zoo
from vprlib.models.cosplace import BACKBONES, CosPlace, CosPlaceConfig
from vprlib.models.netvlad import NetVLAD
from vprlib.models.refiner import PAPER_DEPTH, PAPER_SEG, DualEncoderUNet
from vprlib.models.segformer import Segmenter

# A case builds (model, inputs(batch, side) -> tuple of tensors).
Case = tuple[torch.nn.Module, Callable[[int, int], tuple[torch.Tensor, ...]]]


def _images(batch: int, side: int) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 3, side, side),)


def _image_and_mask(batch: int, side: int) -> tuple[torch.Tensor, ...]:
    mask = (torch.rand(batch, 1, side, side) > 0.8).float()
    return torch.rand(batch, 3, side, side), mask


def _depth_and_label(batch: int, side: int) -> tuple[torch.Tensor, ...]:
    return torch.rand(batch, 1, side, side), torch.rand(batch, 1, side, side)


def _maps(channels: int) -> Callable[[int, int], tuple[torch.Tensor, ...]]:
    return lambda batch, side: (torch.rand(batch, channels, side, side),)


def segformer_case(side: int) -> Case:
    loaded = zoo.load_segmenter("paper-random")
    return Segmenter(loaded.model, replace(loaded.config, input_size=side)).eval(), _images


def dpt_case(side: int) -> Case:
    return zoo.load_depth("paper-random"), _images


def cosplace_case(backbone: str) -> Callable[[int], Case]:
    def build(side: int) -> Case:
        model = CosPlace(CosPlaceConfig(backbone=backbone)).eval()
        return model, _maps(model.config.encoding.in_channels)

    return build


def netvlad_case(side: int) -> Case:
    model = NetVLAD().eval()
    return model, _maps(model.config.encoding.in_channels)


CASES: dict[str, Callable[[int], Case]] = {
    "segformer-b5": segformer_case,
    "dpt-hybrid": dpt_case,
    "big-lama": lambda side: (zoo.load_inpainter("paper-random"), _image_and_mask),
    "refiner-depth": lambda side: (DualEncoderUNet(PAPER_DEPTH).eval(), _depth_and_label),
    "refiner-seg": lambda side: (DualEncoderUNet(PAPER_SEG).eval(), _depth_and_label),
    **{f"cosplace-{name}": cosplace_case(name) for name in BACKBONES},
    "netvlad-vgg16": netvlad_case,
}


@torch.no_grad()
def measure(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> tuple[float, float]:
    """(GFLOP per forward, median seconds per forward) after a warm-up forward that counts FLOPs."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(*inputs)
        times.append(time.perf_counter() - start)
    return counter.get_total_flops() / 1e9, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=128, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="models to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), batch {args.batch} at {args.side}x{args.side}, fp32, random weights")
    print(f"| model | params (M) | net side | GFLOP/batch | forward s (median of {args.repeats}) | images/s |")
    print("|---|---|---|---|---|---|")
    for name in args.only or CASES:
        model, make_inputs = CASES[name](args.side)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflop, seconds = measure(model, make_inputs(args.batch, args.side), args.repeats)
        side = getattr(model, "input_size", args.side)
        row = f"| {name} | {params:.2f} | {side} | {gflop:.1f} | {seconds:.3f} | {args.batch / seconds:.1f} |"
        print(row, flush=True)
        del model


if __name__ == "__main__":
    main()
