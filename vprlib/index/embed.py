"""Descriptors of maps with a trained retriever: the checkpoint's record, and a Ray Data actor that embeds batches.

A retriever checkpoint (best.pt of the training job) holds the family, config and weights (vprlib.models.retriever),
the map specification of its training maps and the side it saw them at (`input_side`). `RetrieverRecord` reads
what the index and locate jobs need from it without building the network; `Embedder` is the callable class a Ray
Data actor pool runs: decoded maps in, unit-norm float32 descriptors out.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from vprlib.cli import help_text
from vprlib.cluster import DEVICES, Need, check_gpus_per_process
from vprlib.spec import spec_mismatch
from vprlib.storage import url_to_fs
from vprlib.train.families import family as family_record
from vprlib.train.families import retriever_families


@dataclass(frozen=True, kw_only=True)
class EmbeddingOptions:
    """How the retriever's actor pool runs, for every job that embeds maps on Ray (index, evaluate): their configs
    take these fields (and flags) from here."""

    batch_size: int = field(default=64, metadata=help_text("maps per embedding batch"))
    actors: int = field(default=1, metadata=help_text("embedding actors"))
    device: str = field(default="auto", metadata=help_text("auto (cuda when the cluster has GPUs), cpu or cuda"))
    gpus_per_actor: float = field(default=1.0, metadata=help_text("GPUs per embedding actor on cuda"))
    cpus_per_actor: float = field(default=1.0, metadata=help_text("CPUs per embedding actor"))

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(DEVICES)}")
        if min(self.batch_size, self.actors) < 1:
            raise ValueError("batch_size and actors must be >= 1")

    def place(self, cluster, actors: int | None = None, spare_cpus: float = 0.0) -> tuple[str, float]:
        """The device and GPUs per actor of `actors` (default --actors) embedding actors on `cluster`
        (vprlib.cluster.Cluster), after checking they can start beside `spare_cpus` for other tasks."""
        device = cluster.device(self.device)
        gpus = self.gpus_per_actor if device == "cuda" else 0.0
        check_gpus_per_process(device, gpus, "--gpus-per-actor")
        cluster.check(Need("embedding actors", actors or self.actors, self.cpus_per_actor, gpus, "--actors",
                           "--cpus-per-actor", "--gpus-per-actor", spare_cpus=spare_cpus))
        return device, gpus


class ModelError(ValueError):
    """A checkpoint that is no retriever, or one built for other maps than those given."""


@dataclass(frozen=True)
class RetrieverRecord:
    """What a retriever checkpoint says about itself."""

    path: str
    sha256: str
    family: str
    config: dict
    map_spec: dict
    input_side: int
    descriptor_size: int

    @property
    def uses_rgb(self) -> bool:
        """Whether it embeds the photo (the appearance baseline, --input rgb) rather than maps."""
        return self.config.get("encoding", {}).get("modalities") == "rgb"

    def identity(self) -> dict:
        """The retriever's identity, recorded with an index: what it is and exactly which weights."""
        return {"path": self.path, "sha256": self.sha256, "family": self.family, "config": self.config,
                "input_side": self.input_side, "descriptor_size": self.descriptor_size}

    def check_photos(self, maps: str) -> None:
        """Refuse, in one line, a maps table without the photos a retriever of photos (--input rgb) embeds."""
        from vprlib.maps import table_schema

        if self.uses_rgb and "rgb" not in table_schema(maps).names:
            raise ModelError(f"{maps} has no photos (column rgb), which the retriever {self.path} embeds (--input "
                             f"rgb): extract the maps with --rgb")

    def check_maps(self, maps_spec: dict, what: str) -> None:
        """Refuse maps of another kind than the retriever was trained on, in one line."""
        diff = spec_mismatch(self.map_spec, maps_spec)
        if diff:
            raise ModelError(f"{what} holds other maps than the retriever {self.path} was trained on ({diff})")


def read_checkpoint(path: str) -> tuple[dict, bytes]:
    """A checkpoint's contents (plain containers only) and its bytes (local or s3://)."""
    fs, fs_path = url_to_fs(path)
    if not fs.exists(fs_path):
        raise ModelError(f"--model {path}: no such file")
    with fs.open(fs_path, "rb") as f:
        data = f.read()
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), data
    except Exception as exc:  # a file that is no torch checkpoint, or one with pickled objects
        raise ModelError(f"--model {path}: not a retriever checkpoint ({type(exc).__name__})") from None


def retriever_record(path: str) -> RetrieverRecord:
    """The record of a retriever checkpoint written by the training job; ModelError in one line otherwise."""
    checkpoint, data = read_checkpoint(path)
    family = checkpoint.get("family") if isinstance(checkpoint, dict) else None
    if family not in retriever_families() or "map_spec" not in checkpoint:
        raise ModelError(f"--model {path}: not a retriever checkpoint of the training job (best.pt or last.pt of "
                         f"jobs/train.py {'|'.join(retriever_families())})")
    model = retriever_class(family).from_checkpoint(checkpoint)
    spec = checkpoint["map_spec"]
    return RetrieverRecord(path=path, sha256=hashlib.sha256(data).hexdigest(), family=family,
                           config=checkpoint["config"], map_spec=spec,
                           input_side=int(checkpoint.get("input_side") or spec["side"]),
                           descriptor_size=model.descriptor_size)


def load_model(path: str):
    """The retriever a checkpoint holds, in eval mode on the CPU. Only its family's model module is imported (not
    vprlib.models.zoo, whose extraction models bring transformers: ~1.2 s more at each embedding actor's start)."""
    checkpoint, _ = read_checkpoint(path)
    return retriever_class(checkpoint["family"]).from_checkpoint(checkpoint)


def retriever_class(name: str) -> type:
    """The model class of the retriever family `name` (its training record names it)."""
    return family_record(name).retriever_class()


MAP_KEYS = ("depth", "seg", "rgb", "image", "mask", "labels_x", "inpainted", "seg_prob")  # what a batch drops


class Embedder:
    """Ray Data actor: loads the retriever once; maps a batch of decoded maps (`depth` B,H,W float32, `seg` B,H,W
    uint8, `rgb` B,H,W,3 uint8 when it embeds photos, resized to the retriever's side) to `vector` (B, D) float32
    unit-norm, passing every other key (ids, status) through and dropping the maps."""

    def __init__(self, checkpoint: str, device: str = "cpu", precision: str = "bf16"):
        import torch

        self.device = torch.device(device)
        self.model = load_model(checkpoint).to(self.device)
        self.bf16 = precision == "bf16" and self.device.type == "cuda"

    def __call__(self, batch: dict) -> dict:
        import torch

        with torch.inference_mode():
            depth = torch.from_numpy(np.array(batch["depth"], dtype=np.float32)).to(self.device)  # a writable copy
            seg = torch.from_numpy(np.array(batch["seg"], dtype=np.uint8)).to(self.device)
            rgb = torch.from_numpy(np.array(batch["rgb"], dtype=np.uint8)).to(self.device) if "rgb" in batch else None
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                vectors = self.model.embed(depth, seg, rgb)
        kept = {k: v for k, v in batch.items() if k not in MAP_KEYS}
        return {**kept, "vector": vectors.float().cpu().numpy()}
