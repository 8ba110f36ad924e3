"""The index job: a maps table embedded by a trained retriever into faiss shards, built in parallel, rebuilt only
where something changed.

1. The retriever's checkpoint and the maps' spec must agree (the same kind of maps it was trained on).
2. Each row's maps are hashed (a Ray Data pass over the encoded bytes); rows whose hash matches the previous build's,
   with the same retriever (its weights' sha256), keep their descriptors; the others are embedded on a Ray Data actor
   pool (GPU when present).
3. Rows get shards (vprlib.index.shards); a shard whose content hash (ids and vectors) is unchanged keeps its faiss
   file, the others are built as parallel Ray tasks; shards that are gone are removed.
4. The embeddings table and `index.json` (vprlib.index.search) are written last, and the table and shard files are
   named by their content, so an interrupted reindex leaves the previous index readable; files the new manifest
   does not name are removed after it is written. The summary says what was embedded, reused and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vprlib.cluster import DEVICES, Need, check_gpus_per_process, connect, io_task_args
from vprlib.data.manifest import url_to_fs
from vprlib.index.embed import Embedder, ModelError, RetrieverRecord, retriever_record
from vprlib.index.search import MANIFEST, SHARDS, read_embeddings, read_manifest, shard_path
from vprlib.index.shards import KINDS, SHARD_BY, build, content_hash, shard_keys
from vprlib.maps import maps_dataset, part_files, read_maps, read_spec, table_schema
from vprlib.metrics import haversine_m

# Columns kept with each indexed image: positions and ground truth the metrics read, and the photo for reports.
KEPT_COLUMNS = ("lat", "lon", "heading", "utm_east", "utm_north", "utm_zone", "east_m", "north_m", "landmark_id",
                "landmark_ids", "split", "uri", "city", "visit_id", "place_id")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class IndexConfig:
    maps: str = field(metadata=_help("the maps table to index (jobs/extract.py output, or a city's gt_maps)"))
    model: str = field(metadata=_help("the retriever checkpoint (best.pt of jobs/train.py cosplace|netvlad)"))
    output: str = field(metadata=_help("the index folder (local or s3://); an index already there is updated"))
    split: str = field(default="database", metadata=_help("rows indexed: this split of --maps, or all"))
    shard_by: str = field(default="utm-tile", metadata=_help(
        "utm-tile (tiles of --tile-m metres), city (a `city` column) or none (one shard)"))
    tile_m: float = field(default=1000.0, metadata=_help("side of a UTM tile shard, metres"))
    kind: str = field(default="flat", metadata=_help(
        "flat (exact inner product) or ivfpq (approximate, for millions of images; parameters from the shard size)"))
    nlist: int = field(default=0, metadata=_help("ivfpq: coarse lists (0 = about 4 sqrt(shard rows))"))
    pq_m: int = field(default=0, metadata=_help("ivfpq: sub-quantizers (0 = descriptor size / 16)"))
    nprobe: int = field(default=0, metadata=_help("ivfpq: lists searched per query (0 = nlist / 8)"))
    batch_size: int = field(default=64, metadata=_help("maps per embedding batch"))
    actors: int = field(default=1, metadata=_help("embedding actors"))
    device: str = field(default="auto", metadata=_help("auto (cuda when the cluster has GPUs), cpu or cuda"))
    gpus_per_actor: float = field(default=1.0, metadata=_help("GPUs per embedding actor on cuda"))
    cpus_per_actor: float = field(default=1.0, metadata=_help("CPUs per embedding actor"))
    ray_address: str = field(default="", metadata=_help("Ray cluster address ('' = connect or start local)"))

    def __post_init__(self):
        for name, value, known in (("shard_by", self.shard_by, SHARD_BY), ("kind", self.kind, KINDS),
                                   ("device", self.device, DEVICES)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
        if self.tile_m <= 0 or self.batch_size < 1 or self.actors < 1:
            raise ValueError("tile_m must be > 0, batch_size and actors >= 1")


def run_index(config: IndexConfig) -> dict:
    """Build or update the index; return the summary (also in index.json)."""
    start = time.perf_counter()
    record = retriever_record(config.model)
    spec = read_spec(config.maps)
    record.check_maps(spec, f"--maps {config.maps}")
    rows = _rows(config)
    cluster = connect(config.ray_address)
    device = cluster.device(config.device)
    gpus = config.gpus_per_actor if device == "cuda" else 0.0
    check_gpus_per_process(device, gpus, "--gpus-per-actor")
    cluster.check(Need("embedding actors", config.actors, config.cpus_per_actor, gpus, "--actors",
                       "--cpus-per-actor", "--gpus-per-actor", spare_cpus=1))
    rows = rows.append_column("maps_hash", pa.array(maps_hashes(config, rows["image_id"])))
    previous = _previous(config.output, record)
    kept = _reusable(previous, rows)
    todo = rows.filter(pc.invert(pc.is_in(rows["image_id"], value_set=kept["image_id"])))
    vectors = embed(config.maps, todo["image_id"], record, device, gpus, config.batch_size, config.actors,
                    config.cpus_per_actor) if todo.num_rows else {}
    table = _embeddings(rows, kept, vectors, config)
    shards, built = build_shards(config, table, previous)
    _write(config.output, table, record, spec, config, shards)
    summary = {"rows": table.num_rows, "embedded": todo.num_rows, "reused": kept.num_rows,
               "removed": 0 if previous is None else previous.num_rows - int(pc.sum(
                   pc.is_in(previous["image_id"], value_set=rows["image_id"])).as_py() or 0),
               "shards": len(shards), "shards_built": built, "shards_reused": len(shards) - built,
               "wall_s": time.perf_counter() - start, "output": config.output}
    print(f"index: {summary['rows']} images in {summary['shards']} shard(s) ({config.kind}); embedded "
          f"{summary['embedded']}, reused {summary['reused']}, removed {summary['removed']}; shards built "
          f"{built}, reused {summary['shards_reused']}; {summary['wall_s']:.1f} s", flush=True)
    return summary


def _rows(config: IndexConfig) -> pa.Table:
    """The ok rows to index, with the columns kept beside their descriptors; one line when there are none."""
    names = set(table_schema(config.maps).names)
    columns = ["image_id", *(c for c in KEPT_COLUMNS if c in names)]
    wanted = pc.field("status") == "ok"
    if config.split != "all":
        if "split" not in names:
            raise ValueError(f"--maps {config.maps} has no split column: use --split all")
        wanted = wanted & (pc.field("split") == config.split)
    rows = read_maps(config.maps, columns=columns, filter=wanted)
    if rows.num_rows == 0:
        raise ValueError(f"--maps {config.maps}: no ok rows in split {config.split!r} to index")
    return rows


def _hash_batch(batch: dict) -> dict:
    hashes = [hashlib.sha1(bytes(d) + b"\0" + bytes(s)).hexdigest() for d, s in
              zip(batch["depth"], batch["seg"], strict=True)]
    return {"image_id": batch["image_id"], "maps_hash": np.array(hashes, dtype=object)}


def maps_hashes(config: IndexConfig, ids: pa.ChunkedArray) -> list[str]:
    """The sha1 of each row's encoded maps (depth and seg bytes), in the order of `ids`, computed by Ray tasks."""
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    parts = part_files(config.maps)
    fs, _ = url_to_fs(parts[0])
    ds = ray.data.read_parquet([url_to_fs(p)[1] for p in parts], filesystem=PyFileSystem(FSSpecHandler(fs)))
    ds = ds.select_columns(["image_id", "depth", "seg"]).map_batches(_hash_batch, **io_task_args())
    found = pa.Table.from_pylist(ds.take_all())
    positions = pc.index_in(ids, value_set=found["image_id"])
    return found["maps_hash"].take(positions).to_pylist()


