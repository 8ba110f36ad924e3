"""What a maps table holds: the strategies that make maps, their label sets and depth conventions, and the map
specification recorded beside every maps table.

A maps table (docs/DESIGN.md, "Maps") is written by the extraction job from photos, or as ground truth by a dataset
with 3D models (the synthetic city, HoliCity). Its `MapSpec` says what its maps are: the strategy that made them,
the models, the side, and through the strategy the label set of `seg` and the convention of `depth`. Every job that
reads maps (training, indexing, evaluation) compares the spec it was built for with the table's and refuses a
mismatch, so a retriever never silently embeds maps of another kind than it learned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from vprlib.cli import help_text

# Label sets of `seg`: name -> class names. ADE20K ids are 0-based as SegFormer outputs them (150 classes; only the
# count matters here). refined4 is the synthetic refiner's output and the ground truth's: HoliCity's road is merged
# into terrain (paper III-A).
REFINED_CLASSES = ("sky", "building", "terrain", "tree")
ADE20K_NUM_CLASSES = 150
SEG_CLASSES = {"ade20k": ADE20K_NUM_CLASSES, "refined4": len(REFINED_CLASSES)}
IGNORE_LABEL = 255  # a ground-truth pixel of no refined class (HoliCity's "others"): losses and metrics skip it

# Conventions of `depth` (float32 per pixel).
DEPTH_CONVENTIONS = {
    "relative-inverse": "D's relative inverse depth, min-max normalised per image to [0, 1], larger = closer",
    "inverse-metres": "inverse depth in 1/metres, larger = closer, 0 where there is no geometry (sky)",
}


@dataclass(frozen=True)
class Strategy:
    """How one kind of maps is made, and what its maps are."""

    stages: tuple[str, ...]  # extraction stages in order (vprlib.extract.stages.STAGES); () = not extracted
    models: tuple[str, ...]  # model roles loaded (vprlib.models.registry.ROLES)
    seg_classes: str  # a key of SEG_CLASSES
    depth: str  # a key of DEPTH_CONVENTIONS
    outputs: tuple[str, ...] = ("depth", "seg", "dynamic_fraction")  # batch keys written per row
    optional_outputs: tuple[str, ...] = ()  # written when the spec asks (seg_probabilities)
    summary: str = ""


STRATEGIES: dict[str, Strategy] = {
    "inpaint": Strategy(
        stages=("mask", "inpaint", "depth", "resegment"), models=("segmenter", "inpainter", "depth"),
        seg_classes="ade20k", depth="relative-inverse",
        summary="paper III-B: mask dynamic objects with S, inpaint them with LaMa, then D and S on the result"),
    "synthetic": Strategy(
        stages=("depth", "segment", "refine"), models=("segmenter", "depth", "refiners"),
        seg_classes="refined4", depth="inverse-metres", optional_outputs=("seg_prob",),
        summary="paper III-A: D and S refined by the two U-Nets trained on ground truth"),
    "none": Strategy(
        stages=("depth", "segment"), models=("segmenter", "depth"), seg_classes="ade20k", depth="relative-inverse",
        summary="D and S unrefined: the ablation, and the refiners' training input"),
    "ground-truth": Strategy(
        stages=(), models=(), seg_classes="refined4", depth="inverse-metres",
        summary="a dataset's exact static maps from its 3D model (synthetic city, HoliCity): the refiners' targets"),
}
EXTRACTION_STRATEGIES = tuple(name for name, strategy in STRATEGIES.items() if strategy.stages)



@dataclass(frozen=True)
class MapSpec:
    """What a maps table's maps are; recorded as `_map_spec.json` beside it (with the models' identity)."""

    strategy: str = field(default="inpaint", metadata=help_text(
        "; ".join(f"{name}: {STRATEGIES[name].summary}" for name in EXTRACTION_STRATEGIES)))
    models: str = field(default="paper", metadata=help_text(
        "paper (published weights), tiny (small random, offline), paper-random (paper-size architectures, random "
        "weights: benchmarks) or a local models folder"))
    side: int = field(default=512, metadata=help_text("maps are side x side pixels (paper: 512, HoliCity's size)"))
    segmenter_side: int = field(default=0, metadata=help_text(
        "side the segmenter sees (0 = the side its checkpoint was trained at: the paper's OpenMMLab SegFormer 512, "
        "the Hugging Face one 640)"))
    dilation: int = field(default=0, metadata=help_text("pixels the dynamic-object mask is grown by before LaMa"))
    seg_probabilities: bool = field(default=False, metadata=help_text(
        "synthetic: also store the refined 4-class probabilities (float16)"))
    rgb: bool = field(default=False, metadata=help_text(
        "also store the photo at the maps' side (column `rgb`, PNG; inpaint: the inpainted photo): what a retriever "
        "with --input rgb sees, the appearance baseline the geometry is compared with"))

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.side < 1:
            raise ValueError(f"side must be >= 1, got {self.side}")
        if self.dilation < 0 or self.segmenter_side < 0:
            raise ValueError("dilation and segmenter_side must be >= 0")

    @property
    def plan(self) -> Strategy:
        return STRATEGIES[self.strategy]

    @property
    def seg_classes(self) -> str:
        return self.plan.seg_classes

    @property
    def num_classes(self) -> int:
        return SEG_CLASSES[self.seg_classes]

    @property
    def depth(self) -> str:
        return self.plan.depth

    @property
    def outputs(self) -> tuple[str, ...]:
        """The batch keys each row's maps are written from."""
        return (self.plan.outputs + (self.plan.optional_outputs if self.seg_probabilities else ())
                + (("image",) if self.rgb else ()))

    def record(self, models_identity: dict[str, str]) -> dict:
        """The JSON object written beside a maps table: these fields, the derived conventions and the identity."""
        return {**asdict(self), "seg_classes": self.seg_classes, "depth": self.depth,
                "models_identity": dict(models_identity)}

    @classmethod
    def from_record(cls, record: dict) -> MapSpec:
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


# Fields of two recorded specs that must agree for maps to be used together (by a retriever trained on one and
# indexing the other, say). `models` is compared through the identity, which says what was loaded.
COMPATIBLE_FIELDS = ("strategy", "side", "seg_classes", "depth", "models_identity")


def spec_mismatch(expected: dict, actual: dict, fields_: tuple[str, ...] = COMPATIBLE_FIELDS) -> str:
    """'' when two recorded specs agree on `fields_`, else one line naming each difference."""
    diffs = [f"{name}: {expected.get(name)!r} != {actual.get(name)!r}" for name in fields_
             if expected.get(name) != actual.get(name)]
    return "; ".join(diffs)


def to_inverse_metres(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres (0 or not finite where there is no geometry) -> the `inverse-metres` convention, float32."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    valid = np.isfinite(depth_m) & (depth_m > 0)
    return np.divide(1.0, depth_m, out=np.zeros_like(depth_m), where=valid)
