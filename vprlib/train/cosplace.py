"""Training CosPlace on maps (paper III-C) with CosPlace's own recipe: the training images are classes of
`cell_m` x `cell_m` UTM cells and `heading_deg` heading bins, grouped so that no two classes of a group are
neighbours (vprlib.models.cosplace.cosplace_groups); each group has its own Large Margin Cosine Loss classifier
(s=30, m=0.4), and epoch e trains group (e-1) mod `groups` for `iterations_per_epoch` batches (passing over the
group as often as that takes): Adam at `lr` for the network and `classifier_lr` for the classifier. Validation:
leave-one-out Recall@1/5/10 at 25 m; the best Recall@1 is kept as best.pt."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from vprlib.models.cosplace import CosPlace, CosPlaceConfig, LargeMarginCosineLoss, cosplace_groups, load_imagenet
from vprlib.models.encodings import EncodingConfig
from vprlib.spec import SEG_CLASSES, spec_mismatch
from vprlib.train.config import TrainConfig
from vprlib.train.data import (
    DATA_TASK_CPUS,
    TrainDataError,
    cached,
    metric_xy,
    spec_of,
    split_rows,
    training_dataset,
)
from vprlib.train.loop import Prepared, Trained, WorkerRun, epoch_loop
from vprlib.train.validate import CAPTURE_COLUMNS, POSITION_COLUMNS, capture_codes, embed_batches, other_capture_recall


def architecture(config: TrainConfig) -> dict:
    o = config.options
    return {"backbone": o.backbone, "descriptor_size": o.descriptor_size, "input": o.input,
            "seg_encoding": o.seg_encoding}


def model_config(config: TrainConfig, num_classes: int) -> CosPlaceConfig:
    o = config.options
    encoding = EncodingConfig(modalities=o.input, seg_encoding=o.seg_encoding, num_classes=num_classes)
    return CosPlaceConfig(backbone=o.backbone, descriptor_size=o.descriptor_size, encoding=encoding)


def retriever_inputs(config: TrainConfig, what: str = "--maps") -> tuple[dict, str, tuple[str, ...]]:
    """The training maps' spec, the validation maps' path, and the position columns validation reads; one-line
    errors when the two tables hold different kinds of maps."""
    spec = spec_of(config.maps, what)
    val_path = config.val_maps or config.maps
    diff = spec_mismatch(spec, spec_of(val_path, "--val-maps"))
    if diff:
        raise TrainDataError(f"--val-maps {val_path} holds other maps than --maps ({diff})")
    split_rows(val_path, config.val_split, ["image_id", "lat", "lon"], "--val-maps")
    from vprlib.maps import table_schema

    names = set(table_schema(val_path).names)
    capture = next((c for c in CAPTURE_COLUMNS if c in names), None)
    columns = tuple(c for c in POSITION_COLUMNS if c in names) + ((capture,) if capture else ())
    if config.options.input == "rgb":
        for path, flag in ((config.maps, "--maps"), (val_path, "--val-maps")):
            if "rgb" not in _names(path):
                raise TrainDataError(f"{flag} {path} has no photos (column rgb): --input rgb needs maps extracted "
                                     f"with --rgb")
        columns += ("rgb",)
    return spec, val_path, columns


def validation_dataset(config: TrainConfig, val_path: str, columns: tuple[str, ...]):
    """The validation rows' maps and positions (and capture codes), cached when small."""
    ds = training_dataset(val_path, config.val_split, config.side, columns=columns)
    capture = next((c for c in CAPTURE_COLUMNS if c in columns), None)
    if capture:
        ds = ds.map_batches(capture_codes, fn_kwargs={"column": capture}, num_cpus=DATA_TASK_CPUS)
    return cached(ds, val_path, config.val_split, config.side)


def class_table(config: TrainConfig) -> pa.Table:
    """image_id, group and label (the class's index within its group) of every training image of a kept class in
    the groups trained; one-line errors when the maps cannot be grouped."""
    o = config.options
    names = ["image_id", "lat", "lon", "heading"]
    rows = split_rows(config.maps, config.train_split, names, "--maps")
    if rows["heading"].null_count:
        raise TrainDataError(f"--maps {config.maps}: {rows['heading'].null_count} training rows have no heading; "
                             f"CosPlace classes are cells and heading bins")
    extra = [c for c in ("utm_east", "utm_north", "utm_zone") if c in _names(config.maps)]
    if extra:
        rows = split_rows(config.maps, config.train_split, names + extra, "--maps")
    xy = metric_xy(rows)
    classes, groups = cosplace_groups(xy[:, 0], xy[:, 1], rows["heading"].to_numpy(), o.cell_m, o.heading_deg,
                                      o.group_cells, o.group_bins, min_images_per_class=o.min_images_per_class)
    keep = (groups >= 0) & (groups < o.groups)
    if not keep.any():
        raise TrainDataError(
            f"--maps {config.maps}: no class of split {config.train_split!r} holds --min-images-per-class "
            f"{o.min_images_per_class} images ({len(rows)} images, cells of {o.cell_m:g} m, bins of "
            f"{o.heading_deg:g} deg): too few images per place for CosPlace; lower --min-images-per-class or use "
            f"denser training data (jobs/synthcity.py --dense-train)")
    labels = np.full(len(classes), -1, dtype=np.int64)
    for group in np.unique(groups[keep]):
        members = keep & (groups == group)
        labels[members] = np.unique(classes[members], return_inverse=True)[1]
    return pa.table({"image_id": rows["image_id"].filter(pa.array(keep)), "group": groups[keep],
                     "label": labels[keep]})