def _previous(output: str, record: RetrieverRecord) -> pa.Table | None:
    """The previous build's embeddings when it used the same retriever (by its weights' hash), else None."""
    try:
        manifest = read_manifest(output)
    except ValueError:
        return None
    if manifest["model"]["sha256"] != record.sha256 or manifest["model"]["input_side"] != record.input_side:
        print("index: another retriever than the previous build's: every row is embedded again", flush=True)
        return None
    return read_embeddings(output, columns=["image_id", "maps_hash", "vector"])


def _reusable(previous: pa.Table | None, rows: pa.Table) -> pa.Table:
    """The previous rows whose maps did not change (same id, same maps hash)."""
    if previous is None:
        return pa.table({"image_id": pa.array([], pa.string()), "vector": pa.array([], pa.list_(pa.float32()))})
    key = pc.binary_join_element_wise(previous["image_id"], previous["maps_hash"], "\0")
    fresh = pc.binary_join_element_wise(rows["image_id"], rows["maps_hash"], "\0")
    return previous.filter(pc.is_in(key, value_set=fresh)).select(["image_id", "vector"])


def embed(maps: str, ids: pa.ChunkedArray, record: RetrieverRecord, device: str, gpus: float, batch_size: int = 64,
          actors: int = 1, cpus: float = 1.0) -> dict[str, np.ndarray]:
    """Descriptors of the rows `ids` of a maps table, by the retriever on a Ray Data actor pool (maps resized to the
    side it was trained at): {image_id: vector}."""
    from ray.data import ActorPoolStrategy

    from vprlib.train.data import resize_maps

    wanted = list(set(ids.to_pylist()))
    if record.uses_rgb and "rgb" not in table_schema(maps).names:
        raise ModelError(f"{maps} has no photos (column rgb), which the retriever {record.path} embeds (--input rgb):"
                         f" extract the maps with --rgb")
    ds = maps_dataset(maps, columns=("image_id", "rgb") if record.uses_rgb else ("image_id",))
    ds = ds.map_batches(lambda b: {k: v[np.isin(b["image_id"], wanted)] for k, v in b.items()})
    ds = ds.map_batches(resize_maps, fn_kwargs={"side": record.input_side})
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"checkpoint": record.path, "device": device},
                        batch_size=batch_size, compute=ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus,
                        **io_task_args())
    out = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        out.update(zip(batch["image_id"].tolist(), batch["vector"], strict=True))
    return out


