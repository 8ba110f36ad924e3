"""A synthetic city's captures as training data for the demo extractors (`TrainConfig.maps` is the city's folder,
jobs/synthcity.py's output): photos, their observed ADE20K labels and depth (with the dynamic objects), the dynamic
mask, and for the inpainter the same captures without the dynamic objects (`rgb_static/`, --static-rgb).

The driver reads the manifest and builds a Ray Dataset per split (decoding tasks reserve DATA_TASK_CPUS). The
training images are few (hundreds) and small, so each worker takes a whole split into memory, sorted by image id,
and draws its share of each epoch's permutation from the run's seed: the same seed gives the same batches whatever
order Ray Data delivered the blocks in.
"""

from __future__ import annotations

import io
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from vprlib.demo.city import STATIC_RGB
from vprlib.storage import join_uri, url_to_fs
from vprlib.train.data import CACHE_SHARE, DATA_TASK_CPUS, TrainDataError

# What a capture can hand a family: uint8 H,W,3 photos, uint8 ADE20K labels, float32 metres (0 = sky), bool mask.
KEYS = {"image": np.uint8, "static": np.uint8, "labels": np.uint8, "depth": np.float32, "dynamic": np.bool_}


def city_rows(city: str, split: str, need_static: bool = False) -> pa.Table:
    """image_id, uri, gt_uri, static_uri (absolute) of one split of a city; one-line errors for a folder that is no
    city, a split without rows, or (`need_static`) a city generated without --static-rgb."""
    path = posixpath.join(city, "manifest.parquet")
    fs, root = url_to_fs(city)
    if not fs.exists(posixpath.join(root, "manifest.parquet")):
        raise TrainDataError(f"--maps {city}: no manifest.parquet; give a synthetic city's folder (jobs/synthcity.py)")
    with fs.open(posixpath.join(root, "manifest.parquet"), "rb") as f:
        table = pq.read_table(f)
    missing = [c for c in ("image_id", "uri", "gt_uri", "split") if c not in table.column_names]
    if missing:
        raise TrainDataError(f"--maps {path}: no column(s) {missing}; not a synthetic city's manifest")
    table = table.filter(pc.equal(table["split"], split)).select(["image_id", "uri", "gt_uri"])
    if table.num_rows == 0:
        raise TrainDataError(f"--maps {city}: split {split!r} has no captures")
    if need_static and not fs.exists(posixpath.join(root, STATIC_RGB)):
        raise TrainDataError(f"--maps {city} has no {STATIC_RGB}/ (the captures without dynamic objects): generate "
                             f"the city with jobs/synthcity.py --static-rgb")
    ids = table["image_id"].to_pylist()
    absolute = {name: [join_uri(city, u) for u in table[name].to_pylist()] for name in ("uri", "gt_uri")}
    static = [join_uri(city, f"{STATIC_RGB}/{i}.png") for i in ids]
    return pa.table({"image_id": ids, **absolute, "static_uri": static})


def _read(uri: str) -> bytes:
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def _png(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(_read(uri))).convert("RGB"))


def load_captures(batch: dict[str, np.ndarray], keys: tuple[str, ...], side: int = 0) -> dict[str, np.ndarray]:
    """Manifest rows -> `image_id` and the arrays `keys` names (KEYS), resized to side x side when `side` (photos
    antialiased bilinear, labels, depth and mask nearest: no label or depth is invented between two surfaces)."""
    out: dict[str, list] = {key: [] for key in keys}
    gt_keys = {"labels": "obs_seg", "depth": "obs_depth", "dynamic": "dynamic"}
    for uri, gt_uri, static_uri in zip(batch["uri"], batch["gt_uri"], batch["static_uri"], strict=True):
        gt = np.load(io.BytesIO(_read(gt_uri))) if set(gt_keys) & set(keys) else {}
        for key in keys:
            out[key].append(_png(uri) if key == "image" else _png(static_uri) if key == "static" else gt[gt_keys[key]])
    stacked = {key: np.stack(values).astype(KEYS[key]) for key, values in out.items()}
    return {"image_id": np.asarray(batch["image_id"]), **resize_captures(stacked, side)}


