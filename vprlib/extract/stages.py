"""Model stages of the extraction chain (paper Fig. 2) as callable classes over numpy batches.

Each stage loads its model once (or takes one, for tests), computes only the rows whose `status` is 'ok', and maps
`dict[str, ndarray] -> dict[str, ndarray]` so Ray Data can run it on an actor pool, or a test can call it directly.
Inside, a stage is `forward(state) -> dict` over tensors on the device, so `FusedChain` composes them on one GPU
without object-store round trips. A CUDA out-of-memory error halves the batch and retries (and later batches start
at the size that worked); any other exception turns that batch's rows into error rows naming the stage.

Batch keys: `image` uint8 (B,S,S,3); `mask` bool (B,S,S); `depth` float32 (B,S,S); `seg` uint8 (B,S,S);
`dynamic_fraction` float32 (B,); `seg_prob` float16 (B,4,S,S). On the device an image is `x`, float (B,3,S,S).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

import numpy as np
import torch

from vprlib.extract.config import ExtractConfig
from vprlib.extract.loaders import prepare
from vprlib.models import zoo
from vprlib.models.dynamic import DYNAMIC_ADE20K, dynamic_mask
from vprlib.models.refiner import REFINED_CLASSES, labels_to_channel, load_refiners

OK, ERROR = "ok", "error"


def output_spec(key: str, side: int) -> tuple[tuple[int, ...], np.dtype]:
    """Per-row shape and dtype of a batch key."""
    specs = {
        "image": ((side, side, 3), np.uint8),
        "mask": ((side, side), np.bool_),
        "depth": ((side, side), np.float32),
        "seg": ((side, side), np.uint8),
        "dynamic_fraction": ((), np.float32),
        "seg_prob": ((len(REFINED_CLASSES), side, side), np.float16),
    }
    return specs[key]


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
        if key == "image":
            state["x"] = tensor.permute(0, 3, 1, 2).float().div_(255.0)  # B,3,S,S, NHWC in memory
        else:
            state[key] = tensor
    return state


def to_numpy(state: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for key in keys:
        if key == "image":
            tensor = state["x"].mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        else:
            tensor = state[key].to(_TORCH_DTYPES[key])
        out[key] = tensor.cpu().numpy()
    return out


_TORCH_DTYPES = {"mask": torch.bool, "depth": torch.float32, "seg": torch.uint8, "dynamic_fraction": torch.float32,
                 "seg_prob": torch.float16}


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


class Stage:
    """Base: `consumes` batch keys, `produces` batch keys; subclasses implement `forward(state) -> dict`."""

    name = "stage"
    consumes: tuple[str, ...] = ("image",)
    produces: tuple[str, ...] = ()

    drops: tuple[str, ...] = ()  # batch keys no later stage needs: dropped so they do not cross the object store

    def __init__(self, config: ExtractConfig):
        self.config = config
        self.device = "cuda" if config.device == "cuda" else "cpu"
        self.oom = OomSplitter()
        self._local = threading.local()
        self._forward_lock = threading.Lock()
        if self.device == "cuda" and config.precision == "bf16":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark  # fixed map sides: autotuning can pay off
            torch.set_float32_matmul_precision("high")  # TF32 for what stays float32 (FFTs aside)

    @staticmethod
    def _fail(batch: dict[str, np.ndarray], rows: np.ndarray, message: str) -> None:
        status, error = batch["status"].astype(object), batch["error"].astype(object)
        status[rows], error[rows] = ERROR, " ".join(message.split())[:500]
        batch["status"], batch["error"] = status, error

    def _prepare(self, model):
        c = self.config
        return prepare(model, self.device, c.precision, c.compile)

    def forward(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compute(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The stage on ok rows only (numpy in, numpy out, no status handling).

        With --compile, a short batch (the last of a block, one with error rows) is padded to the full batch (or
        to the size an OOM split left): compiled models then see one shape. Each new shape would cost a
        recompilation, and after the second one dynamo's automatic dynamic shapes compiles yet another, dynamic
        graph that a compile cache filled by another process may not hold (seen on the CPU: every graph missed)."""
        n = len(next(iter(arrays.values())))
        padded = max(n, self.oom.limit or self.config.batch_size) if self.config.compile else n
        if padded > n:
            arrays = {k: np.concatenate([v, np.repeat(v[:1], padded - n, axis=0)]) for k, v in arrays.items()}
        with torch.inference_mode(), self._stream():
            state = to_device(arrays, self.device)
            with self._forward_lock:  # one forward at a time: activations' memory stays 1x, compiles stay serial
                state.update(self.forward(state))
            return {k: v[:n] for k, v in to_numpy(state, self.produces).items()}

    def _stream(self):
        """On CUDA with concurrent batches, each calling thread works on its own stream: while one thread's forward
        runs, another copies its batch in or its maps out (pinning, host-device copies, padding, numpy)."""
        if self.device != "cuda" or not self.config.concurrent_batches:
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
        for key in self.produces:
            if every and key in results:
                batch[key] = results[key]
                continue
            shape, dtype = output_spec(key, self.config.side)
            full = batch[key].copy() if key in batch else np.zeros((n, *shape), dtype=dtype)
            if key in results:
                full[rows] = results[key]
            batch[key] = full
        return {k: v for k, v in batch.items() if k not in self.drops}


