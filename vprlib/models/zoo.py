"""The model registry: one `models` string names where every pretrained model of the extraction chain comes from.

- "tiny": small architectures, seeded random weights; offline, fast on a CPU (tests, the synthetic city demo).
- "paper-random": the paper's exact architectures (SegFormer-B5, DPT-Hybrid, Big-LaMa, the two refiners) with seeded
  random weights, for GPU benchmarks and parameter counts.
- "demo": the paper's segmenter, depth estimator and inpainter in small configurations, trained on the synthetic
  city (vprlib.demo.extractors, jobs/train_demo.py) and shipped in this package (`DEMO_DIR`: fp16 safetensors and
  `architectures.json`); offline, fast on a CPU, and they really segment, estimate depth and inpaint the city's
  photos; with them the demo-size refiners (`refiner_depth.pt`, `refiner_seg.pt`) trained on its maps.
- "paper": the published weights, from `$VPRLIB_HOME` (default `~/.cache/vprlib`) where the paper's own files are,
  else from the local Hugging Face cache (never downloaded here): the segmenter is OpenMMLab's SegFormer-B5 512x512
  ADE20K file (segformer.PAPER_CHECKPOINT, the paper's) or `nvidia/segformer-b5-finetuned-ade-640-640`; depth is
  MiDaS' `dpt_hybrid-midas-501f0c75.pt` or `Intel/dpt-hybrid-midas`; Big-LaMa is big-lama.zip unpacked
  (LAMA_FILES); the refiners are the training job's `refiner_depth.pt` / `refiner_seg.pt`.
- a directory: the same files (`segformer/` and `dpt/` as `save_pretrained` folders, or the released checkpoint
  files) in it. A directory's `models.json` may name a `base` (a preset or another directory) for the roles whose
  files it lacks: the refiner training job writes one, so its output folder is a complete `--models` for the
  synthetic strategy. A directory's `architectures.json` lists small models trained here (the demo's: role ->
  architecture and safetensors file), so `jobs/train_demo.py`'s export folder is a `--models` too.

Each segmenter runs at the side it was trained at (the file's name, or its Hugging Face processor), unless
`segmenter_side` says otherwise; depth at its processor's side (384).

Roles (ROLES): segmenter S, depth D, inpainter L, refiners (F_d, F_s). `load(role, models)` builds one, in eval mode
on the CPU; `identity(models, roles)` says exactly what each would be loaded from (a Hugging Face snapshot revision or
a content hash of each weights file, and the segmenter's side), recorded with every maps table, so outputs made from
other weights never pass for the same; `check_weights(models, roles)` fails before any work, naming the file to
download and where to put it. Nothing is ever downloaded.

Retrievers (RETRIEVERS: CosPlace, NetVLAD, named by the training families' records) share one contract
(vprlib.models.retriever); `load_retriever(path)` rebuilds whichever family a checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DPTForDepthEstimation, SegformerForSemanticSegmentation

from vprlib.models.dpt import (
    DPT_ARCHS,
    MIDAS_CHECKPOINT,
    DepthConfig,
    DepthEstimator,
    build_dpt,
    depth_from_checkpoint,
)
from vprlib.models.hf_image import processor_settings
from vprlib.models.lama import LAMA_ARCHS, LamaInpainter, build_lama, load_lama
from vprlib.models.refiner import DEPTH_FILE, SEG_FILE, DualEncoderUNet, build_refiners, load_refiner
from vprlib.models.retriever import Retriever
from vprlib.models.segformer import (
    PAPER_CHECKPOINT,
    SEGFORMER_ARCHS,
    Segmenter,
    SegmenterConfig,
    build_segformer,
    segmenter_from_checkpoint,
    trained_input_size,
)
from vprlib.train.families import family, retriever_families

SEGFORMER_ID = "nvidia/segformer-b5-finetuned-ade-640-640"
DPT_ID = "Intel/dpt-hybrid-midas"
LAMA_FILES = ("big-lama/models/best.ckpt", "big-lama/best.ckpt", "big-lama.pt")
OVERLAY_FILE = "models.json"  # in a models directory: {"base": what the roles it lacks are loaded from}
SEED = 0
ROLES = ("segmenter", "depth", "inpainter", "refiners")

# Random-weight presets: the architecture of each role, by its family's name for it.
RANDOM_PRESETS: dict[str, dict[str, str]] = {
    "tiny": {"segmenter": "tiny", "depth": "tiny", "inpainter": "tiny", "refiners": "tiny"},
    "paper-random": {"segmenter": "b5", "depth": "hybrid", "inpainter": "big-lama", "refiners": "paper"},
}
TINY_SIDE = 64  # the input side of the tiny segmenter and depth estimator
DEMO = "demo"
DEMO_DIR = Path(__file__).with_name("demo")  # the demo preset's shipped weights (package data)
SMALL_FILE = "architectures.json"  # a folder's small models trained here: role -> architecture, weights file
SMALL_ROLES = ("segmenter", "depth", "inpainter")
# The demo preset's retrievers, one per strategy: CosPlace trained on maps the demo models extract (jobs/demo.py).
DEMO_RETRIEVERS = {"inpaint": "cosplace-inpaint.pt", "synthetic": "cosplace-synthetic.pt"}
KNOWN = (*RANDOM_PRESETS, DEMO, "paper")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a save_pretrained folder's weights


def vprlib_home() -> Path:
    """Where "paper" weights that are not on the Hugging Face hub live (Big-LaMa, trained refiners)."""
    return Path(os.environ.get("VPRLIB_HOME", Path.home() / ".cache" / "vprlib")).expanduser()


def demo_retriever(strategy: str) -> Path:
    """The shipped demo retriever of a strategy's maps; FileNotFoundError saying how it is made if absent."""
    if strategy not in DEMO_RETRIEVERS:
        raise ValueError(f"the demo has retrievers for {', '.join(DEMO_RETRIEVERS)} maps only, not {strategy!r}")
    path = DEMO_DIR / DEMO_RETRIEVERS[strategy]
    if not path.is_file():
        raise FileNotFoundError(f"the demo retriever {path} is missing (package data): reinstall vprlib, or make it "
                                f"with `make demo-models`")
    return path


