"""The demo extractors' training families (vprlib.train.families): each one's options, recipe and score. The three
train with AdamW, a warm-up then cosine learning rate, sized to train on a 2-core CPU (jobs/train_demo.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vprlib.cli import help_text
from vprlib.models.archs import DPT_ARCHS, LAMA_ARCHS, SEGFORMER_ARCHS
from vprlib.train.config import CpuOptions, check_known
from vprlib.train.families import Family, register


@dataclass(frozen=True)
class DemoSegmenterOptions(CpuOptions):
    """The demo segmenter (vprlib.demo.extractors.segmenter): a small SegFormer trained on a synthetic city's photos to
    their observed ADE20K labels, dynamic objects included. --maps is the city's folder (jobs/synthcity.py)."""

    arch: str = field(default="demo", metadata=help_text(f"SegFormer size: {', '.join(SEGFORMER_ARCHS)}"))
    input_size: int = field(default=128, metadata=help_text("side the segmenter sees (the city's: 128)"))
    weight_decay: float = field(default=0.01, metadata=help_text("AdamW weight decay"))

    def __post_init__(self):
        check_known("SegFormer arch", self.arch, SEGFORMER_ARCHS)


@dataclass(frozen=True)
class DemoDepthOptions(CpuOptions):
    """The demo depth estimator (vprlib.demo.extractors.depth): a small DPT-Hybrid trained on a synthetic city's photos
    to their inverse observed depth with MiDaS' scale-and-shift-invariant loss. --maps is the city's folder."""

    arch: str = field(default="demo", metadata=help_text(
        f"DPT size: {', '.join(DPT_ARCHS)} (each sees photos at its own side: demo 128, tiny 64)"))
    weight_decay: float = field(default=0.01, metadata=help_text("AdamW weight decay"))

    def __post_init__(self):
        check_known("DPT arch", self.arch, DPT_ARCHS)


@dataclass(frozen=True)
class DemoInpainterOptions(CpuOptions):
    """The demo inpainter (vprlib.demo.extractors.inpainter): a small Big-LaMa generator trained on a synthetic city to
    fill its dynamic objects with the static scene. --maps is a city generated with --static-rgb."""

    arch: str = field(default="demo", metadata=help_text(f"LaMa size: {', '.join(LAMA_ARCHS)}"))
    weight_decay: float = field(default=0.0, metadata=help_text("AdamW weight decay"))
    max_dilation: int = field(default=2, metadata=help_text(
        "the training hole is the dynamic mask grown by 0 to this many pixels (drawn per batch)"))
    boxes: int = field(default=2, metadata=help_text("up to this many random rectangles added to each training hole"))
    outside_weight: float = field(default=0.1, metadata=help_text(
        "weight of the L1 loss outside the hole (the generator's output there is discarded when blended)"))

    def __post_init__(self):
        check_known("LaMa arch", self.arch, LAMA_ARCHS)
        if self.max_dilation < 0 or self.boxes < 0 or self.outside_weight < 0:
            raise ValueError("max_dilation, boxes and outside_weight must be >= 0")


register(Family("demo-segmenter", DemoSegmenterOptions, "vprlib.demo.extractors.segmenter", score="miou",
                higher_is_better=True, epochs=50, lr=2e-3, batch_size=16))
register(Family("demo-depth", DemoDepthOptions, "vprlib.demo.extractors.depth", score="rmse", higher_is_better=False,
                epochs=40, lr=5e-4, batch_size=16))
register(Family("demo-inpainter", DemoInpainterOptions, "vprlib.demo.extractors.inpainter", score="hole_l1",
                higher_is_better=False, epochs=40, lr=2e-3, batch_size=16))
