"""Depth estimator D: DPT-Hybrid trained by MiDaS (paper III, [32] Ranftl et al. 2021, `Intel/dpt-hybrid-midas`).

`DepthEstimator` wraps a `transformers.DPTForDepthEstimation` (ViT-B/16 on a BiT-ResNet stem, `is_hybrid`) and does
its image processor's work on tensors in batch (see `hf_image`): the uint8 bicubic resize to 384x384 (the
processor's: no aspect ratio kept, no multiple constraint), normalisation with mean and std 0.5. It returns relative
inverse depth (larger = closer, affine-invariant as MiDaS is trained) at the output size, upsampled bicubically as
`DPTImageProcessor.post_process_depth_estimation` does (bicubic can undershoot 0 near edges: it is kept, as there),
float32 whatever the compute precision.

The paper's checkpoint is MiDaS' original `dpt_hybrid-midas-501f0c75.pt` (isl-org/DPT, MiDaS v3: a timm
`vit_base_resnet50_384` under `pretrained.model.*`, the reassemble layers under `pretrained.act_postprocess*`, the
fusion decoder and head under `scratch.*`). `load_dpt_checkpoint` reads it with the renames of transformers'
conversion script (convert_dpt_hybrid_to_pytorch.py), every tensor accounted for, so it gives the outputs of the
Hugging Face conversion of the same weights; it runs with that conversion's processor settings (`DepthConfig()`).
"""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

from vprlib.models.archs import DPT_ARCHS
from vprlib.models.hf_image import HFImageModel, StrictRemap, processor_settings, read_checkpoint

MIDAS_CHECKPOINT = "dpt_hybrid-midas-501f0c75.pt"  # isl-org/DPT and MiDaS v3 release


@dataclass(frozen=True)
class DepthConfig:
    input_size: int = 384  # side images are resized to (the DPT-Hybrid processor: 384x384); a multiple of 16
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # the DPT processor's normalisation
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    bf16: bool = True  # bf16 autocast on CUDA (outputs stay float32); channels_last measured slower on an H200
    resample: str = "bicubic"  # the processor's resize filter


def depth_config_from_processor(source: str, **overrides) -> DepthConfig:
    """The DepthConfig a Hugging Face checkpoint's saved image processor implies (folder or cached hub id): for
    Intel/dpt-hybrid-midas, 384 bicubic with mean and std 0.5. `overrides` win."""
    return DepthConfig(**{**processor_settings(source), **overrides})


def dpt_architecture(name: str) -> DPTConfig:
    """The `DPTConfig` (hybrid, BiT backbone) of a named architecture."""
    if name not in DPT_ARCHS:
        raise ValueError(f"unknown DPT architecture {name!r}; known: {sorted(DPT_ARCHS)}")
    arch = DPT_ARCHS[name]
    backbone = BitConfig(**arch["backbone"])
    return DPTConfig(is_hybrid=True, readout_type="project", backbone_config=backbone, **arch["dpt"])