def models_dir(models: str) -> Path:
    """The directory holding the weights for "paper" or a user directory; ValueError for anything else."""
    if models == "paper":
        return vprlib_home()
    if models == DEMO:
        return DEMO_DIR
    path = Path(models).expanduser()
    if models in RANDOM_PRESETS or not path.is_dir():
        raise ValueError(f"unknown models {models!r}: use one of {list(KNOWN)} or an existing directory")
    return path


@dataclass(frozen=True)
class Source:
    """Where one role's weights come from: `kind` random (arch), hub (a Hugging Face id in the local cache),
    folder (a save_pretrained folder), file (a released checkpoint), refiners (a folder with both files), small (a
    safetensors file its folder's architectures.json describes)."""

    kind: str
    where: str


def _role_source(role: str, models: str, _seen: tuple[str, ...] = ()) -> Source:
    """The source `load(role, models)` reads; FileNotFoundError (saying what to download, where) if absent. A
    directory's own files win; the roles it lacks come from its `models.json` base (bases may stack; a cycle, or a
    base that does not exist, is a ValueError naming the file)."""
    if models in RANDOM_PRESETS:
        return Source("random", RANDOM_PRESETS[models][role])
    directory = models_dir(models)
    own = _own_source(role, models, directory)
    if own is not None:
        return own
    base = _base(directory)
    if base is None:
        raise FileNotFoundError(_missing(role, models, directory))
    key = str(directory.resolve())
    if key in _seen:
        raise ValueError(f"{directory / OVERLAY_FILE}: its bases lead back to {directory}")
    try:
        return _role_source(role, base, (*_seen, key))
    except ValueError as exc:
        raise ValueError(f"{directory / OVERLAY_FILE} names base {base!r}: {exc}") from None


