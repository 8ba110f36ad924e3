"""The contract every retriever f(d, s) meets (paper III-C), whatever its family (CosPlace, NetVLAD, a later one).

A retriever is built from a frozen config dataclass that holds an `EncodingConfig` (which maps it sees and how the
segmentation becomes channels), exposes `descriptor_size`, maps encoded maps `forward(x B,C,H,W) -> B,D` to unit-norm
descriptors, and `embed(depth, seg)` encodes raw maps first. `save(path, **extra)` writes config and weights as plain
containers (loadable with `torch.load(weights_only=True)`), plus any plain extras (the training job adds the map
specification of its training maps); `vprlib.models.zoo.load_retriever(path)` rebuilds the right family from it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import ClassVar

import torch
from torch import nn

from vprlib.models.encodings import EncodingConfig, InputEncoder


class Retriever(nn.Module):
    """Base of the retriever families: subclasses set `family` and `config_class` and implement `forward` and
    `descriptor_size`."""

    family: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = InputEncoder(config.encoding)

    @property
    def encoding(self) -> EncodingConfig:
        return self.config.encoding

    @property
    def descriptor_size(self) -> int:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, depth: torch.Tensor | None, seg: torch.Tensor | None,
              rgb: torch.Tensor | None = None) -> torch.Tensor:
        """Descriptors B,D of maps: depth B,1,H,W (or B,H,W), seg as the encoding wants it (rgb B,H,W,3 uint8 for
        an "rgb" encoding)."""
        return self(self.encoder(depth, seg, rgb))

    def checkpoint(self, **extra) -> dict:
        """Config and weights as plain containers, plus `extra` (plain too): what `save` writes."""
        return {"family": self.family, "config": dataclasses.asdict(self.config), "state_dict": self.state_dict(),
                **extra}

    def save(self, path: str | os.PathLike, **extra) -> None:
        torch.save(self.checkpoint(**extra), path)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> Retriever:
        """The retriever a `save` checkpoint holds, in eval mode on the CPU."""
        model = cls(config_from_dict(cls.config_class, checkpoint["config"]))
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval()


def save_half(checkpoint_path: str | os.PathLike, output: str | os.PathLike) -> None:
    """A retriever checkpoint rewritten with float16 weights (half the bytes; `from_checkpoint` loads them back into
    float32 parameters): how the demo retrievers ship. Everything else in the checkpoint is kept as it is."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(checkpoint, output)


def config_from_dict(config_class: type, values: dict):
    """A (possibly nested) config dataclass from `dataclasses.asdict` output; unknown keys are an error."""
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for field in dataclasses.fields(config_class):
        if field.name not in values:
            continue
        value, kind = values[field.name], hints[field.name]
        kwargs[field.name] = config_from_dict(kind, value) if dataclasses.is_dataclass(kind) else value
    unknown = set(values) - set(kwargs)
    if unknown:
        raise ValueError(f"{config_class.__name__}: unknown fields {sorted(unknown)}")
    return config_class(**kwargs)
