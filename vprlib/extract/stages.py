"""Model stages of the extraction chain (paper Fig. 2) as callable classes over numpy batches.

A strategy (vprlib.spec.STRATEGIES) names its stages in order; STAGES maps each name to its class, and every class
declares the model roles it loads, the batch keys it reads (`consumes`) and the keys it writes (`produces`). Nothing
outside a stage changes those; which of its keys a stage hands back to the host (`emit`) and which batch keys it
drops are derived from the plan by `plan_io`, so only what a later stage or the output needs crosses the object
store.

Each stage loads its models once (or takes ready ones, for tests), computes only the rows whose `status` is 'ok',
and maps `dict[str, ndarray] -> dict[str, ndarray]`, so Ray Data can run it on an actor pool and a test can call it
directly. Inside, `forward(state) -> dict` works on device tensors, so `FusedChain` runs a whole strategy on one GPU
with one host copy in and one out per batch. A CUDA out-of-memory error halves the batch and retries (later batches
start at the size that worked); any other exception turns that batch's rows into error rows naming the stage.

Batch keys on the host: `image` uint8 (B,S,S,3) (float (B,3,S,S) in [0,1] on the device); `mask` bool (B,S,S);
`labels_x` uint8 (B,S,S): S(x); `inpainted` bool (B,): rows LaMa changed; `depth` float32 (B,S,S); `seg` uint8
(B,S,S); `dynamic_fraction` float32 (B,); `seg_prob` float16 (B,4,S,S).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
import warnings

import numpy as np
import torch
from torch import nn

from vprlib.extract.config import RunOptions
from vprlib.models import zoo
from vprlib.models.dynamic import DYNAMIC_ADE20K, dynamic_mask
from vprlib.models.encodings import label_channel
from vprlib.models.hf_image import HFImageModel
from vprlib.spec import ADE20K_NUM_CLASSES, REFINED_CLASSES, MapSpec

OK, ERROR = "ok", "error"


def host_spec(key: str, side: int) -> tuple[tuple[int, ...], type]:
    """Per-row shape and dtype of a batch key on the host."""
    specs = {
        "image": ((side, side, 3), np.uint8),
        "mask": ((side, side), np.bool_),
        "labels_x": ((side, side), np.uint8),
        "inpainted": ((), np.bool_),
        "depth": ((side, side), np.float32),
        "seg": ((side, side), np.uint8),
        "dynamic_fraction": ((), np.float32),
        "seg_prob": ((len(REFINED_CLASSES), side, side), np.float16),
    }
    return specs[key]


_TORCH_DTYPES = {"mask": torch.bool, "labels_x": torch.uint8, "inpainted": torch.bool, "depth": torch.float32,
                 "seg": torch.uint8, "dynamic_fraction": torch.float32, "seg_prob": torch.float16}


def to_device(arrays: dict[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    """numpy batch -> device tensors; images travel as uint8 (4x less copying) and become float there."""
    pin = device == "cuda"
    state = {}
    for key, value in arrays.items():
        with warnings.catch_warnings():  # Ray's zero-copy batches are read-only; these tensors are only read
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(value))
        if pin:
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=pin)
        state[key] = tensor.permute(0, 3, 1, 2).float().div_(255.0) if key == "image" else tensor  # B,3,S,S
    return state


def to_numpy(state: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for key in keys:
        if key == "image":
            tensor = state["image"].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        else:
            tensor = state[key].to(_TORCH_DTYPES[key])
        out[key] = tensor.cpu().numpy()
    return out


class OomSplitter:
    """Runs fn on a numpy batch; on CUDA OOM halves it (recursively) and remembers the size that fitted."""

    def __init__(self):
        self.limit: int | None = None

    def __call__(self, fn, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(arrays.values())))
        step = n if self.limit is None else min(n, self.limit)
        parts = [self._run(fn, {k: v[i : i + step] for k, v in arrays.items()}) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run(self, fn, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(arrays.values())))
        try:
            return fn(arrays)
        except torch.cuda.OutOfMemoryError:
            if n <= 1:
                raise
        # Retried outside the except block: the exception's traceback holds the failed attempt's tensors.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = n // 2
        self.limit = half if self.limit is None else min(self.limit, half)
        first = self._run(fn, {k: v[:half] for k, v in arrays.items()})
        second = self._run(fn, {k: v[half:] for k, v in arrays.items()})
        return {k: np.concatenate([first[k], second[k]]) for k in first}


def prepare(model: nn.Module, run: RunOptions) -> nn.Module:
    """Move a model to its device and set its compute options.

    Zoo models carry a `bf16` flag in their config (on by default, used on CUDA only): fp32 turns it off (the
    refiners are autocast by RefineStage itself). Memory format stays NCHW: channels_last measured slower
    (DPT-Hybrid) or no faster (Big-LaMa) on an H200. With --compile the model is compiled in place, lazily (the
    first call compiles, at the real batch shape), and a model shared by two stages only once."""
    device = _device(run)
    config = getattr(model, "config", None)
    if run.precision == "fp32" and dataclasses.is_dataclass(config) and hasattr(config, "bf16"):
        model.config = dataclasses.replace(config, bf16=False)
    model = model.to(device).eval()
    if run.compile and getattr(model, "_compiled_call_impl", None) is None:
        install_hf_hooks(model, device)
        model.compile()  # in place: calls through any method (labels, probabilities) hit the compiled forward
    return model


def install_hf_hooks(model: nn.Module, device: str) -> None:
    """One eager forward of a 1-image batch, so a Hugging Face model installs its lazy hooks before torch.compile:
    transformers (5.x) installs its output-capturing hooks on the first call that asks for hidden states, under a
    threading lock that dynamo cannot trace (a graph break each). Installed beforehand, each model compiles to one
    graph."""
    if isinstance(model, HFImageModel):
        with torch.inference_mode():
            model(torch.zeros(1, 3, model.input_size, model.input_size, device=device))


def _device(run: RunOptions) -> str:
    return "cuda" if run.device == "cuda" else "cpu"


class Stage:
    """Base: `roles` it loads, `consumes` batch keys, `produces` batch keys; subclasses implement `forward`.

    `emit` (default: everything produced) says which produced keys come back to the host, `drop` which batch keys
    are removed after it (vprlib.extract.stages.plan_io)."""

    name = "stage"
    roles: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ("image",)
    produces: tuple[str, ...] = ()

    def __init__(self, spec: MapSpec, run: RunOptions, models: dict | None = None,
                 emit: tuple[str, ...] | None = None, drop: tuple[str, ...] = ()):
        self.spec, self.run = spec, run
        self.device = _device(run)
        self.emit = self.produces if emit is None else emit
        self.drop = drop
        self.oom = OomSplitter()
        self._local = threading.local()
        self._forward_lock = threading.Lock()
        if self.device == "cuda" and run.precision == "bf16":
            torch.backends.cudnn.benchmark = run.cudnn_benchmark  # fixed map sides: autotuning can pay off
            torch.set_float32_matmul_precision("high")  # TF32 for what stays float32 (FFTs aside)
        models = load_models(self.roles, spec, run, models)
        self.models = {role: models[role] for role in self.roles}

    @staticmethod
    def _fail(batch: dict[str, np.ndarray], rows: np.ndarray, message: str) -> None:
        status, error = batch["status"].astype(object), batch["error"].astype(object)
        status[rows], error[rows] = ERROR, " ".join(message.split())[:500]
        batch["status"], batch["error"] = status, error

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compute(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The stage on ok rows only (numpy in, numpy out, no status handling).

        With --compile, a short batch (the last of a block, one with error rows) is padded to the full batch (or to
        the size an OOM split left), so compiled models see one shape: each new shape would cost a recompilation and
        soon a dynamic graph, which a compile cache filled by another process may not hold."""
        n = len(next(iter(arrays.values())))
        padded = max(n, self.oom.limit or self.run.batch_size) if self.run.compile else n
        if padded > n:
            arrays = {k: np.concatenate([v, np.repeat(v[:1], padded - n, axis=0)]) for k, v in arrays.items()}
        with torch.inference_mode(), self._stream():
            state = to_device(arrays, self.device)
            with self._forward_lock:  # one forward at a time: activations' memory stays 1x, compiles stay serial
                state.update(self.forward(state))
            return {k: v[:n] for k, v in to_numpy(state, self.emit).items()}

    def _stream(self):
        """On CUDA with concurrent batches, each calling thread works on its own stream: while one thread's forward
        runs, another copies its batch in or its maps out (pinning, host-device copies, padding, numpy)."""
        if self.device != "cuda" or not self.run.concurrent_batches:
            return contextlib.nullcontext()
        if not hasattr(self._local, "stream"):
            self._local.stream = torch.cuda.Stream()
        return torch.cuda.stream(self._local.stream)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        n = len(batch["status"])
        rows = np.flatnonzero(batch["status"] == OK)
        every = len(rows) == n  # the common case: no copies into or out of a row selection
        results = {}
        if len(rows):
            try:
                inputs = {k: batch[k] if every else batch[k][rows] for k in self.consumes}
                results = self.oom(self.compute, inputs)
            except Exception as exc:  # a model failure fails these rows, not the job
                self._fail(batch, rows, f"{self.name} stage failed: {type(exc).__name__}: {exc}")
        for key in self.emit:
            if every and key in results:
                batch[key] = results[key]
                continue
            shape, dtype = host_spec(key, self.spec.side)
            full = batch[key].copy() if key in batch else np.zeros((n, *shape), dtype=dtype)
            if key in results:
                full[rows] = results[key]
            batch[key] = full
        return {k: v for k, v in batch.items() if k not in self.drop}


