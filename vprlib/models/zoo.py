"""The model registry: one `models` string names where every pretrained model of the extraction chain comes from.

- "tiny": small architectures, seeded random weights; offline, fast on a CPU (tests, the synthetic city demo).
- "paper-random": the paper's exact architectures (SegFormer-B5, DPT-Hybrid, Big-LaMa, the two refiners) with seeded
  random weights, for GPU benchmarks and parameter counts.
- "paper": the published weights: SegFormer and DPT from the local Hugging Face cache (never downloaded here),
  Big-LaMa and the trained refiners from `$VPRLIB_HOME` (default `~/.cache/vprlib`).
- a directory: `segformer/` and `dpt/` (Hugging Face `save_pretrained` folders), Big-LaMa (LAMA_FILES) and the
  refiners (`refiner_depth.pt`, `refiner_seg.pt`) in it. A directory with `models.json` ({"base": a preset or
  another directory, relative to this one allowed}) is an overlay: each role whose files it lacks comes from its
  base (the refiner training writes one: trained refiners over the segmenter and depth estimator they learnt from).

Roles (ROLES): segmenter S, depth D, inpainter L, refiners (F_d, F_s). `load(role, models)` builds one, in eval mode
on the CPU; `identity(models, roles)` says what each would be loaded from (recorded with every maps table);
`check_weights(models, roles)` fails before any work, naming the file to download and where to put it.
Nothing is ever downloaded.

Retrievers (RETRIEVERS: CosPlace, NetVLAD) share one contract (vprlib.models.retriever); `load_retriever(path)`
rebuilds whichever family a checkpoint holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch
from transformers import DPTForDepthEstimation, SegformerForSemanticSegmentation

from vprlib.models.cosplace import CosPlace
from vprlib.models.dpt import DepthConfig, DepthEstimator, build_dpt
from vprlib.models.lama import LamaInpainter, build_lama, load_lama
from vprlib.models.netvlad import NetVLAD
from vprlib.models.refiner import DEPTH_FILE, SEG_FILE, DualEncoderUNet, build_refiners, load_refiner
from vprlib.models.retriever import Retriever
from vprlib.models.segformer import Segmenter, SegmenterConfig, build_segformer

SEGFORMER_ID = "nvidia/segformer-b5-finetuned-ade-640-640"
DPT_ID = "Intel/dpt-hybrid-midas"
LAMA_FILES = ("big-lama/models/best.ckpt", "big-lama/best.ckpt", "big-lama.pt")
SEED = 0
ROLES = ("segmenter", "depth", "inpainter", "refiners")

# Random-weight presets: the architecture of each role, by its family's name for it.
RANDOM_PRESETS: dict[str, dict[str, str]] = {
    "tiny": {"segmenter": "tiny", "depth": "tiny", "inpainter": "tiny", "refiners": "tiny"},
    "paper-random": {"segmenter": "b5", "depth": "hybrid", "inpainter": "big-lama", "refiners": "paper"},
}
TINY_SIDE = 64  # the input side of the tiny segmenter and depth estimator
KNOWN = (*RANDOM_PRESETS, "paper")
OVERLAY_FILE = "models.json"  # in a models directory: {"base": models the roles it lacks come from}


def vprlib_home() -> Path:
    """Where "paper" weights that are not on the Hugging Face hub live (Big-LaMa, trained refiners)."""
    return Path(os.environ.get("VPRLIB_HOME", Path.home() / ".cache" / "vprlib")).expanduser()


def models_dir(models: str) -> Path:
    """The directory holding the weights for "paper" or a user directory; ValueError for anything else."""
    if models == "paper":
        return vprlib_home()
    path = Path(models).expanduser()
    if models in RANDOM_PRESETS or not path.is_dir():
        raise ValueError(f"unknown models {models!r}: use one of {list(KNOWN)} or an existing directory")
    return path


def overlay_base(directory: Path) -> str | None:
    """The base a models directory's `models.json` names (a preset, or a directory: relative to this one allowed);
    None when it has none."""
    file = directory / OVERLAY_FILE
    if not file.is_file():
        return None
    try:
        base = json.loads(file.read_text())["base"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{file}: expected {{\"base\": <preset or models directory>}}") from None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{file}: \"base\" must name a preset ({', '.join(KNOWN)}) or a models directory")
    if base in KNOWN:
        return base
    path = Path(base).expanduser()
    return str(path) if path.is_absolute() else os.path.normpath(directory / path)


def _has_role(role: str, directory: Path) -> bool:
    """Whether a models directory holds `role`'s files itself (one refiner of the two counts: the other is then
    reported missing, not taken from the base)."""
    if role == "segmenter":
        return (directory / "segformer" / "config.json").is_file()
    if role == "depth":
        return (directory / "dpt" / "config.json").is_file()
    if role == "inpainter":
        return any((directory / name).is_file() for name in LAMA_FILES)
    return any((directory / name).is_file() for name in (DEPTH_FILE, SEG_FILE))


def provider(role: str, models: str, _seen: tuple[str, ...] = ()) -> str:
    """The models string `role` is loaded from: `models` itself, or, for a directory with `models.json` lacking the
    role's files, its base's provider (overlays may stack; a cycle is a ValueError)."""
    if models in KNOWN:
        return models
    directory = models_dir(models)
    base = overlay_base(directory)
    if base is None or _has_role(role, directory):
        return models
    key = str(directory.resolve())
    if key in _seen:
        raise ValueError(f"{directory / OVERLAY_FILE}: its bases lead back to {directory}")
    try:
        return provider(role, base, (*_seen, key))
    except ValueError as exc:
        raise ValueError(f"{directory / OVERLAY_FILE} names base {base!r}: {exc}") from None


def _hf_source(models: str, sub: str, hub_id: str) -> str:
    return hub_id if models == "paper" else str(models_dir(models) / sub)


def _hf_pretrained(cls, source: str, hub_id: str, sub: str):
    """from_pretrained on a local folder or the local HF cache only; a clear error if the weights are absent."""
    try:
        return cls.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"weights for {hub_id} not found at {source!r} (local files only, nothing is downloaded). On a machine "
            f"with network run `hf download {hub_id} --local-dir <models>/{sub}` (or `huggingface-cli download`) "
            f"and pass that <models> directory, or fill the Hugging Face cache with it for models='paper'."
        ) from err


def load_segmenter(models: str) -> Segmenter:
    """The ADE20K segmenter S."""
    models = provider("segmenter", models)
    if models in RANDOM_PRESETS:
        config = SegmenterConfig(input_size=TINY_SIDE) if models == "tiny" else SegmenterConfig()
        return Segmenter(build_segformer(RANDOM_PRESETS[models]["segmenter"], SEED), config).eval()
    source = _hf_source(models, "segformer", SEGFORMER_ID)
    return Segmenter(_hf_pretrained(SegformerForSemanticSegmentation, source, SEGFORMER_ID, "segformer")).eval()


def load_depth(models: str) -> DepthEstimator:
    """The relative inverse depth estimator D."""
    models = provider("depth", models)
    if models in RANDOM_PRESETS:
        config = DepthConfig(input_size=TINY_SIDE) if models == "tiny" else DepthConfig()
        return DepthEstimator(build_dpt(RANDOM_PRESETS[models]["depth"], SEED), config).eval()
    source = _hf_source(models, "dpt", DPT_ID)
    model = _hf_pretrained(DPTForDepthEstimation, source, DPT_ID, "dpt")
    return DepthEstimator(model, DepthConfig(input_size=model.config.image_size)).eval()  # dpt-hybrid-midas: 384


def lama_path(models: str) -> Path:
    """The first Big-LaMa checkpoint present under the models directory; FileNotFoundError if none is."""
    base = models_dir(models)
    for name in LAMA_FILES:
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(
        f"no Big-LaMa checkpoint under {base}: expected one of {list(LAMA_FILES)}. Download big-lama.zip from "
        f"github.com/advimman/lama (the 'big-lama' model) and unzip it in {base} (giving big-lama/models/best.ckpt), "
        f"or put the TorchScript big-lama.pt at {base / 'big-lama.pt'}."
    )


def load_inpainter(models: str) -> LamaInpainter:
    """The Big-LaMa inpainter L."""
    models = provider("inpainter", models)
    if models in RANDOM_PRESETS:
        return build_lama(RANDOM_PRESETS[models]["inpainter"], SEED)
    return load_lama(lama_path(models))


def refiner_paths(models: str) -> tuple[Path, Path]:
    """The depth and segmentation refiners' state-dict files; FileNotFoundError saying where they come from."""
    directory = models_dir(models)
    paths = (directory / DEPTH_FILE, directory / SEG_FILE)
    missing = [str(p) for p in paths if not p.is_file()]
    if len(missing) == 1:
        have, lack = (DEPTH_FILE, SEG_FILE) if paths[0].is_file() else (SEG_FILE, DEPTH_FILE)
        raise FileNotFoundError(
            f"refiner weights not found: {missing[0]}. {directory} holds {have} but not {lack} (a refiner training "
            f"with --target {'depth' if have == DEPTH_FILE else 'seg'}): the synthetic strategy needs both; train "
            f"the other (`jobs/train.py refiner --target {'seg' if have == DEPTH_FILE else 'depth'}`) and put its "
            f"{lack} beside it, or train with --target both.")
    if missing:
        raise FileNotFoundError(
            f"refiner weights not found: {', '.join(missing)}. The refiners are not published with the paper; "
            f"they come from training on ground-truth maps (`jobs/train.py refiner` writes {DEPTH_FILE} and "
            f"{SEG_FILE}). Put them in {directory} (for 'paper', $VPRLIB_HOME), or use --models tiny / paper-random."
        )
    return paths


