"""The extraction job's one config: a frozen dataclass with the paper's defaults and help text per field."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

STRATEGIES = ("inpaint", "synthetic", "none")
MODES = ("fused", "pools")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ExtractConfig:
    input: str = field(metadata={"help": "manifest (.parquet/.csv), folder (manifest.parquet or images + CSV) or s3://"})
    output: str = field(metadata={"help": "output folder (local or s3://) for the maps' Parquet part files"})
    strategy: str = field(
        default="inpaint",
        metadata={"help": "inpaint (paper III-B: mask dynamic objects, LaMa, then D and S), "
                  "synthetic (III-A: D and S refined by the two U-Nets) or none (unrefined D and S)"},
    )
    models: str = field(
        default="paper",
        metadata={"help": "paper (published weights), tiny (small random, offline), paper-random (paper-size "
                  "architectures, random weights: benchmarks) or a local models folder"},
    )
    side: int = field(default=512, metadata={"help": "maps are side x side pixels (paper: 512, HoliCity's size)"})
    mode: str = field(
        default="fused",
        metadata={"help": "fused: one actor runs the whole chain on a batch (no object-store round trips between "
                  "models; the faster on one GPU); pools: one actor pool per model stage"},
    )
    device: str = field(
        default="auto",
        metadata={"help": "auto (cuda when the Ray cluster has GPUs when the job starts, or when the cluster "
                  "launcher may start GPU nodes: ~/ray_bootstrap_config.yaml on the head), cpu or cuda"},
    )
    precision: str = field(default="bf16", metadata={"help": "bf16 autocast on CUDA (fp32 on CPU always) or fp32"})
    batch_size: int = field(default=32, metadata={"help": "images per model batch (split in halves on CUDA OOM)"})
    decode_batch_size: int = field(default=8, metadata={"help": "images per CPU decode task"})
    rows_per_file: int = field(default=128, metadata={"help": "rows per output Parquet part file (at most)"})
    actors: int = field(default=1, metadata={"help": "actors per model pool, all started up front"})
    gpus_per_actor: float = field(
        default=1.0, metadata={"help": "GPUs per fused actor; per stage actor in pools mode it is divided by the "
                               "number of stages so the pools share one GPU (fractions allowed)"},
    )
    cpus_per_actor: float = field(
        default=1.0, metadata={"help": "CPUs reserved per fused actor; divided among the stages in pools mode"},
    )
    actor_threads: int = field(
        default=2, metadata={"help": "batches an actor takes in at once (batching overlaps; models run one at a time)"},
    )
    concurrent_batches: bool = field(
        default=False, metadata={"help": "take --actor-threads batches at once per actor, each on its own CUDA "
                                 "stream: one batch's copies and host work overlap another's forward (the forwards "
                                 "themselves run one at a time)"},
    )
    prefetch_batches: int = field(default=4, metadata={"help": "batches queued per model actor (input prefetch)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile each model (slow start, faster steady)"})
    compile_cache: str = field(
        default="", metadata={"help": "folder for torch.compile's caches, shared by the model actors (a shared "
                              "filesystem on a cluster); '' = torch's per-machine default (/tmp/torchinductor_$USER). "
                              "A warm cache turns minutes of compilation into seconds"},
    )
    cudnn_benchmark: bool = field(
        default=True, metadata={"help": "CUDA: let cudnn time its convolution algorithms per input shape (a slower "
                                "first batch per shape, usually faster after)"},
    )
    dilation: int = field(default=0, metadata={"help": "pixels the dynamic-object mask is grown by before LaMa"})
    seg_probabilities: bool = field(
        default=False, metadata={"help": "synthetic: also store the refined 4-class probabilities (float16)"},
    )
    max_image_pixels: int = field(
        default=89_478_485, metadata={"help": "decoded pixels above which an image is an error row (bomb guard)"},
    )
    retry_errors: bool = field(
        default=False, metadata={"help": "redo the rows an earlier run of this output wrote as errors (a photo since "
                                 "fixed, a transient storage error); by default a rerun only writes missing rows"},
    )
    max_failure_fraction: float = field(
        default=0.05, metadata={"help": "job exits non-zero when more than this fraction of rows failed"},
    )
    ray_address: str = field(default="", metadata={"help": "Ray cluster address ('' = connect or start local)"})

    def __post_init__(self):
        for name, value, known in (("strategy", self.strategy, STRATEGIES), ("mode", self.mode, MODES),
                                   ("device", self.device, DEVICES), ("precision", self.precision, PRECISIONS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
        for name in ("side", "batch_size", "decode_batch_size", "rows_per_file", "actors", "actor_threads",
                     "prefetch_batches", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")
        if "://" in self.compile_cache:
            raise ValueError(f"compile_cache must be a filesystem path (a shared one on a cluster), got "
                             f"{self.compile_cache!r}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0 or self.dilation < 0:
            raise ValueError("gpus_per_actor, cpus_per_actor and dilation must be >= 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def field_help() -> dict[str, str]:
    """Each field's help text, for the command line."""
    return {f.name: f.metadata.get("help", "") for f in fields(ExtractConfig)}
