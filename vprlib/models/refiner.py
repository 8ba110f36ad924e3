"""Dual-encoder U-Net refiners of the synthetic refining strategy (paper section III-A, Fig. 3).

Two encoders of the same structure, one for the initial segmentation map and one for the initial
depth map, each a chain of double convolutions (3x3 conv, BN, ReLU, twice) with a MaxPool between
blocks: 32 channels first, doubled after each pool. At a 512x512 input each encoder ends at
32x32x512; both are concatenated into 32x32x1024 (the first decoder block). Every further decoder
block upsamples with a transposed convolution that halves the channels, concatenates the two
encoders' skips of that scale (together as wide as the upsampled tensor) and halves the channels
again with a double convolution; a final 1x1 convolution maps 64 channels to the output: 1 for
refined depth (F_d), 4 for the refined segmentation logits (F_s: sky, building, terrain, tree).

`build_refiners(arch, seed)` builds a seeded random pair ("tiny" or "paper" size) and `load_refiner(path)` one
refiner from a state dict written by training; `vprlib.models.zoo.load_refiners(models)` picks between them.
"""

from __future__ import annotations

import os
from dataclasses import replace
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from vprlib.models.archs import REFINER_ARCHS, RefinerConfig
from vprlib.spec import REFINED_CLASSES

DEPTH_FILE = "refiner_depth.pt"
SEG_FILE = "refiner_seg.pt"


PAPER_DEPTH = RefinerConfig(out_channels=1)
PAPER_SEG = RefinerConfig(out_channels=len(REFINED_CLASSES))


class DoubleConv(nn.Sequential):
    """(3x3 conv, BN, ReLU) twice; the first conv sets the width, the second keeps it."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """One modality's encoder: DoubleConv, then (MaxPool, DoubleConv) per further level."""

    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__()
        blocks = [DoubleConv(in_channels, widths[0])]
        blocks += [nn.Sequential(nn.MaxPool2d(2), DoubleConv(a, b)) for a, b in pairwise(widths)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features  # level i: B, base*2^i, H/2^i, W/2^i


class UpBlock(nn.Module):
    """Decoder block: transposed conv (C -> C/2, 2x size), concat both encoders' skips (C/2), DoubleConv -> C/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        half = in_channels // 2
        self.up = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * half, half)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class DualEncoderUNet(nn.Module):
    """Refiner F_d or F_s (paper Fig. 3): forward(depth B,1,H,W, seg B,Cs,H,W) -> B,out,H,W.

    The depth refiner returns depth, the segmentation refiner class logits (softmax gives the
    probabilities of REFINED_CLASSES). Any H, W works: inputs are padded to a multiple of
    2^(levels-1) and the output is cropped back.
    """

    def __init__(self, config: RefinerConfig = PAPER_DEPTH):
        super().__init__()
        self.config = config
        widths = config.widths()
        self.seg_encoder = Encoder(config.seg_channels, widths)
        self.depth_encoder = Encoder(config.depth_channels, widths)
        # Block i maps 2*widths[i] -> widths[i-1]*2 channels: the concatenated bottom is 2*widths[-1].
        self.decoder = nn.ModuleList(UpBlock(2 * w) for w in reversed(widths[1:]))
        self.head = nn.Conv2d(2 * widths[0], config.out_channels, kernel_size=1)

    def forward(self, depth: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        height, width = depth.shape[-2:]
        depth, seg = _pad_to_multiple(depth, seg, multiple=2 ** (self.config.levels - 1))
        seg_features = self.seg_encoder(seg)
        depth_features = self.depth_encoder(depth)
        skips = [torch.cat(pair, dim=1) for pair in zip(seg_features, depth_features, strict=True)]
        x = skips[-1]  # first decoder block: B, 2*512, H/16, W/16 in the paper
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = block(x, skip)  # e.g. B,512,64,64 -> B,256,128,128
        return self.head(x)[..., :height, :width]  # B, out, H, W


def _pad_to_multiple(depth: torch.Tensor, seg: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replicate-pad both maps at the bottom/right so their sides divide by `multiple`."""
    height, width = depth.shape[-2:]
    pad = (0, -width % multiple, 0, -height % multiple)
    if not any(pad):
        return depth, seg
    return F.pad(depth, pad, mode="replicate"), F.pad(seg, pad, mode="replicate")


def config_from_state_dict(state: dict[str, torch.Tensor]) -> RefinerConfig:
    """Recover a RefinerConfig from a DualEncoderUNet state dict (input/output widths and depth)."""
    first_seg = state["seg_encoder.blocks.0.0.weight"]  # base, seg_channels, 3, 3
    first_depth = state["depth_encoder.blocks.0.0.weight"]
    levels = 1 + sum(1 for key in state if key.startswith("decoder.") and key.endswith(".up.weight"))
    return RefinerConfig(
        depth_channels=first_depth.shape[1],
        seg_channels=first_seg.shape[1],
        out_channels=state["head.weight"].shape[0],
        base_width=first_seg.shape[0],
        levels=levels,
    )


def load_refiner(path: str | os.PathLike) -> DualEncoderUNet:
    """Build a refiner from a state dict file (read with weights_only=True), eval mode on CPU."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = DualEncoderUNet(config_from_state_dict(state))
    model.load_state_dict(state)
    return model.eval()


def build_refiners(arch: str = "tiny", seed: int = 0) -> tuple[DualEncoderUNet, DualEncoderUNet]:
    """A seeded random (F_d, F_s) pair of a named architecture (REFINER_ARCHS), in eval mode."""
    if arch not in REFINER_ARCHS:
        raise ValueError(f"unknown refiner architecture {arch!r}; known: {', '.join(REFINER_ARCHS)}")
    base = REFINER_ARCHS[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        depth = DualEncoderUNet(replace(base, out_channels=1))
        seg = DualEncoderUNet(replace(base, out_channels=len(REFINED_CLASSES)))
    return depth.eval(), seg.eval()
