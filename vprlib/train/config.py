"""The training job's config: what is trained on what (TrainConfig), and the model families' own options, frozen
dataclasses with the paper's defaults (or the family's published recipe where the paper is silent) and help text.

Which options class a family takes, and its recipe's epochs, learning rate and batch size, are in its record
(vprlib.train.families); `train_config` fills the recipe in for whatever the caller leaves unset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from vprlib.cli import help_text
from vprlib.models.archs import BACKBONES, MODALITIES, REFINER_ARCHS, SEG_ENCODING_NAMES


def check_known(what: str, value, known) -> None:
    """ValueError naming `value` and the known ones when it is not among them (an options class's own check)."""
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")


@dataclass(frozen=True)
class CpuOptions:
    """What every family's options share: the worker's torch threads on a CPU (applied by WorkerRun)."""

    threads: int = field(default=0, metadata=help_text(
        "torch threads per worker on a CPU (0 = --cpus-per-worker). More than the worker reserves is for a machine "
        "the run has to itself: the CPU left for data tasks mostly waits once the maps are cached"))


@dataclass(frozen=True)
class RefinerOptions(CpuOptions):
    """The two refiners of paper III-A (Fig. 3), trained from unrefined maps to the ground truth."""

    target: str = field(default="both", metadata=help_text(
        "depth, seg or both: which refiner to train (both: two networks with their own losses and optimisers, in "
        "one pass over the data)"))
    arch: str = field(default="paper", metadata=help_text(f"refiner size: {', '.join(REFINER_ARCHS)}"))
    max_depth_m: float = field(default=200.0, metadata=help_text(
        "ground truth farther than this (metres) is left out of the depth loss and metrics"))
    plateau_patience: int = field(default=3, metadata=help_text(
        "epochs without a better validation loss before the learning rate drops tenfold (ReduceLROnPlateau)"))
    early_stop: int = field(default=6, metadata=help_text(
        "epochs without a better validation loss before training stops (0: never)"))

    def __post_init__(self):
        check_known("refiner target", self.target, ("depth", "seg", "both"))
        check_known("refiner arch", self.arch, REFINER_ARCHS)

    @property
    def targets(self) -> tuple[str, ...]:
        return ("depth", "seg") if self.target == "both" else (self.target,)


@dataclass(frozen=True)
class RetrieverOptions(CpuOptions):
    """What every retriever family shares: the maps it sees and how segmentation becomes channels."""

    input: str = field(default="depth+seg", metadata=help_text(
        f"maps the retriever sees: {', '.join(MODALITIES)} (the paper's best: both; the others are its ablations)"))
    seg_encoding: str = field(default="label", metadata=help_text(
        f"segmentation as channels: {', '.join(SEG_ENCODING_NAMES)} (the paper: the label map as one channel)"))
    imagenet: str = field(default="", metadata=help_text(
        "a local torchvision ImageNet state dict for the backbone (first convolution adapted to the maps' "
        "channels); '' = random weights (nothing is downloaded)"))

    def __post_init__(self):
        check_known("input", self.input, MODALITIES)
        check_known("seg_encoding", self.seg_encoding, SEG_ENCODING_NAMES)


@dataclass(frozen=True)
class CosPlaceOptions(RetrieverOptions):
    """CosPlace (Berton et al., CVPR 2022) as its code trains it: classification of UTM cells x heading bins with one
    Large Margin Cosine Loss classifier per group of non-adjacent classes, groups trained in turn."""

    backbone: str = field(default="resnet50", metadata=help_text(
        f"{', '.join(BACKBONES)} (the paper's best trade-off: resnet50)"))
    descriptor_size: int = field(default=512, metadata=help_text("descriptor size (CosPlace's fc_output_dim)"))
    cell_m: float = field(default=10.0, metadata=help_text("M: metres of a class's UTM cell"))
    heading_deg: float = field(default=30.0, metadata=help_text("alpha: degrees of a class's heading bin"))
    group_cells: int = field(default=5, metadata=help_text("N: classes of one group are N cells apart"))
    group_bins: int = field(default=2, metadata=help_text("L: classes of one group are L heading bins apart"))
    groups: int = field(default=8, metadata=help_text("groups trained, one per epoch in turn (CosPlace: 8)"))
    min_images_per_class: int = field(default=10, metadata=help_text("classes with fewer images are left out"))
    classifier_lr: float = field(default=0.01, metadata=help_text("Adam learning rate of the classifiers"))
    iterations_per_epoch: int = field(default=10000, metadata=help_text(
        "batches per epoch, drawn from the epoch's group and cycling it (CosPlace: 10,000); 0 = one pass over the "
        "group"))

    def __post_init__(self):
        super().__post_init__()
        check_known("backbone", self.backbone, BACKBONES)
        if min(self.groups, self.descriptor_size, self.group_cells, self.group_bins) < 1:
            raise ValueError("groups, descriptor_size, group_cells and group_bins must be >= 1")
        if self.iterations_per_epoch < 0:
            raise ValueError(f"iterations_per_epoch must be >= 0, got {self.iterations_per_epoch}")


@dataclass(frozen=True)
class NetVLADOptions(RetrieverOptions):
    """NetVLAD (Arandjelovic et al., CVPR 2016) as its PyTorch port trains it: VGG16 + NetVLAD, clusters from k-means,
    triplets mined from a descriptor cache refreshed every epoch."""

    clusters: int = field(default=64, metadata=help_text("K, the NetVLAD layer's clusters"))
    negatives: int = field(default=10, metadata=help_text("hard negatives per triplet"))
    margin: float = field(default=math.sqrt(0.1), metadata=help_text("triplet margin (sqrt 0.1)"))
    positive_m: float = field(default=10.0, metadata=help_text("positives lie within this many metres"))
    negative_m: float = field(default=25.0, metadata=help_text("negatives lie beyond this many metres"))
    queries_per_epoch: int = field(default=0, metadata=help_text(
        "training queries drawn afresh each epoch (0 = all, as NetVLAD does; fewer: shorter epochs on a CPU)"))
    cache_size: int = field(default=1000, metadata=help_text(
        "training images embedded into the mining cache each epoch (positives and negatives come from it)"))
    momentum: float = field(default=0.9, metadata=help_text("SGD momentum"))
    weight_decay: float = field(default=0.001, metadata=help_text("SGD weight decay"))
    lr_step: int = field(default=5, metadata=help_text("epochs between learning-rate halvings (StepLR, gamma 0.5)"))

    def __post_init__(self):
        super().__post_init__()
        if self.input == "rgb":
            raise ValueError("NetVLAD trains on maps here; --input rgb (the appearance baseline) is CosPlace's")
        if self.queries_per_epoch < 0:
            raise ValueError(f"queries_per_epoch must be >= 0, got {self.queries_per_epoch}")
        if self.positive_m >= self.negative_m:
            raise ValueError(f"positive_m ({self.positive_m}) must be below negative_m ({self.negative_m})")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. `options` holds the family's own settings."""

    family: str = field(metadata=help_text("what is trained: a family of vprlib.train.families"))
    maps: str = field(metadata=help_text("the maps table to train on (jobs/extract.py output, or a city's gt_maps)"))
    output: str = field(metadata=help_text("folder (local or s3://) for checkpoints, metrics and the run's record"))
    options: object = None
    targets: str = field(default="", metadata=help_text(
        "refiner: the ground-truth maps table of the same images (strategy ground-truth)"))
    val_maps: str = field(default="", metadata=help_text("maps validated on ('' = --maps)"))
    train_split: str = field(default="train", metadata=help_text("rows trained on: this split of --maps"))
    val_split: str = field(default="val", metadata=help_text("rows validated on: this split of --val-maps"))
    epochs: int = field(default=0, metadata=help_text("epochs, at least 1 (the family's recipe unless given)"))
    lr: float = field(default=0.0, metadata=help_text("the network's learning rate (the family's recipe unless given)"))
    batch_size: int = field(default=0, metadata=help_text(
        "images per step, all workers together (NetVLAD: triplets; the family's recipe unless given)"))
    side: int = field(default=0, metadata=help_text("maps are resized to side x side for training (0 = their own)"))
    seed: int = field(default=0, metadata=help_text("seed of weights, shuffling and sampling"))
    workers: int = field(default=1, metadata=help_text("Ray Train workers (DDP when more than one)"))
    min_workers: int = field(default=1, metadata=help_text(
        "fewest workers a run goes on with when a node is lost and none replaces it (Ray Train's elastic scaling: "
        "the batch is split among the workers left); --workers keeps the group fixed"))
    gpus_per_worker: float = field(default=-1.0, metadata=help_text(
        "GPUs per worker (0 on CPU; -1 = 1 when the cluster has or may add GPUs, else 0)"))
    cpus_per_worker: float = field(default=1.0, metadata=help_text("CPUs reserved per worker"))
    precision: str = field(default="bf16", metadata=help_text("bf16 autocast on CUDA (fp32 on CPU always) or fp32"))
    resume: bool = field(default=True, metadata=help_text(
        "continue an interrupted run in --output from its last checkpoint; off: start afresh"))
    ray_address: str = field(default="", metadata=help_text("Ray cluster address ('' = connect or start local)"))

    def __post_init__(self):
        record = _family(self.family)
        if not isinstance(self.options, record.options):
            raise ValueError(f"{self.family} needs {record.options.__name__}, got {type(self.options).__name__}")
        if record.targets and not self.targets:
            raise ValueError("the refiners need --targets, the ground-truth maps of the training images")
        for name in ("epochs", "batch_size", "workers", "min_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_workers > self.workers:
            raise ValueError(f"min_workers {self.min_workers} is more than workers {self.workers}")
        if self.lr <= 0 or self.side < 0 or self.cpus_per_worker < 0 or self.options.threads < 0:
            raise ValueError("lr must be > 0, side, cpus_per_worker and threads >= 0")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"unknown precision {self.precision!r}; known: bf16, fp32")
        if self.batch_size % self.workers:
            raise ValueError(f"batch_size {self.batch_size} must divide among {self.workers} workers")

    def to_dict(self) -> dict:
        return {**asdict(self), "options": asdict(self.options)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        options = _family(values["family"]).options(**values.pop("options"))
        return cls(**values, options=options)


def train_config(family: str, maps: str, output: str, **flat) -> TrainConfig:
    """A TrainConfig from flat keyword arguments (the command line's, a sweep's, a test's): each goes to the config
    or to the family's options by name; epochs, lr and batch_size left out (or None) take the family's defaults. A
    value given is kept, so `epochs=0` is refused rather than silently trained for the family's 50."""
    record = _family(family)
    option_names = {f.name for f in fields(record.options)}
    config_names = {f.name for f in fields(TrainConfig)} - {"family", "maps", "output", "options"}
    unknown = set(flat) - option_names - config_names
    if unknown:
        raise TypeError(f"unknown {family} training settings: {sorted(unknown)}")
    options = record.options(**{k: v for k, v in flat.items() if k in option_names})
    common = {k: v for k, v in flat.items() if k in config_names}
    for name, default in record.defaults.items():
        if common.get(name) is None:
            common[name] = default
    return TrainConfig(family=family, maps=maps, output=output, options=options, **common)


def _family(name: str):
    """The registry's record of `name` (imported here: the registry's records name this module's options)."""
    from vprlib.train.families import family

    return family(name)


def check_inputs(config: TrainConfig) -> None:
    """Every folder the run reads exists: a mistyped --maps is one line naming it, before Ray starts (and before a
    sweep's search space is looked at), not a missing _map_spec.json after it."""
    from vprlib.storage import url_to_fs

    for flag, path in (("--maps", config.maps), ("--targets", config.targets), ("--val-maps", config.val_maps)):
        if not path:
            continue
        try:
            fs, root = url_to_fs(path)
            found = fs.exists(root)
        except Exception as exc:  # no credentials, an unknown bucket, a storage without its fsspec package
            raise ValueError(f"{flag} {path} cannot be read: {type(exc).__name__}: {exc}") from None
        if not found:
            raise ValueError(f"{flag} {path} does not exist")


def with_options(config: TrainConfig, **changes) -> TrainConfig:
    """`config` with some fields of it or of its options changed (a sweep's trial)."""
    option_names = {f.name for f in fields(config.options)}
    options = replace(config.options, **{k: v for k, v in changes.items() if k in option_names})
    return replace(config, options=options, **{k: v for k, v in changes.items() if k not in option_names})