def load_refiners(models: str) -> tuple[DualEncoderUNet, DualEncoderUNet]:
    """(F_d, F_s): seeded random for presets, else the state dicts `refiner_paths` names."""
    models = provider("refiners", models)
    if models in RANDOM_PRESETS:
        return build_refiners(RANDOM_PRESETS[models]["refiners"], SEED)
    depth, seg = refiner_paths(models)
    return load_refiner(depth), load_refiner(seg)


LOADERS = {"segmenter": load_segmenter, "depth": load_depth, "inpainter": load_inpainter, "refiners": load_refiners}


def load(role: str, models: str):
    """The model of `role` for a models string."""
    if role not in LOADERS:
        raise ValueError(f"unknown model role {role!r}; known: {', '.join(ROLES)}")
    return LOADERS[role](models)


def _source(role: str, models: str, strict: bool) -> str:
    """What `load(role, models)` would read (a hub id, a folder or file); with `strict`, FileNotFoundError if absent."""
    models = provider(role, models)
    if models in RANDOM_PRESETS:
        return f"random:{RANDOM_PRESETS[models][role]}:seed={SEED}"
    if role == "segmenter":
        return _checked_hf(models, "segformer", SEGFORMER_ID, strict)
    if role == "depth":
        return _checked_hf(models, "dpt", DPT_ID, strict)
    try:
        if role == "inpainter":
            return str(lama_path(models))
        paths = refiner_paths(models)
        if models != "paper" and overlay_base(models_dir(models)) is not None:  # trained into an overlay: which ones
            return "; ".join(f"{p} sha256:{file_digest(str(p), *_stamp(p))}" for p in paths)
        return str(paths[0].parent)
    except FileNotFoundError:
        if strict:
            raise
        return f"missing:{models_dir(models)}"


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