def load_models(roles: tuple[str, ...], spec: MapSpec, run: RunOptions, ready: dict | None = None) -> dict:
    """The prepared model of each role: taken from `ready` when there, else loaded from the registry."""
    ready = ready or {}
    out = {}
    for role in roles:
        model = ready[role] if role in ready else zoo.load(role, spec.models, spec.segmenter_side)
        out[role] = tuple(prepare(m, run) for m in model) if isinstance(model, tuple) else prepare(model, run)
    return out


def bucket_size(n: int, full: int) -> int:
    """`n` rounded up to a power of two, at most `full` (the batch size)."""
    return min(full, 1 << max(n - 1, 0).bit_length())


def on_subset(fn, full: int, *tensors: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """fn on a subset of a batch, padded (repeating its first row) to `bucket_size` rows, or with `exact` to `full`
    rows (compiled models: one shape), cut back to the subset.

    The subsets LaMa and the second segmentation see change size from batch to batch, and every new shape costs
    cudnn's autotuner and torch.compile a tuning pass: buckets bound the shapes to log2(batch) + 1."""
    n = tensors[0].shape[0]
    pad = (max(full, n) if exact else bucket_size(n, max(full, n))) - n
    if pad:
        tensors = tuple(torch.cat([t, t[:1].expand(pad, *t.shape[1:])]) for t in tensors)
    return fn(*tensors)[:n]


def _dynamic_fraction(labels: torch.Tensor) -> torch.Tensor:
    return dynamic_mask(labels).float().mean(dim=(1, 2))


class MaskStage(Stage):
    """Dynamic-object mask from S(x) (paper III-B, eq. 5), the share of dynamic pixels, and S(x) itself."""

    name = "mask"
    roles = ("segmenter",)
    produces = ("mask", "dynamic_fraction", "labels_x")

    def forward(self, state):
        labels = self.models["segmenter"].labels(state["image"])
        return {"mask": dynamic_mask(labels, DYNAMIC_ADE20K, self.spec.dilation),
                "dynamic_fraction": _dynamic_fraction(labels), "labels_x": labels}


class InpaintStage(Stage):
    """y = L(x, mask): Big-LaMa on the images that have masked pixels; the others pass unchanged (`inpainted`)."""

    name = "inpaint"
    roles = ("inpainter",)
    consumes = ("image", "mask")
    produces = ("image", "inpainted")

    def forward(self, state):
        x, mask = state["image"], state["mask"]
        holes = mask.flatten(1).any(dim=1)
        if not bool(holes.any()):
            return {"image": x, "inpainted": holes}
        x = x.clone()
        x[holes] = on_subset(self.models["inpainter"], len(x), x[holes], mask[holes][:, None].float(),
                             exact=self.run.compile).to(x.dtype)
        return {"image": x, "inpainted": holes}


class DepthStage(Stage):
    """d = D(.), per-image min-max normalised relative inverse depth (DepthEstimator.normalize_depth)."""

    name = "depth"
    roles = ("depth",)
    produces = ("depth",)

    def forward(self, state):
        depth = self.models["depth"]
        return {"depth": depth.normalize_depth(depth(state["image"])).float()}


class SegmentStage(Stage):
    """s = S(.), ADE20K labels, and the share of dynamic pixels in them."""

    name = "segment"
    roles = ("segmenter",)
    produces = ("seg", "dynamic_fraction")

    def forward(self, state):
        labels = self.models["segmenter"].labels(state["image"])
        return {"seg": labels, "dynamic_fraction": _dynamic_fraction(labels)}


class ResegmentStage(Stage):
    """s = S(y) after inpainting: S runs again only on the images LaMa changed; the others keep S(x), since y == x
    there bit for bit."""

    name = "resegment"
    roles = ("segmenter",)
    consumes = ("image", "labels_x", "inpainted")
    produces = ("seg",)

    def forward(self, state):
        labels, redo = state["labels_x"].long(), state["inpainted"].bool()
        if bool(redo.any()):
            labels = labels.clone()
            labels[redo] = on_subset(self.models["segmenter"].labels, len(labels), state["image"][redo],
                                     exact=self.run.compile)
        return {"seg": labels}


class RefineStage(Stage):
    """d_r = F_d(d, s), s_r = argmax F_s(d, s) (paper III-A): 4 classes sky, building, terrain, tree, and their
    probabilities."""

    name = "refine"
    roles = ("refiners",)
    consumes = ("depth", "seg")
    produces = ("depth", "seg", "seg_prob")

    def __init__(self, spec: MapSpec, run: RunOptions, models: dict | None = None, **io):
        super().__init__(spec, run, models, **io)
        if self.models["refiners"][1].config.seg_channels != 1:
            raise ValueError("the extraction job feeds refiners the ADE label map as 1 channel (seg_channels=1)")

    def forward(self, state):
        depth_refiner, seg_refiner = self.models["refiners"]
        depth = state["depth"].float()[:, None]  # B,1,S,S
        seg = label_channel(state["seg"], ADE20K_NUM_CLASSES)  # B,1,S,S in [0,1]
        bf16 = self.run.precision == "bf16" and self.device == "cuda"
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=bf16):
            refined = depth_refiner(depth, seg)[:, 0].float()
            logits = seg_refiner(depth, seg).float()
        return {"depth": refined, "seg": logits.argmax(dim=1), "seg_prob": logits.softmax(dim=1)}


