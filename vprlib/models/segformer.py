"""Semantic segmenter S: SegFormer-B5 trained on ADE20K (150 classes), as in the paper (III, [19] Xie et al. 2021).

`Segmenter` wraps a `transformers.SegformerForSemanticSegmentation` and does its image processor's work on tensors,
in batch, on the model's device (see `hf_image`): the uint8 resize to the side the checkpoint was trained at, then
ImageNet mean/std normalisation; `labels`/`probabilities` upsample the logits bilinearly to the output size, as
`SegformerImageProcessor.post_process_semantic_segmentation` does. Outputs are float32 whatever the precision.

Checkpoints and the side each was trained at (`SegmenterConfig.input_size`; other sides only when asked for):
- the paper's "Segformer MIT-B5 512x512, ADE20K": OpenMMLab's model zoo file `PAPER_CHECKPOINT` (512);
- NVlabs' original release, e.g. `segformer.b5.640x640.ade.160k.pth` (640);
- Hugging Face `nvidia/segformer-b5-finetuned-ade-640-640` (640, from its processor config).
`load_segformer_checkpoint` reads the first two into the transformers model, every tensor accounted for. NVlabs'
keys map as transformers' own conversion script maps them. OpenMMLab's backbone is the same network under other
names (fused q/k/v, 1x1 convolutions for the MLP), but its SegformerHead is not NVlabs' head: each stage goes
through conv + BatchNorm + ReLU rather than a linear layer, stages are concatenated shallow to deep, with 256
channels for B5 (NVlabs: 768). That head is `MMSegSegformerHead`, put in place of the transformers head; the
backbone's LayerNorms get OpenMMLab's eps (1e-6). OpenMMLab's own test pipeline resizes keeping the aspect ratio
(short side 512) without antialiasing; every checkpoint here gets the processor's square resize instead, which
leaves the paper's 512x512 photos untouched.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from vprlib.models.archs import SEGFORMER_ARCHS
from vprlib.models.hf_image import HFImageModel, StrictRemap, processor_settings, read_checkpoint

NUM_ADE20K_CLASSES = 150
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_CHECKPOINT = "segformer_mit-b5_512x512_160k_ade20k_20210726_145235-94cedf59.pth"  # OpenMMLab model zoo


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


class _ConvModule(nn.Module):
    """mmcv's ConvModule as OpenMMLab's SegformerHead builds it: 1x1 conv without bias, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class MMSegSegformerHead(nn.Module):
    """OpenMMLab's SegformerHead (mmseg/models/decode_heads/segformer_head.py), with its module names, in place of
    `SegformerDecodeHead`: takes the four stage outputs, returns logits at 1/4 of the input side."""

    def __init__(self, config: SegformerConfig):
        super().__init__()
        channels = config.decoder_hidden_size
        self.convs = nn.ModuleList(_ConvModule(size, channels) for size in config.hidden_sizes)
        self.fusion_conv = _ConvModule(channels * len(config.hidden_sizes), channels)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.conv_seg = nn.Conv2d(channels, config.num_labels, kernel_size=1)

    def forward(self, encoder_hidden_states, **kwargs) -> torch.Tensor:
        size = encoder_hidden_states[0].shape[2:]
        outs = [F.interpolate(conv(x), size=size, mode="bilinear", align_corners=False)
                for conv, x in zip(self.convs, encoder_hidden_states, strict=True)]
        return self.conv_seg(self.dropout(self.fusion_conv(torch.cat(outs, dim=1))))


def segformer_layout(state: Mapping[str, torch.Tensor]) -> str:
    """"mmseg" (OpenMMLab: backbone.layers.*) or "nvlabs" (NVlabs: backbone.patch_embed1.*) for a state dict."""
    if any(key.startswith("backbone.layers.") for key in state):
        return "mmseg"
    if any(key.startswith("backbone.patch_embed1.") for key in state):
        return "nvlabs"
    raise ValueError(f"not a SegFormer checkpoint in OpenMMLab's or NVlabs' layout (first keys: {list(state)[:4]})")