def _own_source(role: str, models: str, directory: Path) -> Source | None:
    """The role's source among the directory's own files (or, for "paper", the Hugging Face cache)."""
    entry = small_entries(directory).get(role) if role in SMALL_ROLES else None
    if entry is not None and (directory / entry["weights"]).is_file():
        return Source("small", str(directory / entry["weights"]))
    hf = {"segmenter": ("segformer", SEGFORMER_ID, PAPER_CHECKPOINT), "depth": ("dpt", DPT_ID, MIDAS_CHECKPOINT)}
    if role in hf:
        sub, hub_id, released = hf[role]
        if (directory / released).is_file():
            return Source("file", str(directory / released))
        if models == "paper":
            return Source("hub", hub_id) if _in_hf_cache(hub_id) else None
        return Source("folder", str(directory / sub)) if (directory / sub / "config.json").is_file() else None
    if role == "inpainter":
        found = next((directory / name for name in LAMA_FILES if (directory / name).is_file()), None)
        return Source("file", str(found)) if found else None
    if role == "refiners":
        present = [(directory / name).is_file() for name in (DEPTH_FILE, SEG_FILE)]
        if all(present):
            return Source("refiners", str(directory))
        if any(present):  # one of the two: the other is missing here, not to be taken from a base
            have, lack = (DEPTH_FILE, SEG_FILE) if present[0] else (SEG_FILE, DEPTH_FILE)
            raise FileNotFoundError(
                f"refiner weights not found: {directory / lack}. {directory} holds {have} but not {lack} (a refiner "
                f"training with --target {'depth' if present[0] else 'seg'}): the synthetic strategy needs both; "
                f"train the other and put its {lack} beside it, or train with --target both.")
        return None
    raise ValueError(f"unknown model role {role!r}; known: {', '.join(ROLES)}")


def _base(directory: Path) -> str | None:
    """The `base` a directory's models.json names (a preset, or a folder: relative to the directory allowed)."""
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


def _missing(role: str, models: str, directory: Path) -> str:
    if models == DEMO:
        return (f"the demo preset's {role} weights are missing from {directory} (package data): reinstall vprlib, "
                f"or train and install them: jobs/train_demo.py --city DIR --output DIR --install")
    if role in ("segmenter", "depth"):
        released, hub_id, sub = ((PAPER_CHECKPOINT, SEGFORMER_ID, "segformer") if role == "segmenter"
                                 else (MIDAS_CHECKPOINT, DPT_ID, "dpt"))
        where = (f"{hub_id} is not in the Hugging Face cache ($HF_HOME, default ~/.cache/huggingface; fill it with "
                 f"`hf download {hub_id}` on a machine with network)" if models == "paper" else
                 f"nor is {hub_id} a save_pretrained folder at {directory / sub} (`hf download {hub_id} --local-dir "
                 f"{directory / sub}`)")
        return (f"weights not found for the {role} (models={models!r}): the paper's {released} is not in "
                f"{directory}, and {where}; or use --models tiny / paper-random")
    if role == "inpainter":
        return (f"no Big-LaMa checkpoint under {directory}: expected one of {list(LAMA_FILES)}. Download big-lama.zip "
                f"from github.com/advimman/lama (the 'big-lama' model) and unzip it in {directory} (giving "
                f"big-lama/models/best.ckpt), or put the TorchScript big-lama.pt at {directory / 'big-lama.pt'}.")
    return (f"refiner weights not found: {directory / DEPTH_FILE}, {directory / SEG_FILE}. The refiners are not "
            f"published with the paper; they come from training on ground-truth maps (`jobs/train.py refiner` writes "
            f"them). Put them in {directory} (for 'paper', $VPRLIB_HOME), or use --models tiny / paper-random.")


def _in_hf_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def _hf_pretrained(cls, source: str):
    """from_pretrained on a local folder or the local HF cache only (nothing is downloaded)."""
    try:
        return cls.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"weights for {source} could not be read locally: {err}") from err


def _processor_or_default(source: str, default: dict) -> dict:
    """The saved image processor's settings; `default` when a folder has none (a model saved without it)."""
    try:
        return processor_settings(source)
    except OSError:
        return default


def segmenter_input_size(models: str, segmenter_side: int = 0) -> int:
    """The side the segmenter of `models` runs at: `segmenter_side`, else the one its checkpoint was trained at."""
    if segmenter_side:
        return segmenter_side
    source = _role_source("segmenter", models)
    if source.kind == "random":
        return TINY_SIDE if source.where == "tiny" else SegmenterConfig().input_size
    if source.kind == "small":
        return int(small_entries(Path(source.where).parent)["segmenter"]["input_size"])
    if source.kind == "file":
        return trained_input_size(source.where)
    return _processor_or_default(source.where, {"input_size": SegmenterConfig().input_size})["input_size"]