def resize_captures(arrays: dict[str, np.ndarray], side: int) -> dict[str, np.ndarray]:
    if not side or next(iter(arrays.values())).shape[1] == side:
        return arrays
    out = {}
    for key, value in arrays.items():
        x = torch.from_numpy(value)
        if key in ("image", "static"):
            x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(side, side), mode="bilinear", antialias=True)
            out[key] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        else:
            x = F.interpolate(x[:, None].float(), size=(side, side), mode="nearest")[:, 0]
            out[key] = x.numpy().astype(KEYS[key])
    return out


def city_dataset(city: str, split: str, keys: tuple[str, ...], side: int = 0, need_static: bool = False):
    """One split of the city as a Ray Dataset of decoded captures, kept in the object store when it fits
    CACHE_SHARE of it (a few hundred 128 px captures take tens of MB)."""
    import ray

    rows = city_rows(city, split, need_static)
    ds = ray.data.from_arrow(rows).map_batches(load_captures, fn_kwargs={"keys": keys, "side": side},
                                                batch_size=32, num_cpus=DATA_TASK_CPUS)
    pixels = (side or 128) ** 2
    need = rows.num_rows * pixels * sum(np.dtype(KEYS[k]).itemsize * (3 if k in ("image", "static") else 1)
                                        for k in keys)
    store = ray.available_resources().get("object_store_memory", 0)
    return ds.materialize() if need <= CACHE_SHARE * store else ds


def gather(name: str) -> dict[str, torch.Tensor]:
    """A whole dataset given to this worker (not split), as CPU tensors sorted by image id (image ids dropped)."""
    import ray.train

    parts = list(ray.train.get_dataset_shard(name).iter_batches(batch_size=256, batch_format="numpy"))
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(arrays.pop("image_id"), kind="stable")
    return {k: torch.from_numpy(np.ascontiguousarray(v[order])) for k, v in arrays.items()}


def epoch_batches(data: dict[str, torch.Tensor], batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1, flip: bool = True):
    """This worker's batches of an epoch: a seeded permutation of all rows, every `world`-th row from `rank` on,
    `batch_size` at a time (a last short batch dropped, so batch norm never sees a batch of one); with `flip`, each
    row mirrored left-right with probability 1/2 (a street scene mirrored is still one)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(next(iter(data.values())))
    order = torch.randperm(n, generator=generator)[rank::world]
    mirror = torch.rand(n, generator=generator) < 0.5
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v[rows] for k, v in data.items()}
        if flip:
            flipped = mirror[rows]
            batch = {k: torch.where(_like(flipped, v), v.flip(2), v) for k, v in batch.items()}
        yield batch


def _like(rows: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return rows.view(-1, *([1] * (value.dim() - 1)))


def in_order(data: dict[str, torch.Tensor], batch_size: int):
    """All rows in their (image id) order, `batch_size` at a time: validation."""
    n = len(next(iter(data.values())))
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in data.items()}


def photos(images: torch.Tensor) -> torch.Tensor:
    """uint8 B,H,W,3 -> float B,3,H,W in [0,1] (what the extraction stages hand the models)."""
    return images.permute(0, 3, 1, 2).float().div(255.0)


def prepare_city(config, keys: tuple[str, ...], what: str, architecture: dict, need_static: bool = False):
    """A demo family's `prepare`: its train and val captures of the city as datasets, said in one line."""
    from vprlib.train.loop import Prepared

    datasets = {name: city_dataset(config.maps, split, keys, config.side, need_static=need_static)
                for name, split in (("train", config.train_split), ("val", config.val_split))}
    print(f"train: demo {what} on the {config.train_split} captures of {config.maps}", flush=True)
    return Prepared(datasets=datasets, split=[], payload={"architecture": architecture}, model={"city": config.maps})
