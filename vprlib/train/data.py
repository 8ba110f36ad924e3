"""The maps a training run reads: checks made on the driver before any worker starts, and the Ray Datasets the
workers iterate (vprlib.maps.maps_dataset, resized to the training side)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from vprlib.maps import KEY_COLUMNS, MapSpecError, maps_dataset, read_maps, read_spec, table_schema


class TrainDataError(ValueError):
    """Maps a trainer cannot use: missing, of the wrong kind, without the columns or rows it needs."""


def spec_of(path: str, what: str) -> dict:
    try:
        return read_spec(path)
    except (MapSpecError, FileNotFoundError) as exc:
        raise TrainDataError(f"{what}: {exc}") from None


def split_rows(path: str, split: str, columns: list[str], what: str) -> pa.Table:
    """The ok rows of one split of a maps table, with `columns`; one-line errors for a missing column or no rows."""
    try:
        names = set(table_schema(path).names)
    except FileNotFoundError as exc:
        raise TrainDataError(f"{what}: {exc}") from None
    missing = [c for c in [*columns, "split", "status"] if c not in names]
    if missing:
        raise TrainDataError(f"{what} {path} has no column(s) {missing}, which this training needs")
    rows = read_maps(path, columns=columns, filter=(pc.field("split") == split) & (pc.field("status") == "ok"))
    if rows.num_rows == 0:
        raise TrainDataError(f"{what} {path}: split {split!r} has no ok rows")
    return rows


def metric_xy(rows: pa.Table) -> np.ndarray:
    """N,2 metres in one frame: UTM easting/northing when the rows have them (one zone), else from lat/lon."""
    if {"utm_east", "utm_north"} <= set(rows.column_names) and rows["utm_east"].null_count == 0:
        zones = set(rows["utm_zone"].to_pylist()) if "utm_zone" in rows.column_names else {None}
        if len(zones) == 1:
            return np.stack([rows["utm_east"].to_numpy(), rows["utm_north"].to_numpy()], axis=1).astype(np.float64)
    from vprlib.geo import latlon_to_utm

    east, north, _ = latlon_to_utm(rows["lat"].to_numpy(), rows["lon"].to_numpy())
    return np.stack([east, north], axis=1)


def resize_maps(batch: dict, side: int) -> dict:
    """A decoded batch's maps resized to side x side: depth (and the photo) bilinear, labels nearest (no label is
    invented)."""
    if side == 0 or batch["depth"].shape[-1] == side:
        return batch
    depth = torch.from_numpy(np.ascontiguousarray(batch["depth"]))[:, None]
    seg = torch.from_numpy(np.ascontiguousarray(batch["seg"]))[:, None].float()
    out = dict(batch)
    out["depth"] = F.interpolate(depth, size=(side, side), mode="bilinear", align_corners=False)[:, 0].numpy()
    out["seg"] = F.interpolate(seg, size=(side, side), mode="nearest")[:, 0].numpy().astype(np.uint8)
    if "rgb" in batch:
        rgb = torch.from_numpy(np.ascontiguousarray(batch["rgb"])).permute(0, 3, 1, 2).float()
        rgb = F.interpolate(rgb, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        out["rgb"] = rgb.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


# CPUs a Ray Data task feeding the training workers reserves. Those tasks are light (read, decode, resize, label) and
# run while the workers hold their CPUs (and a sweep's trials a sliver each): half a CPU keeps them schedulable.
DATA_TASK_CPUS = 0.5


def training_dataset(path: str, split: str, side: int, columns: tuple[str, ...] = KEY_COLUMNS, keep=None):
    """The decoded maps of one split as a Ray Dataset, resized to `side`; `keep(batch) -> bool mask` filters rows."""
    ds = maps_dataset(path, split=split, columns=columns, num_cpus=DATA_TASK_CPUS)
    if keep is not None:
        ds = ds.map_batches(lambda batch: {k: v[keep(batch)] for k, v in batch.items()}, num_cpus=DATA_TASK_CPUS)
    return ds.map_batches(resize_maps, fn_kwargs={"side": side}, num_cpus=DATA_TASK_CPUS)


CACHE_SHARE = 0.25  # decoded maps are kept in the object store when they take at most this share of it


def cached(ds, path: str, split: str, side: int):
    """`ds` materialised once (decoded maps kept in Ray's object store, so epochs do not decode them again) when
    the split's decoded maps fit in CACHE_SHARE of the object store; else `ds` as it is, decoded every epoch."""
    import ray

    rows = read_maps(path, columns=["image_id", "map_height"],
                     filter=(pc.field("split") == split) & (pc.field("status") == "ok"))
    if rows.num_rows == 0:
        return ds
    height = int(rows["map_height"][0].as_py())
    pixels = (side or height) ** 2
    need = rows.num_rows * pixels * (4 + 1 + 8)  # float32 depth, uint8 labels, columns and slack
    store = ray.available_resources().get("object_store_memory", 0)
    return ds.materialize() if need <= CACHE_SHARE * store else ds