def load_segmenter(models: str, segmenter_side: int = 0) -> Segmenter:
    """The ADE20K segmenter S, at its training side unless `segmenter_side` is given."""
    source = _role_source("segmenter", models)
    side = segmenter_input_size(models, segmenter_side)
    if source.kind == "random":
        return Segmenter(build_segformer(source.where, SEED), SegmenterConfig(input_size=side)).eval()
    if source.kind == "small":
        return load_small("segmenter", source.where, side)
    if source.kind == "file":
        return segmenter_from_checkpoint(source.where, input_size=side)
    settings = _processor_or_default(source.where, {})
    model = _hf_pretrained(SegformerForSemanticSegmentation, source.where)
    return Segmenter(model, SegmenterConfig(**{**settings, "input_size": side})).eval()


def load_depth(models: str) -> DepthEstimator:
    """The relative inverse depth estimator D, at its processor's side."""
    source = _role_source("depth", models)
    if source.kind == "random":
        config = DepthConfig(input_size=TINY_SIDE) if source.where == "tiny" else DepthConfig()
        return DepthEstimator(build_dpt(source.where, SEED), config).eval()
    if source.kind == "small":
        return load_small("depth", source.where)
    if source.kind == "file":
        return depth_from_checkpoint(source.where)
    model = _hf_pretrained(DPTForDepthEstimation, source.where)
    settings = _processor_or_default(source.where, {"input_size": model.config.image_size})
    return DepthEstimator(model, DepthConfig(**settings)).eval()


def load_inpainter(models: str) -> LamaInpainter:
    """The Big-LaMa inpainter L."""
    source = _role_source("inpainter", models)
    if source.kind == "small":
        return load_small("inpainter", source.where)
    return build_lama(source.where, SEED) if source.kind == "random" else load_lama(source.where)


def refiner_paths(models: str) -> tuple[Path, Path]:
    """The depth and segmentation refiners' state-dict files; FileNotFoundError saying where they come from."""
    directory = Path(_role_source("refiners", models).where)
    return directory / DEPTH_FILE, directory / SEG_FILE


def load_refiners(models: str) -> tuple[DualEncoderUNet, DualEncoderUNet]:
    """(F_d, F_s): seeded random for presets, else the state dicts `refiner_paths` names."""
    source = _role_source("refiners", models)
    if source.kind == "random":
        return build_refiners(source.where, SEED)
    depth, seg = refiner_paths(models)
    return load_refiner(depth), load_refiner(seg)


def load(role: str, models: str, segmenter_side: int = 0):
    """The model of `role` for a models string."""
    if role == "segmenter":
        return load_segmenter(models, segmenter_side)
    loaders = {"depth": load_depth, "inpainter": load_inpainter, "refiners": load_refiners}
    if role not in loaders:
        raise ValueError(f"unknown model role {role!r}; known: {', '.join(ROLES)}")
    return loaders[role](models)


def identity(models: str, roles: tuple[str, ...] = ROLES, segmenter_side: int = 0) -> dict[str, str]:
    """Exactly what each role's model is loaded from, for the record kept with maps: the source, a Hugging Face
    snapshot revision or a content hash of its weights files, and for the segmenter the side it runs at. An absent
    role is named missing. Loads no weights (hashes files, cached per file and modification time)."""
    _check_models(models)
    out = {}
    for role in roles:
        try:
            source = _role_source(role, models)
        except FileNotFoundError:
            out[role] = f"missing:{models}"
            continue
        out[role] = _describe(source)
        if role == "segmenter":
            out[role] += f"@{segmenter_input_size(models, segmenter_side)}px"
    return out


def _describe(source: Source) -> str:
    if source.kind == "random":
        return f"random:{source.where}:seed={SEED}"
    if source.kind == "hub":
        return f"{source.where}@{_hub_revision(source.where)}"
    if source.kind == "folder":
        files = [Path(source.where) / name for name in WEIGHT_FILES if (Path(source.where) / name).is_file()]
        return f"{source.where} " + " ".join(f"{f.name}:sha256:{_sha256(f)}" for f in files)
    if source.kind == "small":  # by content, wherever the package or folder lies
        path = Path(source.where)
        return f"{path.name}:{_small_arch(path)}:sha256:{_sha256(path)}"
    if source.kind == "refiners":  # the demo preset's by content alone (wherever the package lies), a folder's by path
        files = [Path(source.where) / name for name in (DEPTH_FILE, SEG_FILE)]
        shipped = Path(source.where).resolve() == DEMO_DIR.resolve()
        return " ".join(f"{f.name if shipped else f}:sha256:{_sha256(f)}" for f in files)
    return f"{source.where} sha256:{_sha256(Path(source.where))}"


