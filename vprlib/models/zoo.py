"""Where the pipeline's pretrained models come from: one string, `models`, picks a whole set.

- "tiny": small architectures, seeded random weights; offline, fast on a CPU (tests, the synthetic city demo).
- "paper-random": the paper's exact architectures (SegFormer-B5, DPT-Hybrid, Big-LaMa) with seeded random
  weights, for GPU benchmarks and parameter counts.
- "paper": the published weights: SegFormer and DPT from the local Hugging Face cache (never downloaded here),
  Big-LaMa from `$VPRLIB_HOME` (default `~/.cache/vprlib`) as `big-lama/models/best.ckpt`, `big-lama/best.ckpt`
  or `big-lama.pt`.
- a directory: `segformer/` and `dpt/` (Hugging Face `save_pretrained` folders) and Big-LaMa as above.
Every loader returns its model in eval mode on the CPU. A missing checkpoint raises FileNotFoundError saying what
to download and where to put it.
"""

import os
from pathlib import Path

from transformers import DPTForDepthEstimation, SegformerForSemanticSegmentation

from vprlib.models.dpt import DepthConfig, DepthEstimator, build_dpt
from vprlib.models.lama import LamaInpainter, build_lama, load_lama
from vprlib.models.segformer import Segmenter, SegmenterConfig, build_segformer

SEGFORMER_ID = "nvidia/segformer-b5-finetuned-ade-640-640"
DPT_ID = "Intel/dpt-hybrid-midas"
LAMA_FILES = ("big-lama/models/best.ckpt", "big-lama/best.ckpt", "big-lama.pt")
SEED = 0

# Random-weight presets: architecture names per model, and the input sides they run at.
RANDOM_PRESETS: dict[str, dict[str, str]] = {
    "tiny": {"segmenter": "tiny", "depth": "tiny", "inpainter": "tiny"},
    "paper-random": {"segmenter": "b5", "depth": "hybrid", "inpainter": "big-lama"},
}
TINY_SIDE = 64
KNOWN = (*RANDOM_PRESETS, "paper")


def vprlib_home() -> Path:
    """Where "paper" weights that are not on the Hugging Face hub live (Big-LaMa, trained refiners)."""
    return Path(os.environ.get("VPRLIB_HOME", Path.home() / ".cache" / "vprlib")).expanduser()


def _models_dir(models: str) -> Path:
    """The directory holding the weights for "paper" or a user directory; ValueError for anything else."""
    if models == "paper":
        return vprlib_home()
    path = Path(models)
    if not path.is_dir():
        raise ValueError(f"unknown models {models!r}: use one of {list(KNOWN)} or an existing directory")
    return path


def _hf_source(models: str, sub: str, hub_id: str) -> str:
    return hub_id if models == "paper" else str(_models_dir(models) / sub)


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
    """The ADE20K segmenter S for a models string (see module docstring)."""
    if models in RANDOM_PRESETS:
        arch = RANDOM_PRESETS[models]["segmenter"]
        config = SegmenterConfig(input_size=TINY_SIDE) if models == "tiny" else SegmenterConfig()
        return Segmenter(build_segformer(arch, SEED), config).eval()
    source = _hf_source(models, "segformer", SEGFORMER_ID)
    return Segmenter(_hf_pretrained(SegformerForSemanticSegmentation, source, SEGFORMER_ID, "segformer")).eval()


def load_depth(models: str) -> DepthEstimator:
    """The relative inverse depth estimator D for a models string (see module docstring)."""
    if models in RANDOM_PRESETS:
        arch = RANDOM_PRESETS[models]["depth"]
        config = DepthConfig(input_size=TINY_SIDE) if models == "tiny" else DepthConfig()
        return DepthEstimator(build_dpt(arch, SEED), config).eval()
    source = _hf_source(models, "dpt", DPT_ID)
    model = _hf_pretrained(DPTForDepthEstimation, source, DPT_ID, "dpt")
    return DepthEstimator(model, DepthConfig(input_size=model.config.image_size)).eval()  # dpt-hybrid-midas: 384


def lama_path(models: str) -> Path:
    """The first Big-LaMa checkpoint present under the models directory; FileNotFoundError if none is."""
    base = _models_dir(models)
    for name in LAMA_FILES:
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(
        f"no Big-LaMa checkpoint under {base}: expected one of {list(LAMA_FILES)}. Download big-lama.zip from "
        f"github.com/advimman/lama (the 'big-lama' model) and unzip it in {base} (giving big-lama/models/best.ckpt), "
        f"or put the TorchScript big-lama.pt at {base / 'big-lama.pt'}."
    )


def load_inpainter(models: str) -> LamaInpainter:
    """The Big-LaMa inpainter L for a models string (see module docstring)."""
    if models in RANDOM_PRESETS:
        return build_lama(RANDOM_PRESETS[models]["inpainter"], SEED)
    return load_lama(lama_path(models))


def model_identity(models: str) -> dict[str, str]:
    """What each model of a models string is, for provenance columns (no weights are loaded)."""
    if models in RANDOM_PRESETS:
        archs = RANDOM_PRESETS[models]
        return {role: f"random:{arch}:seed={SEED}" for role, arch in archs.items()}
    base = _models_dir(models)
    try:
        lama = str(lama_path(models))
    except FileNotFoundError:
        lama = f"missing:{base}/big-lama"
    return {
        "segmenter": _hf_source(models, "segformer", SEGFORMER_ID),
        "depth": _hf_source(models, "dpt", DPT_ID),
        "inpainter": lama,
    }
