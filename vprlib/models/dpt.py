"""Depth estimator D: DPT-Hybrid trained by MiDaS (paper III, [32] Ranftl et al. 2021, `Intel/dpt-hybrid-midas`).

`DepthEstimator` wraps a `transformers.DPTForDepthEstimation` (ViT-B/16 on a BiT-ResNet stem, `is_hybrid`) and does
its image processor's work on tensors in batch (see `hf_image`): the uint8 bicubic resize to 384x384 (the
processor's: no aspect ratio kept, no multiple constraint), normalisation with mean and std 0.5. It returns relative
inverse depth (larger = closer, affine-invariant as MiDaS is trained) at the output size, upsampled bicubically as
`DPTImageProcessor.post_process_depth_estimation` does (bicubic can undershoot 0 near edges: it is kept, as there),
float32 whatever the compute precision.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

from vprlib.models.hf_image import HFImageModel, processor_settings

# Architectures by name. "hybrid" is the config of Intel/dpt-hybrid-midas (~123M parameters), hard-coded so it
# builds offline; "tiny" is the same hybrid family, small, for tests and CPU runs.
DPT_ARCHS: dict[str, dict] = {
    "hybrid": dict(
        backbone=dict(
            layer_type="bottleneck",
            global_padding="same",
            depths=[3, 4, 9],
            hidden_sizes=[256, 512, 1024, 2048],
            embedding_size=64,
            num_groups=32,
            out_features=["stage1", "stage2", "stage3"],
            embedding_dynamic_padding=True,
        ),
        dpt=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            image_size=384,
            patch_size=16,
            backbone_out_indices=[2, 5, 8, 11],
            neck_hidden_sizes=[256, 512, 768, 768],
            reassemble_factors=[1, 1, 1, 0.5],
            backbone_featmap_shape=[1, 1024, 24, 24],
            fusion_hidden_size=256,
        ),
    ),
    "tiny": dict(
        backbone=dict(
            layer_type="bottleneck",
            global_padding="same",
            depths=[1, 1, 1],
            hidden_sizes=[16, 32, 64, 128],
            embedding_size=8,
            num_groups=4,
            out_features=["stage1", "stage2", "stage3"],
            embedding_dynamic_padding=True,
        ),
        dpt=dict(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=64,
            patch_size=16,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[16, 32, 32, 32],
            reassemble_factors=[1, 1, 1, 0.5],
            backbone_featmap_shape=[1, 64, 4, 4],
            fusion_hidden_size=16,
        ),
    ),
}


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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        depth = self.run(images).predicted_depth  # B,S,S
        size = tuple(images.shape[-2:])
        return F.interpolate(depth.float()[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]

    @staticmethod
    def normalize_depth(depth: torch.Tensor) -> torch.Tensor:
        """See `normalize_depth`: per-image min-max to [0,1]."""
        return normalize_depth(depth)