def _embeddings(rows: pa.Table, kept: pa.Table, vectors: dict, config: IndexConfig) -> pa.Table:
    """Every row with its descriptor (reused or new) and shard, sorted by shard then id (a shard's rows together)."""
    reused = dict(zip(kept["image_id"].to_pylist(), kept["vector"].to_pylist(), strict=True))
    ids = rows["image_id"].to_pylist()
    matrix = np.stack([np.asarray(vectors[i] if i in vectors else reused[i], dtype=np.float32) for i in ids])
    table = rows.append_column("shard", pa.array(shard_keys(rows, config.shard_by, config.tile_m), pa.string()))
    table = table.append_column("vector", pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()),
                                                                             matrix.shape[1]))
    return table.sort_by([("shard", "ascending"), ("image_id", "ascending")])


@dataclass(frozen=True)
class _Shard:
    name: str
    offset: int
    ids: list
    vectors: np.ndarray
    lat: np.ndarray
    lon: np.ndarray


def _split_shards(table: pa.Table) -> list[_Shard]:
    names = table["shard"].to_numpy(zero_copy_only=False)
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    ends = np.r_[starts[1:], len(names)]
    lat, lon, ids = table["lat"].to_numpy(), table["lon"].to_numpy(), table["image_id"].to_pylist()
    return [_Shard(str(names[s]), int(s), ids[s:e], vectors[s:e], lat[s:e], lon[s:e]) for s, e in
            zip(starts, ends, strict=True)]


def build_shards(config: IndexConfig, table: pa.Table, previous: pa.Table | None) -> tuple[dict, int]:
    """Build the shards whose content changed, as parallel Ray tasks; the manifest entry of every shard."""
    import ray

    old = {} if previous is None else read_manifest(config.output).get("shards", {})
    fs, _ = url_to_fs(config.output)
    entries, pending = {}, {}
    params = {k: v for k, v in (("nlist", config.nlist), ("m", config.pq_m), ("nprobe", config.nprobe)) if v}
    task = ray.remote(_build_shard).options(**io_task_args())
    for shard in _split_shards(table):
        digest = content_hash(shard.ids, shard.vectors)
        centre = (float(np.mean(shard.lat)), float(np.mean(shard.lon)))
        entry = {"rows": len(shard.ids), "offset": shard.offset, "content_hash": digest, "centre": centre,
                 "reach_m": float(np.max(haversine_m(centre[0], centre[1], shard.lat, shard.lon))),
                 "file": f"{_safe(shard.name)}-{digest[:16]}.faiss", "requested": config.kind}
        same = old.get(shard.name, {})
        if same.get("file") == entry["file"] and same.get("requested") == config.kind and same.get(
                "params") == params and fs.exists(shard_path(config.output, entry["file"])):
            entries[shard.name] = {**entry, "built": same["built"], "params": params}
            continue
        pending[shard.name] = (entry, task.remote(shard.vectors, config.kind, params, config.output, entry["file"]))
    for name, (entry, ref) in pending.items():
        entries[name] = {**entry, "built": ray.get(ref), "params": params}
    return entries, len(pending)


def _safe(name: str) -> str:
    """A shard name as a file name (a city may hold any character)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def remove_unused(output: str, manifest: dict) -> None:
    """Remove the embeddings and shard files the manifest does not name (a previous build's)."""
    fs, root = url_to_fs(output)
    used = {entry["file"] for entry in manifest["shards"].values()}
    folder = posixpath.join(root, SHARDS)
    for path in fs.ls(folder, detail=False) if fs.exists(folder) else []:
        if posixpath.basename(path) not in used:
            fs.rm(path)
    for path in fs.ls(root, detail=False):
        name = posixpath.basename(path)
        if name.startswith("embeddings-") and name.endswith(".parquet") and name != manifest["embeddings"]:
            fs.rm(path)


def _build_shard(vectors: np.ndarray, kind: str, params: dict, output: str, file: str) -> dict:
    """Ray task: one shard's faiss index, written to the index folder; what was built."""
    data, built = build(vectors, kind, params)
    fs, _ = url_to_fs(output)
    path = shard_path(output, file)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)
    return built


def _write(output: str, table: pa.Table, record: RetrieverRecord, spec: dict, config: IndexConfig,
           shards: dict) -> None:
    fs, root = url_to_fs(output)
    fs.makedirs(posixpath.join(root, SHARDS), exist_ok=True)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue().to_pybytes()
    embeddings = f"embeddings-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
    with fs.open(posixpath.join(root, embeddings), "wb") as f:
        f.write(data)
    manifest = {"model": record.identity(), "map_spec": spec, "config": asdict(config), "rows": table.num_rows,
                "descriptor_size": record.descriptor_size, "embeddings": embeddings, "shards": shards}
    with fs.open(posixpath.join(root, MANIFEST), "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True))
    remove_unused(output, manifest)
