"""Every model family's named architectures and the retrievers' input choices, as plain data: no torch here.

Configs and command lines validate and list these names without importing torch or transformers, so `--help` and a
bad flag answer at once; each model module builds its networks from its entry here (and re-exports it): CosPlace's
backbones (`cosplace.py`), DPT's and SegFormer's Hugging Face configs (`dpt.py`, `segformer.py`), LaMa's and the
refiners' sizes (`lama.py`, `refiner.py`), and what a retriever sees (`encodings.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

# Channels of the last convolution of each backbone (CosPlace's CHANNELS_NUM_IN_LAST_CONV).
BACKBONES = {"resnet18": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048, "vgg16": 512}

# Architectures by name. "hybrid" is the config of Intel/dpt-hybrid-midas (~123M parameters), hard-coded so it
# builds offline; "tiny" is the same hybrid family, small, for tests and CPU runs; "demo" (0.5M), a little larger at
# 128 px, is the one trained on the synthetic city (vprlib.demo.extractors).
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
    "demo": dict(
        backbone=dict(
            layer_type="bottleneck",
            global_padding="same",
            depths=[1, 1, 1],
            hidden_sizes=[32, 64, 128, 256],
            embedding_size=16,
            num_groups=8,
            out_features=["stage1", "stage2", "stage3"],
            embedding_dynamic_padding=True,
        ),
        dpt=dict(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=128,
            image_size=128,
            patch_size=16,
            backbone_out_indices=[0, 1, 2, 3],
            neck_hidden_sizes=[32, 64, 64, 64],
            reassemble_factors=[1, 1, 1, 0.5],
            backbone_featmap_shape=[1, 128, 8, 8],
            fusion_hidden_size=32,
        ),
    ),
}

# Architectures by name. "b5" is exactly the config of nvidia/segformer-b5-finetuned-ade-640-640 (~85M parameters);
# "tiny" is a small random-weight stand-in for tests and CPU runs; "demo" (0.8M) is the one trained on the synthetic
# city (vprlib.demo.extractors) at 128 px.
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
    "demo": dict(
        depths=[2, 2, 2, 2],
        hidden_sizes=[16, 32, 64, 128],
        num_attention_heads=[1, 1, 2, 4],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[4, 4, 4, 4],
        decoder_hidden_size=64,
    ),
}


@dataclass(frozen=True)
class LamaConfig:
    ngf: int = 64  # channels after the first 7x7 convolution
    n_downsampling: int = 3  # stride-2 FFC convolutions; the bottleneck has ngf * 2**n_downsampling channels
    n_blocks: int = 18  # FFC ResNet blocks at the bottleneck (big-lama: 18)
    ratio_global: float = 0.75  # share of bottleneck channels on the spectral (global) branch
    max_features: int = 1024  # channel cap, as LaMa's generator
    pad_modulo: int = 8  # inputs are padded to a multiple of this
    bf16: bool = True  # bf16 autocast on CUDA for the eager generator; FFTs run in float32


# Architectures by name: big-lama (the published model), a tiny one for tests, and "demo" (0.7M), the one trained on
# the synthetic city (vprlib.demo.extractors).
LAMA_ARCHS: dict[str, LamaConfig] = {
    "big-lama": LamaConfig(),
    "tiny": LamaConfig(ngf=8, n_downsampling=3, n_blocks=2),
    "demo": LamaConfig(ngf=16, n_downsampling=3, n_blocks=3),
}


@dataclass(frozen=True)
class RefinerConfig:
    depth_channels: int = 1  # relative inverse depth from DPT
    seg_channels: int = 1  # ADE20K label map as one channel (label / 149); 150 for class probabilities
    out_channels: int = 1  # 1 for the depth refiner F_d, 4 for the segmentation refiner F_s
    base_width: int = 32  # channels of the first encoder block, doubled after every MaxPool
    levels: int = 5  # encoder blocks: 512x512x32 ... 32x32x512 in the paper

    def widths(self) -> list[int]:
        """Channels of each encoder block, e.g. [32, 64, 128, 256, 512]."""
        return [self.base_width * 2**i for i in range(self.levels)]


# Architectures by name (out_channels set per refiner): the paper's, a small one for tests, and the demo preset's
# (trained on the synthetic city on a CPU: jobs/demo_models.py, vprlib.demo.models).
REFINER_ARCHS = {"tiny": RefinerConfig(base_width=8, levels=3), "demo": RefinerConfig(base_width=16, levels=4),
                 "paper": RefinerConfig()}

# Which maps the retriever sees: (uses depth, uses segmentation, uses the photo). "rgb" is the appearance baseline
# (the maps table's `rgb` column, extracted with --rgb), not the method.
MODALITIES = {"depth": (True, False, False), "seg": (False, True, False), "depth+seg": (True, True, False),
              "rgb": (False, False, True)}
# How a segmentation map becomes channels (encodings.SEG_ENCODINGS maps each name to its module).
SEG_ENCODING_NAMES = ("label", "probabilities", "onehot", "embedding")
