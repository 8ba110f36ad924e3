"""The models the extraction chain needs, from one `models` string (vprlib.models.zoo plus the refiners)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from vprlib.models import zoo
from vprlib.models.hf_image import HFImageModel
from vprlib.models.refiner import (
    DEPTH_FILE,
    SEG_FILE,
    refiners_dir,
)

ROLES = {"inpaint": ("segmenter", "inpainter", "depth"), "none": ("segmenter", "depth"),
         "synthetic": ("segmenter", "depth", "refiners")}


def models_identity(models: str, strategy: str) -> dict[str, str]:
    """What each model a strategy uses is (zoo.model_identity, plus the refiners' source for synthetic)."""
    identity = dict(zoo.model_identity(models))
    if models in zoo.RANDOM_PRESETS:
        identity["refiners"] = f"random:{models}:seed={zoo.SEED}"
    else:
        identity["refiners"] = str(refiners_dir(models))
    return {role: identity[role] for role in ROLES[strategy]}


def check_weights(models: str, strategy: str) -> None:
    """Fail in the driver, before any actor starts, when a strategy's weights are absent (FileNotFoundError
    saying what to put where); random presets need none. Cheap: looks for files, loads nothing."""
    if models in zoo.RANDOM_PRESETS:
        return
    if models != "paper" and not Path(models).is_dir():
        raise ValueError(f"unknown models {models!r}: use one of {list(zoo.KNOWN)} or an existing directory")
    absent = [(sub, hub_id) for sub, hub_id in (("segformer", zoo.SEGFORMER_ID), ("dpt", zoo.DPT_ID))
              if not _hf_weights_present(models, sub, hub_id)]
    if absent and models == "paper":  # read from the Hugging Face cache, as from_pretrained(local_files_only) does
        ids = " ".join(hub_id for _, hub_id in absent)
        raise FileNotFoundError(f"weights not found for models='paper': {ids} not in the Hugging Face cache "
                                f"($HF_HOME, default ~/.cache/huggingface). Fill it on a machine with network "
                                f"(`hf download {ids}`) and copy it here, pass --models DIR with segformer/ and dpt/ "
                                f"folders, or use --models tiny / paper-random")
    if absent:
        missing = ", ".join(f"{models}/{sub}/config.json ({hub_id})" for sub, hub_id in absent)
        raise FileNotFoundError(f"weights not found for models={models!r}: {missing}. Download them on a machine "
                                f"with network (`hf download <id> --local-dir {models}/<sub>`), or use --models "
                                f"tiny / paper-random")
    if strategy == "inpaint":
        zoo.lama_path(models)  # raises FileNotFoundError naming the checkpoint to download
    if strategy == "synthetic":
        directory = refiners_dir(models)
        absent = [str(directory / name) for name in (DEPTH_FILE, SEG_FILE) if not (directory / name).is_file()]
        if absent:
            raise FileNotFoundError(f"refiner weights not found: {', '.join(absent)} (the refiner training job "
                                    f"writes them; use --models tiny or paper-random to run without)")


def _hf_weights_present(models: str, sub: str, hub_id: str) -> bool:
    if models != "paper":
        return (Path(models) / sub / "config.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def prepare(model: nn.Module, device: str, precision: str, compile: bool) -> nn.Module:
    """Move a model to its device and set its compute options.

    Zoo models carry a `bf16` flag in their config (on by default, used on CUDA only): fp32 turns it off (the
    refiners are autocast by RefineStage itself). Memory format stays NCHW: channels_last measured slower
    (DPT-Hybrid) or no faster (Big-LaMa) on an H200.
    """
    config = getattr(model, "config", None)
    if precision == "fp32" and dataclasses.is_dataclass(config) and hasattr(config, "bf16"):
        model.config = dataclasses.replace(config, bf16=False)
    model = model.to(device).eval()
    if compile and getattr(model, "_compiled_call_impl", None) is None:  # a shared model is compiled once
        install_hf_hooks(model, device)
        model.compile()  # in place: calls through any method (labels, probabilities) hit the compiled forward
    return model


def install_hf_hooks(model: nn.Module, device: str) -> None:
    """One eager forward of a 1-image batch, so a Hugging Face model installs its lazy hooks before torch.compile.

    transformers (5.x) installs its output-capturing hooks on the first call that asks for hidden states (SegFormer's
    decode head and DPT's neck do), under a threading lock that dynamo cannot trace: 3 graph breaks per model
    (torch._dynamo.explain). Installed beforehand, each model compiles to one graph."""
    if isinstance(model, HFImageModel):
        with torch.inference_mode():
            model(torch.zeros(1, 3, model.input_size, model.input_size, device=device))