def bucket_size(n: int, full: int) -> int:
    """`n` rounded up to a power of two, at most `full` (the batch size)."""
    return min(full, 1 << max(n - 1, 0).bit_length())


def on_subset(fn, full: int, *tensors: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """fn on a subset of a batch, padded (repeating its first row) to `bucket_size` rows, or with `exact` to `full`
    rows (compiled models: one shape), cut back to the subset.

    The subsets LaMa and the second segmentation see change size from batch to batch; every new shape costs
    cudnn's autotuner (cudnn.benchmark) and torch.compile a new tuning pass, which on an H200 held the first
    ~30 s of a Ray job at a quarter of its steady rate. Buckets bound the shapes to log2(batch) + 1."""
    n = tensors[0].shape[0]
    pad = (max(full, n) if exact else bucket_size(n, max(full, n))) - n
    if pad:
        tensors = tuple(torch.cat([t, t[:1].expand(pad, *t.shape[1:])]) for t in tensors)
    return fn(*tensors)[:n]


def _dynamic_fraction(labels: torch.Tensor) -> torch.Tensor:
    return dynamic_mask(labels).float().mean(dim=(1, 2))


class MaskStage(Stage):
    """Dynamic-object mask from S(x) (paper III-B, eq. 5) and the share of dynamic pixels."""

    name = "mask"
    produces = ("mask", "dynamic_fraction")

    def __init__(self, config: ExtractConfig, segmenter=None):
        super().__init__(config)
        self.segmenter = self._prepare(segmenter if segmenter is not None else zoo.load_segmenter(config.models))

    def forward(self, state):
        labels = self.segmenter.labels(state["x"])
        return {"mask": dynamic_mask(labels, DYNAMIC_ADE20K, self.config.dilation),
                "dynamic_fraction": _dynamic_fraction(labels), "labels_x": labels}


class InpaintStage(Stage):
    """y = L(x, mask): Big-LaMa on the images that have masked pixels; the others pass unchanged."""

    name = "inpaint"
    consumes = ("image", "mask")
    produces = ("image",)

    def __init__(self, config: ExtractConfig, inpainter=None):
        super().__init__(config)
        self.inpainter = self._prepare(inpainter if inpainter is not None else zoo.load_inpainter(config.models))

    def forward(self, state):
        x, mask = state["x"], state["mask"]
        holes = mask.flatten(1).any(dim=1)
        if not bool(holes.any()):
            return {"x": x, "inpainted": holes}
        x = x.clone()
        x[holes] = on_subset(self.inpainter, len(x), x[holes], mask[holes][:, None].float(),
                             exact=self.config.compile).to(x.dtype)
        return {"x": x, "inpainted": holes}


class DepthStage(Stage):
    """d = D(.), per-image min-max normalised relative inverse depth (DepthEstimator.normalize_depth)."""

    name = "depth"
    produces = ("depth",)

    def __init__(self, config: ExtractConfig, depth=None):
        super().__init__(config)
        self.depth = self._prepare(depth if depth is not None else zoo.load_depth(config.models))

    def forward(self, state):
        return {"depth": self.depth.normalize_depth(self.depth(state["x"])).float()}


class SegmentStage(Stage):
    """s = S(.), ADE20K labels; also the dynamic share when no mask stage ran before (strategies none, synthetic).

    In the fused inpaint chain, images LaMa left untouched (no dynamic pixel) keep their S(x) labels: y == x there
    bit for bit, so S(y) would only repeat the work."""

    name = "segment"

    def __init__(self, config: ExtractConfig, segmenter=None, with_dynamic_fraction: bool = True):
        super().__init__(config)
        self.segmenter = self._prepare(segmenter if segmenter is not None else zoo.load_segmenter(config.models))
        self.with_dynamic_fraction = with_dynamic_fraction
        self.produces = ("seg", "dynamic_fraction") if with_dynamic_fraction else ("seg",)

    def forward(self, state):
        if "labels_x" in state and "inpainted" in state:  # fused inpaint chain: y == x where nothing was inpainted
            labels, redo = state["labels_x"].clone(), state["inpainted"]
            if bool(redo.any()):
                labels[redo] = on_subset(self.segmenter.labels, len(labels), state["x"][redo],
                                         exact=self.config.compile)
        else:
            labels = self.segmenter.labels(state["x"])
        out = {"seg": labels}
        if self.with_dynamic_fraction:
            out["dynamic_fraction"] = _dynamic_fraction(labels)
        return out


class RefineStage(Stage):
    """d_r = F_d(d, s), s_r = argmax F_s(d, s) (paper III-A): 4 classes sky, building, terrain, tree."""

    name = "refine"
    consumes = ("depth", "seg")

    def __init__(self, config: ExtractConfig, refiners=None):
        super().__init__(config)
        depth_refiner, seg_refiner = refiners if refiners is not None else load_refiners(config.models)
        if seg_refiner.config.seg_channels != 1:
            raise ValueError("the extraction job feeds refiners the ADE label map as 1 channel (seg_channels=1)")
        self.depth_refiner, self.seg_refiner = self._prepare(depth_refiner), self._prepare(seg_refiner)
        self.produces = ("depth", "seg", "seg_prob") if config.seg_probabilities else ("depth", "seg")

    def forward(self, state):
        depth = state["depth"].float()[:, None]  # B,1,S,S
        seg = labels_to_channel(state["seg"].long())  # B,1,S,S in [0,1]
        bf16 = self.config.precision == "bf16" and self.device == "cuda"
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=bf16):
            refined = self.depth_refiner(depth, seg)[:, 0].float()
            logits = self.seg_refiner(depth, seg).float()
        out = {"depth": refined, "seg": logits.argmax(dim=1)}
        if self.config.seg_probabilities:
            out["seg_prob"] = logits.softmax(dim=1)
        return out