def _hub_revision(hub_id: str) -> str:
    """The snapshot (commit) of a hub id in the local cache, from the folder the cached config lies in."""
    from huggingface_hub import try_to_load_from_cache

    path = Path(try_to_load_from_cache(hub_id, "config.json"))
    return f"rev:{path.parent.name}"


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def check_weights(models: str, roles: tuple[str, ...]) -> None:
    """Fail before any work when a role's weights are absent (FileNotFoundError saying what to put where); random
    presets need none. Cheap: looks for files, loads nothing."""
    _check_models(models)
    for role in roles:
        _role_source(role, models)


def _check_models(models: str) -> None:
    if models not in RANDOM_PRESETS:
        models_dir(models)  # ValueError for an unknown preset or a folder that does not exist


# ----------------------------------------------------------------------------------------------- small models
# role -> (the family's architecture table, its entry as plain JSON, the model for inference at a side)
SMALL_FAMILIES = {
    "segmenter": ("segformer", lambda arch: SEGFORMER_ARCHS[arch],
                  lambda arch, side: Segmenter(build_segformer(arch, SEED), SegmenterConfig(input_size=side))),
    "depth": ("dpt", lambda arch: DPT_ARCHS[arch],
              lambda arch, side: DepthEstimator(build_dpt(arch, SEED), DepthConfig(input_size=side))),
    "inpainter": ("lama", lambda arch: dataclasses.asdict(LAMA_ARCHS[arch]), lambda arch, side: build_lama(arch, SEED)),
}


def small_entries(directory: Path) -> dict[str, dict]:
    """role -> {family, arch, params, input_size, weights} from a folder's architectures.json ({} without one)."""
    file = Path(directory) / SMALL_FILE
    return json.loads(file.read_text())["roles"] if file.is_file() else {}


def _small_arch(path: Path) -> str:
    """The architecture name a folder's architectures.json gives its weights file `path`."""
    return next(e["arch"] for e in small_entries(path.parent).values() if e["weights"] == path.name)


def small_entry(role: str, family: str, arch: str, input_size: int, weights: str) -> dict:
    """A role's entry in architectures.json: the architecture by name and in full (what it was trained as)."""
    return {"family": family, "arch": arch, "params": json.loads(json.dumps(SMALL_FAMILIES[role][1](arch))),
            "input_size": input_size, "weights": weights}


def load_small(role: str, path: str, side: int = 0):
    """The model a folder's architectures.json describes, with the weights of `path` (safetensors, any float
    precision, loaded strictly into float32), in eval mode on the CPU. ValueError when the architecture table now
    holds another network under the recorded name."""
    from safetensors.torch import load_file

    entry = small_entries(Path(path).parent)[role]
    family, params, build = SMALL_FAMILIES[role]
    try:
        current = json.loads(json.dumps(params(entry["arch"])))
    except KeyError:
        current = None
    if entry["family"] != family or current != entry["params"]:
        raise ValueError(f"{path}: trained as the {entry['family']} architecture {entry['arch']!r} with "
                         f"{entry['params']}, which vprlib's table no longer holds")
    model = build(entry["arch"], side or int(entry["input_size"]))
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


# The retriever families' model classes (their records, vprlib.train.families), by the family a checkpoint names.
RETRIEVERS: dict[str, type[Retriever]] = {name: family(name).retriever_class() for name in retriever_families()}


def load_retriever(path: str | os.PathLike) -> Retriever:
    """The retriever a checkpoint written by `Retriever.save` holds (any family), in eval mode on the CPU."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    family = checkpoint.get("family") if isinstance(checkpoint, dict) else None
    if family not in RETRIEVERS:
        raise ValueError(f"{path}: not a retriever checkpoint (family {family!r}; known: {', '.join(RETRIEVERS)})")
    return RETRIEVERS[family].from_checkpoint(checkpoint)