def trained_input_size(path) -> int:
    """The side a released SegFormer checkpoint was trained at, from its file name: OpenMMLab
    (`segformer_mit-b5_512x512_160k_ade20k_*.pth`) and NVlabs (`segformer.b5.640x640.ade.160k.pth`) both name it."""
    match = re.search(r"(\d+)x(\d+)", Path(path).name)
    if match is None or match[1] != match[2]:
        raise ValueError(f"no square training size (like 512x512) in the checkpoint name {Path(path).name!r}")
    return int(match[1])


BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Released names, relative to one encoder block, of the transformers block modules copied one to one.
_BLOCK_MODULES = {  # transformers: (NVlabs, OpenMMLab)
    "layernorm_before": ("norm1", "norm1"),
    "attention.o_proj": ("attn.proj", "attn.attn.out_proj"),
    "layernorm_after": ("norm2", "norm2"),
    "mlp.dwconv.dwconv": ("mlp.dwconv.dwconv", "ffn.layers.1"),
}
_REDUCTION_MODULES = {  # only in stages with sr_ratio > 1
    "attention.sequence_reduction.sequence_reduction": ("attn.sr", "attn.sr"),
    "attention.sequence_reduction.layer_norm": ("attn.norm", "attn.norm"),
}


def _conv1x1_to_linear(weight: torch.Tensor) -> torch.Tensor:
    return weight.flatten(1)


def _stage_names(layout: str, i: int) -> dict[str, str]:
    """Released names of stage i (0-based): patch-embedding conv and norm, block list, closing norm."""
    if layout == "mmseg":
        base = f"backbone.layers.{i}"
        return {"proj": f"{base}.0.projection", "embed_norm": f"{base}.0.norm", "blocks": f"{base}.1",
                "norm": f"{base}.2"}
    n = i + 1
    return {"proj": f"backbone.patch_embed{n}.proj", "embed_norm": f"backbone.patch_embed{n}.norm",
            "blocks": f"backbone.block{n}", "norm": f"backbone.norm{n}"}


def _remap_block(remap: StrictRemap, layout: str, src: str, dst: str, reduction: bool) -> None:
    """One transformer block: the one-to-one modules, then attention inputs and the MLP's linear layers."""
    column = 0 if layout == "nvlabs" else 1
    for table in (_BLOCK_MODULES, _REDUCTION_MODULES) if reduction else (_BLOCK_MODULES,):
        for target, names in table.items():
            remap.copy(f"{src}.{names[column]}", f"{dst}.{target}")
    attention = f"{dst}.attention"
    if layout == "nvlabs":
        remap.copy(f"{src}.attn.q", f"{attention}.q_proj")
        for name in ("weight", "bias"):
            remap.split(f"{src}.attn.kv.{name}", [f"{attention}.k_proj.{name}", f"{attention}.v_proj.{name}"])
        remap.copy(f"{src}.mlp.fc1", f"{dst}.mlp.fc1")
        remap.copy(f"{src}.mlp.fc2", f"{dst}.mlp.fc2")
        return
    for name in ("weight", "bias"):
        remap.split(f"{src}.attn.attn.in_proj_{name}", [f"{attention}.{p}_proj.{name}" for p in "qkv"])
    remap.copy(f"{src}.ffn.layers.0", f"{dst}.mlp.fc1", weight=_conv1x1_to_linear)
    remap.copy(f"{src}.ffn.layers.4", f"{dst}.mlp.fc2", weight=_conv1x1_to_linear)


def _remap_encoder(remap: StrictRemap, layout: str, config: SegformerConfig) -> None:
    for i, depth in enumerate(config.depths):
        names, stage = _stage_names(layout, i), f"segformer.stages.{i}"
        remap.copy(names["proj"], f"{stage}.patch_embeddings.proj")
        remap.copy(names["embed_norm"], f"{stage}.patch_embeddings.layer_norm")
        for j in range(depth):
            _remap_block(remap, layout, f"{names['blocks']}.{j}", f"{stage}.blocks.{j}", config.sr_ratios[i] > 1)
        remap.copy(names["norm"], f"{stage}.layer_norm")