class FusedChain(Stage):
    """The whole strategy in one actor: stages composed on the device, one host copy in and one out per batch."""

    name = "fused"

    def __init__(self, config: ExtractConfig, models: dict | None = None):
        start = time.perf_counter()
        super().__init__(config)
        self.stages = build_stages(config, models or {}, fused=True)
        self.produces = final_keys(config)
        self.drops = ("image", "mask")
        # Printed by each actor (Ray forwards it to the driver): how much of a job's start-up is model loading.
        print(f"extract: {config.strategy} chain ({config.models}) ready on {self.device} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)

    def forward(self, state):
        for stage in self.stages:
            state.update(stage.forward(state))
        return state


def final_keys(config: ExtractConfig) -> tuple[str, ...]:
    keys = ("depth", "seg", "dynamic_fraction")
    return keys + ("seg_prob",) if config.strategy == "synthetic" and config.seg_probabilities else keys


def stage_plan(strategy: str) -> tuple[str, ...]:
    """The stage names of a strategy, in order (DESIGN.md, "The pipeline")."""
    plans = {"inpaint": ("mask", "inpaint", "depth", "segment"), "none": ("depth", "segment"),
             "synthetic": ("depth", "segment", "refine")}
    return plans[strategy]


def build_stage(name: str, config: ExtractConfig, models: dict | None = None) -> Stage:
    """One stage by name; `models` may hold ready modules (segmenter, depth, inpainter, refiners)."""
    models = models or {}
    if name == "mask":
        return MaskStage(config, models.get("segmenter"))
    if name == "inpaint":
        return InpaintStage(config, models.get("inpainter"))
    if name == "depth":
        return DepthStage(config, models.get("depth"))
    if name == "segment":
        return SegmentStage(config, models.get("segmenter"), with_dynamic_fraction=config.strategy != "inpaint")
    if name == "refine":
        return RefineStage(config, models.get("refiners"))
    raise ValueError(f"unknown stage {name!r}; known: mask, inpaint, depth, segment, refine")


def build_stages(config: ExtractConfig, models: dict, fused: bool = False) -> list[Stage]:
    """A strategy's stages; fused, the segmenter is loaded once and shared by the mask and segment stages."""
    models = dict(models)
    if fused and "segmenter" not in models and {"mask", "segment"} <= set(stage_plan(config.strategy)):
        models["segmenter"] = zoo.load_segmenter(config.models)
    return [build_stage(name, config, models) for name in stage_plan(config.strategy)]
