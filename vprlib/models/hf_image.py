"""What the Hugging Face image-model wrappers (Segmenter, DepthEstimator) share: the checkpoint's image processor
(transformers `SegformerImageProcessor` / `DPTImageProcessor`) redone on tensors in batch, the model run under bf16
autocast on CUDA, and strict loading of checkpoints released in other layouts.

The processors see a uint8 photo: they resize it in uint8 (torchvision's antialiased kernel on the CPU, which rounds
and clamps to 0..255 after each of its two separable passes, width then height, as PIL does), then rescale by 1/255
and normalise. `HFImageModel.preprocess` does the same, so its pixel values equal the processor's on the CPU; on
other devices it runs the same two passes in float, rounding and clamping after each (within 2 levels of the CPU
kernel on a few pixels at edges, where a single float pass would overshoot by up to 15).
"""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from torch import nn
from transformers import AutoImageProcessor

# PIL resampling codes, as processor configs store them, to the interpolation modes implemented here.
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """B,3,H,W uint8, or float in [0,1] (a uint8 photo divided by 255: recovered exactly) -> uint8."""
    if images.dtype == torch.uint8:
        return images
    return images.float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _round_levels(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(0, 255).round_()


def resize_two_pass(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of uint8 B,3,H,W as PIL and torchvision's CPU uint8 kernel do it, in float on any device:
    width first, then height, each pass rounded and clamped to uint8 levels."""
    x = images.float()
    if x.shape[-1] != size[1]:
        x = F.interpolate(x, size=(x.shape[-2], size[1]), mode=mode, align_corners=False, antialias=True)
        x = _round_levels(x)
    if x.shape[-2] != size[0]:
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
        x = _round_levels(x)
    return x.to(torch.uint8)


def resize_uint8(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """uint8 B,3,H,W resized to `size` as the transformers processor resizes a uint8 photo (see module docstring)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if images.device.type == "cpu":  # the processor's own call: exactly its pixels
        return tvF.resize(images, list(size), interpolation=tvF.InterpolationMode(mode), antialias=True)
    return resize_two_pass(images, size, mode)


def processor_settings(source: str) -> dict:
    """input_size, resample, mean and std of the image processor saved with a Hugging Face checkpoint (a folder or
    a hub id in the local cache; nothing is downloaded). ValueError for settings `HFImageModel` does not redo."""
    processor = AutoImageProcessor.from_pretrained(source, local_files_only=True)
    height, width = processor.size.get("height"), processor.size.get("width")
    unsupported = {
        "non-square or aspect-keeping size": height is None or height != width,
        "do_resize=False": not processor.do_resize,
        f"resample={processor.resample}": int(processor.resample) not in PIL_RESAMPLE,
        "rescale other than 1/255": not processor.do_rescale or abs(processor.rescale_factor * 255 - 1) > 1e-9,
        "do_normalize=False": not processor.do_normalize,
        "center crop": bool(getattr(processor, "do_center_crop", False)),
        "keep_aspect_ratio": bool(getattr(processor, "keep_aspect_ratio", False)),
        "ensure_multiple_of > 1": (getattr(processor, "ensure_multiple_of", 1) or 1) > 1,
        "padding": bool(getattr(processor, "do_pad", False)),
    }
    if any(unsupported.values()):
        raise ValueError(f"image processor of {source}: unsupported {[k for k, v in unsupported.items() if v]}")
    return {"input_size": int(height), "resample": PIL_RESAMPLE[int(processor.resample)],
            "mean": tuple(float(m) for m in processor.image_mean), "std": tuple(float(s) for s in processor.image_std)}


class HFImageModel(nn.Module):
    """A transformers vision model behind `forward(images B,3,H,W uint8, or float in [0,1] from uint8)`.

    `config` holds `input_size` (the side images are resized to), `resample` ("bilinear" or "bicubic": the
    processor's), `mean`, `std` and `bf16`."""

    def __init__(self, model: nn.Module, config):
        super().__init__()
        self.model = model
        self.config = config
        self.input_size = config.input_size
        # The processor's fused rescale and normalisation: (v - 255 mean) / (255 std) on uint8 levels v.
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """B,3,H,W photos -> normalised B,3,S,S pixel values (S = input_size), as the checkpoint's processor."""
        side = (self.input_size, self.input_size)
        levels = resize_uint8(to_uint8(images), side, self.config.resample)
        return (levels.float() - self.mean) / self.std

    def run(self, images: torch.Tensor):
        """The wrapped model's output on preprocessed images (bf16 autocast on CUDA when `config.bf16`)."""
        pixels = self.preprocess(images)
        use_bf16 = self.config.bf16 and pixels.device.type == "cuda"
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.model(pixel_values=pixels)


class StrictRemap:
    """A transformers state dict assembled from a checkpoint released in another layout, strictly: every released
    tensor is used or listed in `ignored` (name -> why), every tensor of the target model is filled, or KeyError
    names the offenders. Shapes are then checked by `load_state_dict(strict=True)`."""

    def __init__(self, source: Mapping[str, torch.Tensor], ignored: Mapping[str, str], what: str):
        self.source, self.ignored, self.what = source, ignored, what
        self.used: set[str] = set()
        self.absent: list[str] = []
        self.target: dict[str, torch.Tensor] = {}

    def take(self, key: str) -> torch.Tensor | None:
        """The released tensor `key`, marked used; None (and recorded) if the checkpoint lacks it."""
        if key not in self.source:
            self.absent.append(key)
            return None
        self.used.add(key)
        return self.source[key]

    def tensor(self, src: str, dst: str, transform: Callable | None = None) -> None:
        """Released tensor `src` -> target tensor `dst`, through `transform` if given."""
        tensor = self.take(src)
        if tensor is not None:
            self.target[dst] = tensor if transform is None else transform(tensor)

    def copy(self, src: str, dst: str, names=("weight", "bias"), weight: Callable | None = None) -> None:
        """Module `src` -> module `dst`, tensor by tensor; `weight` transforms the weight (a 1x1 conv to a linear)."""
        for name in names:
            self.tensor(f"{src}.{name}", f"{dst}.{name}", weight if name == "weight" else None)

    def split(self, src: str, dsts: list[str]) -> None:
        """One released tensor cut into equal parts along dim 0 (fused q/k/v projections)."""
        tensor = self.take(src)
        if tensor is not None:
            for dst, part in zip(dsts, tensor.chunk(len(dsts)), strict=True):
                self.target[dst] = part

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the assembled state dict into `model` (strict); KeyError listing any key not accounted for."""
        unused = sorted(set(self.source) - self.used - set(self.ignored))
        unfilled = sorted(set(model.state_dict()) - set(self.target))
        problems = {"expected in the checkpoint but absent": self.absent, "in the checkpoint but not mapped": unused,
                    "model tensors left unfilled": unfilled}
        if any(problems.values()):
            detail = "; ".join(f"{k} ({len(v)}): {v[:8]}{' ...' * (len(v) > 8)}" for k, v in problems.items() if v)
            raise KeyError(f"{self.what}: {detail}")
        model.load_state_dict(self.target, strict=True)
        return model


def read_checkpoint(path, nested: tuple[str, ...] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """The state dict in a released `.pth`/`.pt` file, whether flat or under one of `nested` (mmcv's
    {"meta", "state_dict"}, {"model", "optimizer"}). Loaded with weights_only: tensors and plain containers only."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in nested:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            return dict(data[key])
    return dict(data)
