"""Training the two refiners of paper III-A (Fig. 3) from unrefined maps to the ground truth.

Input: a maps table of strategy `none` (D's relative inverse depth and S's ADE20K labels, jobs/extract.py --strategy
none) and a `ground-truth` table of the same images (inverse metres, 0 = no geometry; refined4 labels, 255 = ignore:
a synthetic city's gt_maps, or HoliCity's ground truth written as such a table). The refiners see what the
extraction job's RefineStage feeds them: depth B,1,S,S and the ADE label map as one channel (label / 149).

- F_d (depth): masked L1 in inverse metres over pixels whose ground truth is valid (> 0) and within `max_depth_m`
  (inverse depth >= 1 / max_depth_m).
- F_s (seg): cross-entropy over the 4 refined classes (road is terrain already in the ground truth), 255 skipped.

Each refiner is its own network with its own Adam (`lr`, paper: 1e-3), ReduceLROnPlateau (factor 0.1,
`plateau_patience` epochs) and best state; one pass over the data per epoch trains both. A refiner whose validation
loss has not improved for `early_stop` epochs stops being trained (its best state stays); the run stops when every
refiner has (all ranks decide alike: validation runs on rank 0 and is shared).

Validation (rank 0): `depth_l1` (the depth loss on the validation rows), `val_ce` (the seg loss), `miou` (4 classes,
255 skipped), `dynamic_left` (of the pixels whose INPUT label is a dynamic ADE20K class and whose ground truth is not
ignored, the share the refined labels differ from the ground truth's static class). Epoch 0, the untrained networks,
also records the unrefined input as a reference: `miou_input` (its ADE20K labels mapped to refined4 by
ADE_TO_REFINED), `depth_l1_input` (its relative inverse depth after a per-image least-squares scale and shift to the
ground truth: what alignment alone gives) and `dynamic_left_input` (1 by construction: a dynamic label is none of the
four classes).

Score (best.pt; lower is better): `val_loss`, the sum over the trained refiners of each one's best validation loss so
far (depth: `depth_l1`, seg: `val_ce`). It falls exactly when one of the refiners improves, so best.pt always holds each
refiner's own best state, as `refiner_depth.pt` / `refiner_seg.pt` do (bare state dicts, what
`vprlib.models.refiner.load_refiner` reads). `models.json` ({"base": the --maps table's models}) makes the output
folder a models folder for `jobs/extract.py --strategy synthetic --models DIR`: the segmenter and depth estimator come
from the base, the refiners from the folder (vprlib.models.zoo).

Pairing: the rows of the two tables are matched by image_id with vprlib.maps_ray.pair_maps (a hash shuffle of plain
Ray tasks; only the ids of both tables are read on the driver, for the checks), once, before the workers start; each
pair is decoded and resized by `decode_pair`. The decoded pairs stay in the object store when small
(data.CACHE_SHARE), else the encoded pairs are written to `DIR/_pairs/` and decoded from there each epoch.
"""

from __future__ import annotations

import math
import os
import posixpath
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from vprlib.cluster import absolute_path
from vprlib.maps import OK, decode_depth, decode_seg, read_maps, table_schema
from vprlib.models.dynamic import DYNAMIC_ADE20K
from vprlib.models.encodings import label_channel
from vprlib.models.refiner import DEPTH_FILE, REFINER_ARCHS, SEG_FILE, DualEncoderUNet, RefinerConfig
from vprlib.models.zoo import OVERLAY_FILE
from vprlib.spec import ADE20K_NUM_CLASSES, IGNORE_LABEL, REFINED_CLASSES, spec_mismatch
from vprlib.storage import url_to_fs
from vprlib.train.config import TrainConfig
from vprlib.train.data import CACHE_SHARE, TrainDataError, resize_maps, spec_of, split_rows
from vprlib.train.families import family
from vprlib.train.loop import Prepared, Trained, WorkerRun, epoch_loop, save_file, say

