"""The extraction job's config: what the maps are (vprlib.spec.MapSpec) and how the job runs (RunOptions), frozen
dataclasses with the paper's defaults and help text per field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from vprlib.cli import help_text
from vprlib.cluster import DEVICES
from vprlib.spec import EXTRACTION_STRATEGIES, MapSpec

MODES = ("fused", "pools")
PRECISIONS = ("fp32", "bf16")



@dataclass(frozen=True)
class RunOptions:
    """How the extraction job runs on Ray: actors, batches, precision, compilation. None of it changes the maps."""

    mode: str = field(default="fused", metadata=help_text(
        "fused: one actor runs the whole chain on a batch (no object-store round trips between models; the faster "
        "on one GPU); pools: one actor pool per model stage"))
    device: str = field(default="auto", metadata=help_text(
        "auto (cuda when the Ray cluster has GPUs when the job starts, or when the cluster launcher may start GPU "
        "nodes: ~/ray_bootstrap_config.yaml on the head), cpu or cuda"))
    precision: str = field(default="bf16", metadata=help_text("bf16 autocast on CUDA (fp32 on CPU always) or fp32"))
    batch_size: int = field(default=32, metadata=help_text("images per model batch (split in halves on CUDA OOM)"))
    decode_batch_size: int = field(default=8, metadata=help_text("images per CPU decode task"))
    rows_per_file: int = field(default=128, metadata=help_text("rows per output Parquet part file (at most)"))
    actors: int = field(default=1, metadata=help_text("actors per model pool, all started up front"))
    gpus_per_actor: float = field(default=1.0, metadata=help_text(
        "GPUs per fused actor; per stage actor in pools mode it is divided by the number of stages so the pools "
        "share one GPU (fractions allowed)"))
    cpus_per_actor: float = field(default=1.0, metadata=help_text(
        "CPUs reserved per fused actor; divided among the stages in pools mode"))
    actor_threads: int = field(default=2, metadata=help_text(
        "batches an actor takes in at once (batching overlaps; models run one at a time)"))
    concurrent_batches: bool = field(default=False, metadata=help_text(
        "take --actor-threads batches at once per actor, each on its own CUDA stream: one batch's copies and host "
        "work overlap another's forward (the forwards themselves run one at a time)"))
    prefetch_batches: int = field(default=4, metadata=help_text("batches queued per model actor (input prefetch)"))
    compile: bool = field(default=False, metadata=help_text("torch.compile each model (slow start, faster steady)"))
    compile_cache: str = field(default="", metadata=help_text(
        "folder for torch.compile's caches, shared by the model actors (a shared filesystem on a cluster); '' = "
        "torch's per-machine default (/tmp/torchinductor_$USER). A warm cache turns minutes of compilation into "
        "seconds"))
    cudnn_benchmark: bool = field(default=True, metadata=help_text(
        "CUDA: let cudnn time its convolution algorithms per input shape (a slower first batch per shape, usually "
        "faster after)"))
    max_image_pixels: int = field(default=89_478_485, metadata=help_text(
        "decoded pixels above which an image is an error row (bomb guard)"))
    ray_address: str = field(default="", metadata=help_text("Ray cluster address ('' = connect or start local)"))

    def __post_init__(self):
        for name, value, known in (("mode", self.mode, MODES), ("device", self.device, DEVICES),
                                   ("precision", self.precision, PRECISIONS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
        for name in ("batch_size", "decode_batch_size", "rows_per_file", "actors", "actor_threads",
                     "prefetch_batches", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if "://" in self.compile_cache:
            raise ValueError(f"compile_cache must be a filesystem path (a shared one on a cluster), got "
                             f"{self.compile_cache!r}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0:
            raise ValueError("gpus_per_actor and cpus_per_actor must be >= 0")


@dataclass(frozen=True)
class ExtractConfig:
    """One extraction: where from, where to, what maps (`spec`), how (`run`)."""

    input: str = field(metadata=help_text(
        "manifest (.parquet/.csv), folder (manifest.parquet or images + CSV) or s3://"))
    output: str = field(metadata=help_text("output folder (local or s3://) for the maps' Parquet part files"))
    spec: MapSpec = field(default_factory=MapSpec)
    run: RunOptions = field(default_factory=RunOptions)
    retry_errors: bool = field(default=False, metadata=help_text(
        "redo the rows an earlier run of this output wrote as errors (a photo since fixed, a transient storage "
        "error); by default a rerun only writes missing rows"))
    max_failure_fraction: float = field(default=0.05, metadata=help_text(
        "job exits non-zero when more than this fraction of rows failed"))

    def __post_init__(self):
        if self.spec.strategy not in EXTRACTION_STRATEGIES:
            raise ValueError(f"unknown strategy {self.spec.strategy!r} for extraction; known: "
                             f"{', '.join(EXTRACTION_STRATEGIES)}")
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def extract_config(input: str, output: str, **flat) -> ExtractConfig:
    """An ExtractConfig from flat keyword arguments (the command line's, or a test's): each goes to the spec, the run
    options or the config itself by name."""
    spec_names = {f.name for f in fields(MapSpec)}
    run_names = {f.name for f in fields(RunOptions)}
    unknown = set(flat) - spec_names - run_names - {"retry_errors", "max_failure_fraction"}
    if unknown:
        raise TypeError(f"unknown extraction settings: {sorted(unknown)}")
    spec = MapSpec(**{k: v for k, v in flat.items() if k in spec_names})
    run = RunOptions(**{k: v for k, v in flat.items() if k in run_names})
    rest = {k: v for k, v in flat.items() if k not in spec_names | run_names}
    return ExtractConfig(input=input, output=output, spec=spec, run=run, **rest)