def _names(path: str) -> set[str]:
    from vprlib.maps import table_schema

    return set(table_schema(path).names)


def attach_labels(batch: dict, labels: pa.Table, group: int) -> dict:
    """The maps of the batch's rows of `group`, and their `label` (only tensors: what the workers iterate)."""
    index = pc.index_in(pa.array(batch["image_id"]), value_set=labels["image_id"]).to_numpy(zero_copy_only=False)
    found = ~np.isnan(index.astype(np.float64))
    rows = np.where(found, index, 0).astype(np.int64)
    keep = found & (labels["group"].to_numpy()[rows] == group)
    out = {"depth": batch["depth"][keep], "seg": batch["seg"][keep], "label": labels["label"].to_numpy()[rows[keep]]}
    if "rgb" in batch:
        out["rgb"] = batch["rgb"][keep]
    return out


def prepare(config: TrainConfig) -> Prepared:
    spec, val_path, val_columns = retriever_inputs(config)
    labels = class_table(config)
    groups = sorted(int(g) for g in np.unique(labels["group"].to_numpy()))
    classes = [int(pc.max(labels.filter(pc.equal(labels["group"], g))["label"]).as_py()) + 1 for g in groups]
    columns = ("image_id", "rgb") if config.options.input == "rgb" else ("image_id",)
    train = cached(training_dataset(config.maps, config.train_split, config.side, columns=columns),
                   config.maps, config.train_split, config.side)
    datasets = {f"group{g}": train.map_batches(attach_labels, fn_kwargs={"labels": labels, "group": g},
                                               num_cpus=DATA_TASK_CPUS) for g in groups}
    datasets["val"] = validation_dataset(config, val_path, val_columns)
    print(f"train: cosplace on {labels.num_rows} images of {sum(classes)} classes in {len(groups)} groups "
          f"(classes per group {classes})", flush=True)
    return Prepared(datasets=datasets, split=[f"group{g}" for g in groups],
                    payload={"groups": groups, "classes_per_group": classes,
                             "num_classes": SEG_CLASSES[spec["seg_classes"]], "map_spec": spec},
                    model={"map_spec": spec, "encoding": dataclasses.asdict(model_config(config, SEG_CLASSES[
                        spec["seg_classes"]]).encoding)})


def retriever_checkpoint(model, config: TrainConfig, map_spec: dict) -> dict:
    """What best.pt holds for a retriever: `Retriever.checkpoint` plus the spec of its training maps and the side it
    saw them at, so the index job embeds maps as the retriever learned them."""
    return model.checkpoint(map_spec=map_spec, input_side=config.side or map_spec["side"])


class _Net(nn.Module):
    """CosPlace and its group classifiers in one module, so DDP wraps them together."""

    def __init__(self, model: CosPlace, heads: nn.ModuleList):
        super().__init__()
        self.model, self.heads = model, heads

    def forward(self, depth, seg, labels, group: int, rgb=None):
        return self.heads[group](self.model.embed(depth, seg, rgb), labels)


def validation_recall(run: WorkerRun, model) -> dict:
    """Recall@1/5/10 of a retriever on the validation split, each image against the other captures."""
    descriptors, rows = embed_batches(model, run.batches("val", 0, shuffle=False), run.autocast())
    return other_capture_recall(descriptors, rows)


def train_func(payload: dict) -> None:
    import ray.train.torch

    run = WorkerRun(payload)
    config, o = run.config, run.config.options
    model = CosPlace(model_config(config, payload["num_classes"]))
    if o.imagenet:
        load_imagenet(model, o.imagenet)
    heads = nn.ModuleList(LargeMarginCosineLoss(o.descriptor_size, k) for k in payload["classes_per_group"])
    net = ray.train.torch.prepare_model(_Net(model, heads), parallel_strategy_kwargs={"find_unused_parameters": True})
    inner = net.module if hasattr(net, "module") else net
    optimizer = torch.optim.Adam([p for p in inner.model.parameters() if p.requires_grad], lr=config.lr)
    head_optimizers = [torch.optim.Adam(h.parameters(), lr=o.classifier_lr) for h in inner.heads]

    def snapshot() -> dict:
        return {"model": inner.model.state_dict(), "heads": inner.heads.state_dict(),
                "optimizer": optimizer.state_dict(), "head_optimizers": [h.state_dict() for h in head_optimizers]}

    def load(state: dict) -> None:
        inner.model.load_state_dict(state["model"])
        inner.heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        for optim, saved in zip(head_optimizers, state["head_optimizers"], strict=True):
            optim.load_state_dict(saved)

    def train(epoch: int) -> Trained:
        position = (epoch - 1) % len(payload["groups"])
        net.train()
        losses, images = [], 0
        for batch in run.batches(f"group{payload['groups'][position]}", epoch, steps=o.iterations_per_epoch):
            with run.autocast():
                loss = net(batch["depth"], batch["seg"], batch["label"], position, batch.get("rgb"))
            optimizer.zero_grad(set_to_none=True)
            head_optimizers[position].zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            head_optimizers[position].step()
            losses.append(loss.item())
            images += len(batch["label"])
        return Trained({"loss": float(np.mean(losses)) if losses else None, "group": payload["groups"][position]},
                       images * run.world, config.lr)

    epoch_loop(run, snapshot=snapshot, load=load, best=lambda: retriever_checkpoint(inner.model, config,
                                                                                   payload["map_spec"]),
               validate=lambda epoch: validation_recall(run, inner.model), train=train)