SCORE = family("refiner").score  # the row holds it: the harness chooses best.pt by it
FILES = {"depth": DEPTH_FILE, "seg": SEG_FILE}
VAL_LOSS = {"depth": "depth_l1", "seg": "val_ce"}  # each refiner's validation loss: plateau, early stop, best state
MAP_COLUMNS = ("image_id", "status", "depth", "seg", "map_height", "map_width")
PAIRS_DIR = "_pairs"  # in the output: the paired encoded rows, when they are too many to keep in the object store
NUM_REFINED = len(REFINED_CLASSES)

# ADE20K (0-based) -> refined4, for the unrefined input's reference mIoU only (the refiners learn their own mapping):
# sky; wall, building, house, skyscraper, hovel, tower; road, grass, sidewalk, earth, field, sand, path, runway,
# dirt track, land; tree, plant, palm. Every other class (the dynamic ones among them) maps to none of the four.
ADE_TO_REFINED = {0: (2,), 1: (0, 1, 25, 48, 79, 84), 2: (6, 9, 11, 13, 29, 46, 52, 54, 91, 94), 3: (4, 17, 72)}


def architecture(config: TrainConfig) -> dict:
    return {"arch": config.options.arch, "target": config.options.target}


def refiner_config(arch: str, target: str) -> RefinerConfig:
    """The refiner network of one target: the arch's widths, 1 depth channel and 1 label channel in, 1 (depth) or 4
    (class logits) out: what the extraction job's RefineStage feeds and reads."""
    return replace(REFINER_ARCHS[arch], depth_channels=1, seg_channels=1,
                   out_channels=1 if target == "depth" else NUM_REFINED)


# ----------------------------------------------------------------------------------------------- losses and metrics
def depth_mask(gt: torch.Tensor, max_depth_m: float) -> torch.Tensor:
    """Pixels the depth loss and metrics use: ground truth valid (> 0, finite) and no farther than max_depth_m."""
    return torch.isfinite(gt) & (gt > 0) & (gt >= 1.0 / max_depth_m)


def depth_loss(pred: torch.Tensor, gt: torch.Tensor, max_depth_m: float) -> torch.Tensor:
    """Masked L1 (inverse metres) of B,H,W predictions; 0 (with a gradient path) when no pixel is valid."""
    mask = depth_mask(gt, max_depth_m)
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return (pred[mask] - gt[mask]).abs().mean()


def seg_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of B,4,H,W logits against refined4 labels, IGNORE_LABEL skipped; 0 when every pixel is."""
    target = gt.long()
    if not bool((target != IGNORE_LABEL).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL)


def refiner_inputs(depth: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unrefined maps B,H,W -> the refiners' inputs, exactly as RefineStage makes them: depth B,1,H,W and the ADE
    label map as one channel B,1,H,W (label / 149)."""
    return depth.float()[:, None], label_channel(seg, ADE20K_NUM_CLASSES)


def ade_to_refined(seg: torch.Tensor) -> torch.Tensor:
    """ADE20K labels -> refined4 by ADE_TO_REFINED, IGNORE_LABEL for every other class."""
    table = torch.full((256,), IGNORE_LABEL, dtype=torch.long, device=seg.device)
    for refined, ade in ADE_TO_REFINED.items():
        table[list(ade)] = refined
    return table[seg.long()]