def _remap_head(remap: StrictRemap, layout: str, config: SegformerConfig) -> None:
    if layout == "mmseg":  # MMSegSegformerHead keeps OpenMMLab's names
        for i in range(len(config.hidden_sizes)):
            remap.copy(f"decode_head.convs.{i}.conv", f"decode_head.convs.{i}.conv", names=("weight",))
            remap.copy(f"decode_head.convs.{i}.bn", f"decode_head.convs.{i}.bn", names=BN_TENSORS)
        remap.copy("decode_head.fusion_conv.conv", "decode_head.fusion_conv.conv", names=("weight",))
        remap.copy("decode_head.fusion_conv.bn", "decode_head.fusion_conv.bn", names=BN_TENSORS)
        remap.copy("decode_head.conv_seg", "decode_head.conv_seg")
        return
    for i in range(len(config.hidden_sizes)):
        remap.copy(f"decode_head.linear_c{i + 1}.proj", f"decode_head.linear_projections.{i}.proj")
    remap.copy("decode_head.linear_fuse.conv", "decode_head.linear_fuse", names=("weight",))
    remap.copy("decode_head.linear_fuse.bn", "decode_head.batch_norm", names=BN_TENSORS)
    remap.copy("decode_head.linear_pred", "decode_head.classifier")


# NVlabs' SegFormerHead inherits mmseg's BaseDecodeHead, which builds a classifier `conv_seg` that the head never
# calls (it predicts with `linear_pred`); the released files carry its untrained weights.
_NVLABS_IGNORED = {f"decode_head.conv_seg.{n}": "BaseDecodeHead classifier unused by SegFormerHead"
                   for n in ("weight", "bias")}


def _released_model(layout: str, arch: str, state: Mapping[str, torch.Tensor]) -> SegformerForSemanticSegmentation:
    """An untrained transformers SegFormer shaped for a released state dict (decoder width read from its head)."""
    config = segformer_architecture(arch)
    classifier = "decode_head.conv_seg.weight" if layout == "mmseg" else "decode_head.linear_pred.weight"
    if classifier in state:
        config.decoder_hidden_size = int(state[classifier].shape[1])
    model = SegformerForSemanticSegmentation(config)
    if layout == "mmseg":
        model.decode_head = MMSegSegformerHead(config)
    return model


def segformer_from_released(state: Mapping[str, torch.Tensor], arch: str = "b5") -> SegformerForSemanticSegmentation:
    """A transformers SegFormer (eval mode) holding a state dict in OpenMMLab's or NVlabs' layout, strictly:
    KeyError names released tensors left unmapped or expected but absent, and model tensors left unfilled."""
    layout = segformer_layout(state)
    model = _released_model(layout, arch, state)
    ignored = _NVLABS_IGNORED if layout == "nvlabs" else {}
    remap = StrictRemap(state, ignored, f"SegFormer {arch} checkpoint in {layout} layout")
    _remap_encoder(remap, layout, model.config)
    _remap_head(remap, layout, model.config)
    remap.load_into(model)
    if layout == "mmseg":  # OpenMMLab's MixVisionTransformer: norm_cfg=dict(type="LN", eps=1e-6) everywhere
        for module in model.segformer.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = 1e-6
    return model.eval()


def load_segformer_checkpoint(path, arch: str = "b5") -> SegformerForSemanticSegmentation:
    """The transformers SegFormer (eval mode) of a released OpenMMLab or NVlabs `.pth` file (see module docstring)."""
    return segformer_from_released(read_checkpoint(path), arch)


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


def segmenter_from_checkpoint(path, arch: str = "b5", **config) -> Segmenter:
    """A Segmenter on a released OpenMMLab/NVlabs file, run at the side it was trained at unless `input_size` is
    given (other SegmenterConfig fields may be given too)."""
    config.setdefault("input_size", trained_input_size(path))
    return Segmenter(load_segformer_checkpoint(path, arch), SegmenterConfig(**config)).eval()