def build_dpt(name: str, seed: int = 0) -> DPTForDepthEstimation:
    """A DPT-Hybrid depth model of a named architecture with seeded random weights (no download)."""
    config = dpt_architecture(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DPTForDepthEstimation(config)


def normalize_depth(depth: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image min-max normalisation of relative inverse depth B,H,W to [0,1] (1 = nearest).

    MiDaS/DPT depth is only defined up to an unknown scale and shift per image, so the retriever gets the one
    representation invariant to both: (d - min) / (max - min). A constant map becomes all zeros.
    """
    flat = depth.float().flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1)
    return ((depth.float() - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)


class DepthEstimator(HFImageModel):
    """Relative inverse depth. photos B,3,H,W uint8 (or float in [0,1] from uint8) -> B,H,W float32 (larger =
    closer)."""

    def __init__(self, model: DPTForDepthEstimation, config: DepthConfig = DepthConfig()):
        if config.input_size % model.config.patch_size:
            raise ValueError(f"input_size {config.input_size} must be a multiple of {model.config.patch_size}")
        super().__init__(model, config)

    def forward(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Depth B,H,W at `size` (default: the images' size), upsampled as the processor's post-processing."""
        depth = self.run(images).predicted_depth  # B,S,S
        size = tuple(images.shape[-2:]) if size is None else tuple(size)
        return F.interpolate(depth.float()[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]

    @staticmethod
    def normalize_depth(depth: torch.Tensor) -> torch.Tensor:
        """See `normalize_depth`: per-image min-max to [0,1]."""
        return normalize_depth(depth)


# timm ViT block modules (DPT's pretrained.model.blocks.i) -> transformers DPT ViT layer modules.
_VIT_BLOCK = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
_BIT_BOTTLENECK = ("conv1", "norm1", "conv2", "norm2", "conv3", "norm3")  # one name in timm and transformers
_DPT_IGNORED = {f"pretrained.model.head.{n}": "timm ViT's ImageNet classifier, unused by DPT"
                for n in ("weight", "bias")}


def _remap_bit(remap: StrictRemap, config: DPTConfig) -> None:
    """The BiT-ResNet stem (timm ResNetV2 under the ViT's hybrid patch embedding); convolutions have no bias."""
    src, dst = "pretrained.model.patch_embed.backbone", "dpt.embeddings.backbone.bit"
    remap.copy(f"{src}.stem.conv", f"{dst}.embedder.convolution", names=("weight",))
    remap.copy(f"{src}.stem.norm", f"{dst}.embedder.norm")
    for s, depth in enumerate(config.backbone_config.depths):
        for b in range(depth):
            block, layer = f"{src}.stages.{s}.blocks.{b}", f"{dst}.encoder.stages.{s}.layers.{b}"
            names = (*_BIT_BOTTLENECK, "downsample.conv", "downsample.norm") if b == 0 else _BIT_BOTTLENECK
            for name in names:
                tensors = ("weight",) if "conv" in name else ("weight", "bias")
                remap.copy(f"{block}.{name}", f"{layer}.{name}", names=tensors)


def _remap_vit(remap: StrictRemap, config: DPTConfig) -> None:
    remap.tensor("pretrained.model.cls_token", "dpt.embeddings.cls_token")
    remap.tensor("pretrained.model.pos_embed", "dpt.embeddings.position_embeddings")
    remap.copy("pretrained.model.patch_embed.proj", "dpt.embeddings.projection")
    for i in range(config.num_hidden_layers):
        block, layer = f"pretrained.model.blocks.{i}", f"dpt.encoder.layer.{i}"
        for src, dst in _VIT_BLOCK.items():
            remap.copy(f"{block}.{src}", f"{layer}.{dst}")
        for name in ("weight", "bias"):  # timm's fused qkv, in that order
            parts = [f"{layer}.attention.attention.{p}.{name}" for p in ("query", "key", "value")]
            remap.split(f"{block}.attn.qkv.{name}", parts)
    remap.copy("pretrained.model.norm", "dpt.layernorm")


def _remap_decoder(remap: StrictRemap, config: DPTConfig) -> None:
    """Reassemble (act_postprocess), fusion (scratch.refinenet) and head (scratch.output_conv) modules."""
    stages = len(config.neck_hidden_sizes)
    for k in range(2, stages):  # hybrid: the first two reassembled maps are the ResNet's, with no weights
        post, layer = f"pretrained.act_postprocess{k + 1}", f"neck.reassemble_stage.layers.{k}"
        remap.copy(f"{post}.0.project.0", f"neck.reassemble_stage.readout_projects.{k}.0")
        remap.copy(f"{post}.3", f"{layer}.projection")
        if config.reassemble_factors[k] != 1:
            remap.copy(f"{post}.4", f"{layer}.resize")
    for k in range(stages):
        remap.copy(f"scratch.layer{k + 1}_rn", f"neck.convs.{k}", names=("weight",))
        refine, fusion = f"scratch.refinenet{stages - k}", f"neck.fusion_stage.layers.{k}"  # refinenet4 is first
        remap.copy(f"{refine}.out_conv", f"{fusion}.projection")
        for unit in (1, 2):
            for conv in (1, 2):
                remap.copy(f"{refine}.resConfUnit{unit}.conv{conv}", f"{fusion}.residual_layer{unit}.convolution{conv}")
    for i in (0, 2, 4):
        remap.copy(f"scratch.output_conv.{i}", f"head.head.{i}")


def dpt_from_released(state: Mapping[str, torch.Tensor], arch: str = "hybrid") -> DPTForDepthEstimation:
    """A transformers DPT-Hybrid (eval mode) holding a state dict in the original isl-org/DPT layout, strictly:
    KeyError names released tensors left unmapped or expected but absent, and model tensors left unfilled."""
    model = DPTForDepthEstimation(dpt_architecture(arch))
    remap = StrictRemap(state, _DPT_IGNORED, f"DPT {arch} checkpoint in the original layout")
    _remap_bit(remap, model.config)
    _remap_vit(remap, model.config)
    _remap_decoder(remap, model.config)
    return remap.load_into(model).eval()


def load_dpt_checkpoint(path, arch: str = "hybrid") -> DPTForDepthEstimation:
    """The transformers DPT (eval mode) of the original `dpt_hybrid-midas-501f0c75.pt` (a flat state dict, or one
    under "model" as DPT's own loader accepts)."""
    return dpt_from_released(read_checkpoint(path), arch)


def depth_from_checkpoint(path, arch: str = "hybrid", **config) -> DepthEstimator:
    """A DepthEstimator on the original DPT file with the Hugging Face conversion's processor settings (384
    bicubic, mean/std 0.5) unless DepthConfig fields are given."""
    return DepthEstimator(load_dpt_checkpoint(path, arch), DepthConfig(**config)).eval()
