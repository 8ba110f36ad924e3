"""What the Hugging Face image-model wrappers (Segmenter, DepthEstimator) share: the processor's resize and
normalisation done on tensors in batch, and the model run under bf16 autocast on CUDA."""

import torch
import torch.nn.functional as F
from torch import nn


class HFImageModel(nn.Module):
    """A transformers vision model behind `forward(images B,3,H,W float in [0,1])`.

    `config` holds `input_size` (the side images are resized to), `mean`, `std` and `bf16`; subclasses set
    `resize_mode` (their processor's interpolation)."""

    resize_mode = "bilinear"

    def __init__(self, model: nn.Module, config):
        super().__init__()
        self.model = model
        self.config = config
        self.input_size = config.input_size
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """B,3,H,W in [0,1] -> normalised B,3,S,S pixel values (S = input_size)."""
        side = (self.input_size, self.input_size)
        x = images.float()
        if tuple(x.shape[-2:]) != side:
            x = F.interpolate(x, size=side, mode=self.resize_mode, align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def run(self, images: torch.Tensor):
        """The wrapped model's output on preprocessed images (bf16 autocast on CUDA when `config.bf16`)."""
        pixels = self.preprocess(images)
        use_bf16 = self.config.bf16 and pixels.device.type == "cuda"
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.model(pixel_values=pixels)