STAGES: dict[str, type[Stage]] = {cls.name: cls for cls in (MaskStage, InpaintStage, DepthStage, SegmentStage,
                                                             ResegmentStage, RefineStage)}


def plan_io(spec: MapSpec) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(emit, drop) of each stage of the spec's strategy run one by one (pools): a stage hands back what a later
    stage reads or the output holds, and drops what nothing after it needs."""
    stages = [STAGES[name] for name in spec.plan.stages]
    transient = {"image"} | {key for stage in stages for key in stage.produces}
    io = []
    for i, stage in enumerate(stages):
        needed = {key for later in stages[i + 1:] for key in later.consumes} | set(spec.outputs)
        emit = tuple(key for key in stage.produces if key in needed)
        io.append((emit, tuple(sorted(transient - needed))))
    return io


def build_stage(name: str, spec: MapSpec, run: RunOptions, models: dict | None = None) -> Stage:
    """One stage of the spec's strategy, by name, with the emit/drop its place in the plan gives it."""
    if name not in spec.plan.stages:
        raise ValueError(f"strategy {spec.strategy} has no stage {name!r}; its stages: {', '.join(spec.plan.stages)}")
    emit, drop = plan_io(spec)[spec.plan.stages.index(name)]
    return STAGES[name](spec, run, models, emit=emit, drop=drop)


class FusedChain(Stage):
    """The whole strategy in one actor: stages composed on the device, one host copy in and one out per batch;
    each model is loaded once, however many stages use it."""

    name = "fused"

    def __init__(self, spec: MapSpec, run: RunOptions, models: dict | None = None):
        start = time.perf_counter()
        self.roles = spec.plan.models
        transient = {"image"} | {key for name in spec.plan.stages for key in STAGES[name].produces}
        super().__init__(spec, run, models, emit=spec.outputs, drop=tuple(sorted(transient - set(spec.outputs))))
        self.stages = [STAGES[name](spec, run, self.models) for name in spec.plan.stages]
        # Printed by each actor (Ray forwards it to the driver): how much of a job's start-up is model loading. On
        # stderr, so a command printing its results (JSON) on stdout keeps them clean.
        print(f"extract: {spec.strategy} chain ({spec.models}) ready on {self.device} in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    def forward(self, state):
        for stage in self.stages:
            state.update(stage.forward(state))
        return state