@lru_cache(maxsize=64)
def file_digest(path: str, mtime_ns: int = 0, size: int = 0) -> str:
    """The first 16 hex digits of a file's SHA-256 (cached per path, modification time and size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _checked_hf(models: str, sub: str, hub_id: str, strict: bool) -> str:
    source = _hf_source(models, sub, hub_id)
    if strict and not _hf_weights_present(models, sub, hub_id):
        if models == "paper":  # read from the Hugging Face cache, as from_pretrained(local_files_only) does
            raise FileNotFoundError(
                f"weights not found for models='paper': {hub_id} not in the Hugging Face cache ($HF_HOME, default "
                f"~/.cache/huggingface). Fill it on a machine with network (`hf download {hub_id}`) and copy it "
                f"here, pass --models DIR with segformer/ and dpt/ folders, or use --models tiny / paper-random")
        raise FileNotFoundError(
            f"weights not found for models={models!r}: {source}/config.json ({hub_id}). Download them on a machine "
            f"with network (`hf download {hub_id} --local-dir {source}`), or use --models tiny / paper-random")
    return source


def _hf_weights_present(models: str, sub: str, hub_id: str) -> bool:
    if models != "paper":
        return (models_dir(models) / sub / "config.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def identity(models: str, roles: tuple[str, ...] = ROLES) -> dict[str, str]:
    """What each role's model is loaded from (no weights are loaded), for the record kept with maps."""
    _check_models(models)
    return {role: _source(role, models, strict=False) for role in roles}


def check_weights(models: str, roles: tuple[str, ...]) -> None:
    """Fail before any work when a role's weights are absent (FileNotFoundError saying what to put where); random
    presets need none. Cheap: looks for files, loads nothing."""
    _check_models(models)
    for role in roles:
        _source(role, models, strict=True)


def _check_models(models: str) -> None:
    if models not in RANDOM_PRESETS:
        models_dir(models)  # ValueError for an unknown preset or a folder that does not exist


RETRIEVERS: dict[str, type[Retriever]] = {cls.family: cls for cls in (CosPlace, NetVLAD)}


def load_retriever(path: str | os.PathLike) -> Retriever:
    """The retriever a checkpoint written by `Retriever.save` holds (any family), in eval mode on the CPU."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    family = checkpoint.get("family") if isinstance(checkpoint, dict) else None
    if family not in RETRIEVERS:
        raise ValueError(f"{path}: not a retriever checkpoint (family {family!r}; known: {', '.join(RETRIEVERS)})")
    return RETRIEVERS[family].from_checkpoint(checkpoint)