def fit_scale_shift(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image, a * x + b with (a, b) the least-squares fit of x to y on `mask` (B,H,W each)."""
    m = mask.float()
    n = m.sum(dim=(1, 2)).clamp(min=1)
    mx, my = (x * m).sum(dim=(1, 2)) / n, (y * m).sum(dim=(1, 2)) / n
    dx, dy = (x - mx[:, None, None]) * m, (y - my[:, None, None]) * m
    a = (dx * dy).sum(dim=(1, 2)) / (dx * dx).sum(dim=(1, 2)).clamp(min=1e-12)
    return a[:, None, None] * (x - mx[:, None, None]) + my[:, None, None]


class Scores:
    """Validation sums over batches: depth L1, cross-entropy, the confusion matrix, dynamic pixels left."""

    def __init__(self, max_depth_m: float):
        self.max_depth_m = max_depth_m
        self.sums: dict[str, float] = {}
        self.confusion: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: float, count: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.sums[name + "#n"] = self.sums.get(name + "#n", 0.0) + float(count)

    def add_depth(self, pred: torch.Tensor, gt: torch.Tensor, name: str = "depth_l1") -> None:
        mask = depth_mask(gt, self.max_depth_m)
        self._add(name, (pred[mask] - gt[mask]).abs().sum(), mask.sum())

    def add_seg(self, labels: torch.Tensor, gt: torch.Tensor, input_seg: torch.Tensor, suffix: str = "",
                logits: torch.Tensor | None = None) -> None:
        gt = gt.long()
        valid = gt != IGNORE_LABEL
        if logits is not None:
            ce = F.cross_entropy(logits, gt, ignore_index=IGNORE_LABEL, reduction="sum") if valid.any() else 0.0
            self._add("val_ce", ce, valid.sum())
        pairs = gt[valid] * (NUM_REFINED + 1) + labels.long()[valid].clamp(max=NUM_REFINED)  # unmapped: column 4
        counts = torch.bincount(pairs, minlength=NUM_REFINED * (NUM_REFINED + 1))[: NUM_REFINED * (NUM_REFINED + 1)]
        key = "miou" + suffix
        self.confusion[key] = self.confusion.get(key, 0) + counts.cpu()
        dynamic = torch.isin(input_seg.long(), torch.as_tensor(DYNAMIC_ADE20K, device=gt.device)) & valid
        self._add("dynamic_left" + suffix, (labels.long()[dynamic] != gt[dynamic]).sum(), dynamic.sum())

    def result(self) -> dict[str, float | None]:
        out = {name: (self.sums[name] / self.sums[name + "#n"] if self.sums[name + "#n"] else None)
               for name in self.sums if not name.endswith("#n")}
        for key, counts in self.confusion.items():
            out[key] = mean_iou(counts.double().reshape(NUM_REFINED, NUM_REFINED + 1)[:, :NUM_REFINED],
                                counts.double().reshape(NUM_REFINED, NUM_REFINED + 1).sum(dim=1))
        return out


def mean_iou(confusion: torch.Tensor, gt_counts: torch.Tensor | None = None) -> float | None:
    """Mean IoU over the classes present in prediction or ground truth; `confusion[g, p]` counts pixels of ground
    truth g labelled p, `gt_counts[g]` all pixels of g (those labelled none of the classes too)."""
    tp = confusion.diag()
    gt = confusion.sum(dim=1) if gt_counts is None else gt_counts
    union = gt + confusion.sum(dim=0) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else None


# ----------------------------------------------------------------------------------------------- the driver
def prepare(config: TrainConfig) -> Prepared:
    spec, target_spec = check_inputs(config)
    val_path = config.val_maps or config.maps
    train_ids = common_ids(config.maps, config.train_split, config.targets, "--maps")
    val_ids = common_ids(val_path, config.val_split, config.targets, "--val-maps")
    side = config.side or int(spec["side"])
    train, val = paired_datasets([(config.maps, config.train_split, train_ids), (val_path, config.val_split, val_ids)],
                                 config.targets, side, config.output)
    print(f"train: refiner ({config.options.target}, {config.options.arch}) on {len(train_ids)} images, validated "
          f"on {len(val_ids)}, at {side} px", flush=True)
    base = spec["models"]
    if base not in ("tiny", "paper-random", "paper") and "://" not in base and os.path.isdir(base):
        base = absolute_path(base)  # a models folder: found from wherever the extraction job runs
    return Prepared(datasets={"train": train, "val": val}, split=["train"],
                    payload={"base": base, "map_spec": spec, "target_spec": target_spec},
                    model={"map_spec": spec, "target_spec": target_spec, "base": base,
                           "refiners": {t: FILES[t] for t in config.options.targets},
                           "input": "depth: relative inverse (B,1,S,S); seg: ADE20K label / 149 (B,1,S,S)"})


def check_inputs(config: TrainConfig) -> tuple[dict, dict]:
    """The --maps and --targets specs, after the one-line checks: unrefined maps, ground-truth targets, validation
    maps of the kind of --maps, and the columns each table needs."""
    spec = spec_of(config.maps, "--maps")
    if spec.get("strategy") != "none":
        raise TrainDataError(
            f"--maps {config.maps} holds maps of strategy {spec.get('strategy')!r} ({spec.get('seg_classes')}, "
            f"{spec.get('depth')} depth): the refiners learn from unrefined maps, strategy 'none' (ade20k, "
            f"relative-inverse depth; jobs/extract.py --strategy none)")
    target_spec = spec_of(config.targets, "--targets")
    if target_spec.get("strategy") != "ground-truth":
        raise TrainDataError(
            f"--targets {config.targets} holds maps of strategy {target_spec.get('strategy')!r}: the refiners' "
            f"targets are ground truth (strategy 'ground-truth', refined4 labels, inverse-metres depth: a city's "
            f"gt_maps)")
    if config.val_maps:
        diff = spec_mismatch(spec, spec_of(config.val_maps, "--val-maps"))
        if diff:
            raise TrainDataError(f"--val-maps {config.val_maps} holds other maps than --maps ({diff})")
    for what, path, extra in (("--maps", config.maps, ("split",)), ("--val-maps", config.val_maps, ("split",)),
                              ("--targets", config.targets, ())):
        if path:
            try:
                names = set(table_schema(path).names)
            except FileNotFoundError as exc:
                raise TrainDataError(f"{what}: {exc}") from None
            missing = [c for c in (*MAP_COLUMNS, *extra) if c not in names]
            if missing:
                raise TrainDataError(f"{what} {path} has no column(s) {missing}, which the refiners need")
    return spec, target_spec


def common_ids(path: str, split: str, targets: str, what: str) -> pa.Array:
    """The ids of `split`'s ok rows of `path` that --targets also holds (ok); one line when there are none."""
    ids = split_rows(path, split, ["image_id"], what)["image_id"].combine_chunks()
    target_ids = read_maps(targets, columns=["image_id"], filter=pc.field("status") == OK)["image_id"]
    common = ids.filter(pc.is_in(ids, value_set=target_ids.combine_chunks()))
    if len(common) == 0:
        raise TrainDataError(f"{what} {path} and --targets {targets} have no image of split {split!r} in common "
                             f"({len(ids)} rows of that split, {len(target_ids)} ground-truth rows): the targets must "
                             f"be the ground truth of the same images")
    return pc.unique(common)


def decode_pair(batch: dict, side: int) -> dict:
    """Paired encoded rows -> `depth` float32, `seg` uint8 (the input, resized: bilinear depth, nearest labels) and
    `gt_depth`, `gt_seg` (nearest: no valid depth is blended with a 0, no label with another), all B,side,side."""
    def decoded(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [{"depth": d, "seg": s, "map_height": h, "map_width": w} for d, s, h, w in zip(
            batch[prefix + "depth"], batch[prefix + "seg"], batch[prefix + "map_height"], batch[prefix + "map_width"],
            strict=True)]
        if not rows:
            return np.zeros((0, side, side), np.float32), np.zeros((0, side, side), np.uint8)
        return np.stack([decode_depth(r) for r in rows]), np.stack([decode_seg(r) for r in rows])

    depth, seg = decoded("")
    x = resize_maps({"depth": depth, "seg": seg}, side)
    gt_depth, gt_seg = decoded("gt_")
    if len(gt_depth) and gt_depth.shape[-1] != side:
        gt_depth = F.interpolate(torch.from_numpy(gt_depth)[:, None], size=(side, side), mode="nearest")[:, 0].numpy()
        gt_seg = F.interpolate(torch.from_numpy(gt_seg)[:, None].float(), size=(side, side),
                               mode="nearest")[:, 0].numpy().astype(np.uint8)
    return {"depth": x["depth"].astype(np.float32), "seg": x["seg"], "gt_depth": gt_depth.astype(np.float32),
            "gt_seg": gt_seg}


def paired_datasets(sources: list[tuple[str, str, pa.Array]], targets: str, side: int, output: str) -> list:
    """Per (path, split, ids) source, its rows of those ids each with its ground truth from `targets`, decoded and
    resized: Ray Datasets of depth, seg, gt_depth, gt_seg (only tensors: what the workers iterate).

    The pairing is vprlib.maps_ray.pair_maps, here, before any worker starts. The decoded pairs stay in the object
    store when they take at most data.CACHE_SHARE of it; else the encoded pairs are written under `output`/_pairs/
    and the datasets decode them from there every epoch."""
    import ray

    from vprlib.maps_ray import pair_maps

    rows = sum(len(ids) for _, _, ids in sources)
    need = rows * side * side * 2 * (4 + 1 + 8)  # input and target: float32 depth, uint8 labels, slack
    in_memory = need <= CACHE_SHARE * ray.available_resources().get("object_store_memory", 0)
    return pair_maps(sources, targets, decode_pair, {"side": side},
                     folder=None if in_memory else posixpath.join(output, PAIRS_DIR))


# ----------------------------------------------------------------------------------------------- the workers
class Progress:
    """Per refiner: its best validation loss, that epoch, and epochs since; which refiners still train (early
    stopping after `early_stop` epochs without a better loss; 0 = never) and the run's score."""

    def __init__(self, targets: tuple[str, ...], early_stop: int):
        self.early_stop = early_stop
        self.best: dict[str, float | None] = dict.fromkeys(targets)
        self.epoch: dict[str, int | None] = dict.fromkeys(targets)
        self.stalled = dict.fromkeys(targets, 0)

    def update(self, target: str, loss: float | None, epoch: int) -> bool:
        """Record a validation loss; whether it is the refiner's best so far (None or NaN never is)."""
        if loss is None or math.isnan(loss) or (self.best[target] is not None and loss >= self.best[target]):
            self.stalled[target] += 1
            return False
        self.best[target], self.epoch[target], self.stalled[target] = loss, epoch, 0
        return True

    def active(self) -> list[str]:
        return [t for t, n in self.stalled.items() if not self.early_stop or n < self.early_stop]

    def score(self) -> float | None:
        """The sum of every refiner's best loss so far: it falls exactly when one of them improves."""
        return None if any(v is None for v in self.best.values()) else sum(self.best.values())

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "epoch": dict(self.epoch), "stalled": dict(self.stalled)}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.epoch, self.stalled = dict(state["best"]), dict(state["epoch"]), dict(state["stalled"])


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def validate(nets: dict, batches, autocast, max_depth_m: float, reference: bool) -> dict:
    """The validation metrics of each refiner (and, with `reference`, of the unrefined input)."""
    scores = Scores(max_depth_m)
    for net in nets.values():
        net.eval()
    for batch in batches:
        depth, seg = refiner_inputs(batch["depth"], batch["seg"])
        gt_depth, gt_seg = batch["gt_depth"].float(), batch["gt_seg"]
        with autocast:
            out = {t: net(depth, seg).float() for t, net in nets.items()}
        if "depth" in out:
            scores.add_depth(out["depth"][:, 0], gt_depth)
        if "seg" in out:
            scores.add_seg(out["seg"].argmax(dim=1), gt_seg, batch["seg"], logits=out["seg"])
        if reference:
            mask = depth_mask(gt_depth, max_depth_m)
            scores.add_depth(fit_scale_shift(batch["depth"].float(), gt_depth, mask), gt_depth, "depth_l1_input")
            scores.add_seg(ade_to_refined(batch["seg"]), gt_seg, batch["seg"], suffix="_input")
    result = scores.result()
    return {k: v for k, v in result.items() if reference or not k.endswith("_input")}


def train_func(payload: dict) -> None:
    import ray.train.torch

    run = WorkerRun(payload)
    config, o = run.config, run.config.options
    targets = o.targets
    inner = {t: DualEncoderUNet(refiner_config(o.arch, t)) for t in targets}
    nets = {t: ray.train.torch.prepare_model(net) for t, net in inner.items()}
    inner = {t: net.module if hasattr(net, "module") else net for t, net in nets.items()}
    optimizers = {t: torch.optim.Adam(inner[t].parameters(), lr=config.lr) for t in targets}
    schedulers = {t: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizers[t], mode="min", factor=0.1,
                                                                patience=o.plateau_patience) for t in targets}
    progress = Progress(targets, o.early_stop)
    best_states: dict[str, dict | None] = dict.fromkeys(targets)

    def snapshot() -> dict:
        return {"nets": {t: inner[t].state_dict() for t in targets},
                "optimizers": {t: optimizers[t].state_dict() for t in targets},
                "schedulers": {t: schedulers[t].state_dict() for t in targets},
                "progress": progress.state_dict(), "best_states": best_states}

    def load(state: dict) -> None:
        for t in targets:
            inner[t].load_state_dict(state["nets"][t])
            optimizers[t].load_state_dict(state["optimizers"][t])
            schedulers[t].load_state_dict(state["schedulers"][t])
        progress.load_state_dict(state["progress"])
        best_states.update(state["best_states"])

    def best_checkpoint() -> dict:
        return {"family": "refiner", "arch": o.arch, "target": o.target, "refiners": dict(best_states),
                "best_epoch": dict(progress.epoch), "best_loss": dict(progress.best),
                "map_spec": payload["map_spec"], "target_spec": payload["target_spec"]}

    def evaluate(epoch: int) -> dict:
        return validate(inner, run.batches("val", 0, shuffle=False), run.autocast(), o.max_depth_m,
                        reference=epoch == 0)

    def record(epoch: int, trained: Trained, metrics: dict) -> tuple[dict, float | None, float]:
        """Plateau, early-stop and best-state bookkeeping from the shared metrics; the epoch's row."""
        for t in targets:
            loss = metrics.get(VAL_LOSS[t])
            if loss is not None and not math.isnan(loss):
                schedulers[t].step(loss)
            if progress.update(t, loss, epoch):
                best_states[t] = _cpu_state(inner[t])
                if run.rank == 0:
                    save_file(config.output, FILES[t], best_states[t])
        if epoch == 0 and run.rank == 0:  # after the refiner files: a models folder never lacks them
            write_models_file(config.output, payload["base"])
        lrs = {f"lr_{t}": optimizers[t].param_groups[0]["lr"] for t in targets}
        score = progress.score()
        row = {"loss": trained.figures["loss"], **{f"loss_{t}": trained.figures.get(f"loss_{t}") for t in targets},
               **metrics, SCORE: score, **lrs}
        return row, score, lrs[f"lr_{targets[0]}"]

    def stop(epoch: int) -> bool:
        if progress.active():
            return False
        if run.rank == 0:
            say(f"train: early stop after epoch {epoch - 1}: no refiner improved for {o.early_stop} epochs")
        return True

    def fresh() -> None:
        if run.rank == 0:
            start_output(config.output)

    def train(epoch: int) -> Trained:
        active = progress.active()
        for t in targets:
            nets[t].train(t in active)
        sums, steps, images = dict.fromkeys(active, 0.0), 0, 0
        for batch in run.batches("train", epoch):
            depth, seg = refiner_inputs(batch["depth"], batch["seg"])
            for t in active:
                with run.autocast():
                    out = nets[t](depth, seg).float()
                loss = depth_loss(out[:, 0], batch["gt_depth"].float(), o.max_depth_m) if t == "depth" else \
                    seg_loss(out, batch["gt_seg"])
                optimizers[t].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[t].step()
                sums[t] += loss.item()
            steps += 1
            images += len(batch["depth"])
        losses = {t: sums[t] / steps for t in active} if steps else {}
        return Trained({"loss": sum(losses.values()) if losses else None,
                        **{f"loss_{t}": loss for t, loss in losses.items()}}, images * run.world)

    epoch_loop(run, snapshot=snapshot, load=load, best=best_checkpoint, validate=evaluate, train=train,
               record=record, stop=stop, fresh=fresh)


def start_output(output: str) -> None:
    """A fresh run: no refiner (or models.json) of an earlier run in the output is left behind to be mixed in."""
    fs, root = url_to_fs(output)
    for name in (DEPTH_FILE, SEG_FILE, OVERLAY_FILE):
        if fs.exists(posixpath.join(root, name)):
            fs.rm(posixpath.join(root, name))


def write_models_file(output: str, base: str) -> None:
    """models.json: the output is a models folder whose segmenter and depth estimator come from `base`."""
    import json

    fs, root = url_to_fs(output)
    with fs.open(posixpath.join(root, OVERLAY_FILE), "w") as f:
        f.write(json.dumps({"base": base}, indent=2))
