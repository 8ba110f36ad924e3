"""Semantic segmenter S: SegFormer-B5 trained on ADE20K (150 classes), as in the paper (III, [19] Xie et al. 2021).

`Segmenter` wraps a `transformers.SegformerForSemanticSegmentation` and does its image processor's work on tensors,
in batch, on the model's device (see `hf_image`): the uint8 resize to the side the checkpoint was trained at, then
ImageNet mean/std normalisation; `labels`/`probabilities` upsample the logits bilinearly to the output size, as
`SegformerImageProcessor.post_process_semantic_segmentation` does. Outputs are float32 whatever the precision.

Input side: each checkpoint runs at the side it was trained at unless asked otherwise. The paper names the
"MIT-B5 512x512" ADE20K checkpoint, so `input_size` defaults to 512; the Hugging Face checkpoint
`nvidia/segformer-b5-finetuned-ade-640-640` was trained at 640 and its processor resizes to 640:
`segmenter_config_from_processor` reads that from the processor config saved with it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from vprlib.models.hf_image import HFImageModel, processor_settings

NUM_ADE20K_CLASSES = 150
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Architectures by name. "b5" is exactly the config of nvidia/segformer-b5-finetuned-ade-640-640 (~85M parameters);
# "tiny" is a small random-weight stand-in for tests and CPU runs.
SEGFORMER_ARCHS: dict[str, dict] = {
    "b5": dict(
        depths=[3, 6, 40, 3],
        hidden_sizes=[64, 128, 320, 512],
        num_attention_heads=[1, 2, 5, 8],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[4, 4, 4, 4],
        decoder_hidden_size=768,
    ),
    "tiny": dict(
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 2],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=32,
    ),
}


@dataclass(frozen=True)
class SegmenterConfig:
    input_size: int = 512  # side photos are resized to (the checkpoint's training side: OpenMMLab 512, HF 640)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the SegFormer processor's normalisation
    std: tuple[float, float, float] = IMAGENET_STD
    bf16: bool = True  # bf16 autocast on CUDA (outputs stay float32)
    resample: str = "bilinear"  # the processor's resize filter


def segmenter_config_from_processor(source: str, **overrides) -> SegmenterConfig:
    """The SegmenterConfig a Hugging Face checkpoint's saved image processor implies (folder or cached hub id):
    for nvidia/segformer-b5-finetuned-ade-640-640, 640 bilinear with ImageNet mean/std. `overrides` win."""
    return SegmenterConfig(**{**processor_settings(source), **overrides})


def segformer_architecture(name: str) -> SegformerConfig:
    """The `SegformerConfig` of a named architecture with ADE20K's 150 labels."""
    if name not in SEGFORMER_ARCHS:
        raise ValueError(f"unknown SegFormer architecture {name!r}; known: {sorted(SEGFORMER_ARCHS)}")
    return SegformerConfig(num_labels=NUM_ADE20K_CLASSES, **SEGFORMER_ARCHS[name])


def build_segformer(name: str, seed: int = 0) -> SegformerForSemanticSegmentation:
    """A SegFormer of a named architecture with seeded random weights (no download)."""
    config = segformer_architecture(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SegformerForSemanticSegmentation(config)


class Segmenter(HFImageModel):
    """ADE20K segmenter. photos B,3,H,W uint8 (or float in [0,1] from uint8) -> logits B,150,S/4,S/4."""

    def __init__(self, model: SegformerForSemanticSegmentation, config: SegmenterConfig = SegmenterConfig()):
        super().__init__(model, config)

    @property
    def num_classes(self) -> int:
        return self.model.config.num_labels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images).logits.float()  # B,150,S/4,S/4

    def _upsampled_logits(self, images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
        size = tuple(images.shape[-2:]) if size is None else tuple(size)
        return F.interpolate(self(images), size=size, mode="bilinear", align_corners=False)

    def probabilities(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class probabilities B,150,H,W at `size` (default: the images' size)."""
        return self._upsampled_logits(images, size).softmax(dim=1)

    def labels(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """ADE20K 0-based labels int64 B,H,W at `size` (default: the images' size), as HF's post-processing."""
        return self._upsampled_logits(images, size).argmax(dim=1)
