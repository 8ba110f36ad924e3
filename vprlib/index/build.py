"""The index job: a maps table embedded by a trained retriever into faiss shards, built in parallel, rebuilt only
where something changed. No process holds the city: vectors go from the embedding actors to part files, and from
part files to the shard builders; the driver handles the list of parts and shards.

1. The retriever's checkpoint and the maps' spec must agree (the same kind of maps it was trained on).
2. Each maps part file is one unit of work. A part whose fingerprint (vprlib.maps.part_fingerprints: size and ETag or
   modification time, from one listing) and settings (retriever weights, side, split, sharding) match the previous
   build's keeps its embeddings file; the others are embedded on a Ray Data actor pool (GPU when present), each actor
   reading one maps part in batches and writing `embeddings/<part>-<key>.parquet`: the part's indexed rows with their
   kept columns, shard and vector, one row group per shard.
3. A shard's content is the list of embeddings files that hold its rows; a shard whose list (and build settings) did
   not change keeps its files, the others are built as parallel Ray tasks, each reading its rows from those files
   and writing `shards/<name>-<key>.faiss` (vprlib.index.shards) and `.parquet` (its rows, in faiss id order).
4. `parts-<hash>.parquet` (the parts and what each holds) and `index.json` (vprlib.index.search) are written last;
   every file is named by what it was made from and written whole or not at all, so an interrupted run leaves the
   previous index readable and its rerun redoes only what it did not finish. Files the new manifest does not name
   are removed after it is written.
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

from vprlib.cli import help_text
from vprlib.cluster import connect, io_task_args
from vprlib.index.embed import Embedder, EmbeddingOptions, RetrieverRecord, retriever_record
from vprlib.index.search import (
    EMBEDDINGS,
    MANIFEST,
    SHARDS,
    read_manifest,
    read_parts,
    shard_bounds,
    shard_files,
)
from vprlib.index.shards import KINDS, SHARD_BY, build_index, shard_keys, write_index
from vprlib.maps import OK, decode_batch, part_fingerprints, read_spec, table_schema
from vprlib.storage import remove_temporaries, url_to_fs, write_atomic

# Columns kept with each indexed image: positions and ground truth the metrics read, and the photo for reports.
KEPT_COLUMNS = ("lat", "lon", "heading", "utm_east", "utm_north", "utm_zone", "east_m", "north_m", "has_gps",
                "landmark_id", "landmark_ids", "split", "uri", "city", "visit_id", "place_id")
SHARD_MEMORY_FACTOR = 3.0  # a shard build holds its vectors about three times (read, sorted, in the faiss index)



@dataclass(frozen=True)
class IndexConfig(EmbeddingOptions):
    maps: str = field(metadata=help_text("the maps table to index (jobs/extract.py output, or a city's gt_maps)"))
    model: str = field(metadata=help_text("the retriever checkpoint (best.pt of jobs/train.py cosplace|netvlad)"))
    output: str = field(metadata=help_text("the index folder (local or s3://); an index already there is updated"))
    split: str = field(default="database", metadata=help_text("rows indexed: this split of --maps, or all"))
    shard_by: str = field(default="utm-tile", metadata=help_text(
        "utm-tile (tiles of --tile-m metres), city (a `city` column) or none (one shard)"))
    tile_m: float = field(default=1000.0, metadata=help_text("side of a UTM tile shard, metres"))
    kind: str = field(default="flat", metadata=help_text(
        "flat (exact inner product) or ivfpq (for shards of millions: inverted lists of compressed codes, candidates "
        "re-ranked exactly; settings from the shard's size; shards under 50,000 rows stay flat)"))
    nlist: int = field(default=0, metadata=help_text("ivfpq: inverted lists (0 = the power of two nearest sqrt(rows))"))
    pq_m: int = field(default=0, metadata=help_text("ivfpq: 4-bit sub-quantizers per code (0 = descriptor size / 8)"))
    nprobe: int = field(default=0, metadata=help_text("ivfpq: lists searched per query (0 = nlist / 2, at least 16)"))
    refine: int = field(default=0, metadata=help_text(
        "ivfpq: candidates per result re-ranked exactly from the stored vectors (0 = 16)"))
    cpus_per_shard: int = field(default=1, metadata=help_text("CPUs (faiss threads) per shard build task"))
    ray_address: str = field(default="", metadata=help_text("Ray cluster address ('' = connect or start local)"))

    def __post_init__(self):
        super().__post_init__()
        for name, value, known in (("shard_by", self.shard_by, SHARD_BY), ("kind", self.kind, KINDS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
        if self.tile_m <= 0 or self.cpus_per_shard < 1:
            raise ValueError("tile_m must be > 0 and cpus_per_shard >= 1")
        if min(self.nlist, self.pq_m, self.nprobe, self.refine) < 0:
            raise ValueError("nlist, pq_m, nprobe and refine must be >= 0 (0 = from the shard's size)")

    @property
    def shard_params(self) -> dict:
        """The IVF-PQ settings given on the command line (the others follow each shard's size)."""
        return {k: v for k, v in (("nlist", self.nlist), ("m", self.pq_m), ("nprobe", self.nprobe),
                                  ("refine", self.refine)) if v}


def run_index(config: IndexConfig) -> dict:
    """Build or update the index; return the summary (also in index.json)."""
    start = time.perf_counter()
    record = retriever_record(config.model)
    spec = read_spec(config.maps)
    record.check_maps(spec, f"--maps {config.maps}")
    kept = kept_columns(config, record)
    parts = part_fingerprints(config.maps)
    if not parts:
        raise ValueError(f"--maps {config.maps}: no part-<hex>.parquet files")
    settings = part_settings(config, record, kept)
    previous, old_parts = _previous(config.output)
    planned = plan_parts(parts, settings, old_parts)
    todo = [p for p in planned if not p["reused"]]
    fresh = embed_parts(config, record, kept, todo) if todo else []
    table = parts_table([p for p in planned if p["reused"]], fresh)
    rows = int(pc.sum(table["rows"]).as_py() or 0)
    if rows == 0:
        raise ValueError(f"--maps {config.maps}: no ok rows in split {config.split!r} to index")
    shards, built = build_shards(config, table, previous, record.descriptor_size)
    write_manifest(config, record, spec, table, shards)
    reused = sum(p["rows"] for p in planned if p["reused"])
    summary = {"rows": rows, "parts": len(planned), "parts_embedded": len(todo), "embedded": rows - reused,
               "reused": reused, "parts_removed": _removed_parts(old_parts, planned),
               "shards": len(shards), "shards_built": built, "shards_reused": len(shards) - built,
               "wall_s": time.perf_counter() - start, "output": config.output}
    print(f"index: {rows} images in {len(shards)} shard(s) ({config.kind}); {len(planned)} maps parts: embedded "
          f"{len(todo)} ({summary['embedded']} images), reused {len(planned) - len(todo)}, removed "
          f"{summary['parts_removed']}; shards built {built}, reused {summary['shards_reused']}; "
          f"{summary['wall_s']:.1f} s", flush=True)
    return summary


def kept_columns(config: IndexConfig, record: RetrieverRecord) -> list[str]:
    """The maps table's columns kept beside each descriptor; one-line errors for what the job cannot read."""
    names = set(table_schema(config.maps).names)
    if config.split != "all" and "split" not in names:
        raise ValueError(f"--maps {config.maps} has no split column: use --split all")
    record.check_photos(config.maps)
    return [c for c in KEPT_COLUMNS if c in names]


def part_settings(config: IndexConfig, record: RetrieverRecord, kept: list[str]) -> dict:
    """What a part's embeddings file depends on besides the part itself."""
    return {"retriever": record.sha256, "input_side": record.input_side, "split": config.split,
            "shard_by": config.shard_by, "tile_m": config.tile_m, "columns": kept}


def plan_parts(parts: dict[str, str], settings: dict, old: pa.Table | None) -> list[dict]:
    """Per maps part: its embeddings file name (from its name, fingerprint and the settings) and whether the previous
    build has it already (then its rows and shard counts come along)."""
    previous = {} if old is None else {r["file"]: r for r in old.to_pylist()}
    planned = []
    for path, fingerprint in parts.items():
        name = posixpath.basename(path)
        key = hashlib.sha256(json.dumps([name, fingerprint, settings], sort_keys=True).encode()).hexdigest()[:16]
        file = f"{name.removesuffix('.parquet')}-{key}.parquet"
        entry = {"part": name, "path": path, "fingerprint": fingerprint, "file": file}
        if file in previous:
            planned.append({**entry, "reused": True, "rows": previous[file]["rows"],
                            "shards": [[s["shard"], s["rows"]] for s in previous[file]["shards"]]})
        else:
            planned.append({**entry, "reused": False})
    return planned


def _removed_parts(old: pa.Table | None, planned: list[dict]) -> int:
    if old is None:
        return 0
    now = {p["file"] for p in planned}
    return sum(f not in now for f in old["file"].to_pylist())


def _previous(output: str) -> tuple[dict | None, pa.Table | None]:
    """The previous build's manifest and parts table, or (None, None)."""
    try:
        manifest = read_manifest(output)
    except ValueError:
        return None, None
    return manifest, read_parts(output, manifest)


# ----------------------------------------------------------------------------------------------- embedding
def embed_parts(config: IndexConfig, record: RetrieverRecord, kept: list[str], todo: list[dict]) -> list[dict]:
    """Embed the maps parts `todo` on a Ray Data actor pool, one part per call; their entries (file, rows, shards)."""
    import ray
    from ray.data import ActorPoolStrategy

    cluster = _cluster(config)
    actors = min(config.actors, len(todo))
    device, gpus = config.place(cluster, actors)
    work = ray.data.from_items([{"path": p["path"], "file": p["file"]} for p in todo],
                               override_num_blocks=len(todo))
    options = PartOptions(output=config.output, split=config.split, shard_by=config.shard_by, tile_m=config.tile_m,
                          columns=tuple(kept), side=record.input_side, batch_size=config.batch_size,
                          rgb=record.uses_rgb)
    done = work.map_batches(PartEmbedder, batch_size=1, compute=ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs={"checkpoint": record.path, "device": device, "options": options},
                            num_cpus=config.cpus_per_actor, num_gpus=gpus, **io_task_args())
    entries = {r["file"]: {"rows": int(r["rows"]), "shards": json.loads(r["shards"])} for r in done.take_all()}
    return [{**p, **entries[p["file"]]} for p in todo]


def _cluster(config: IndexConfig):
    """The cluster the index's workers write from: they write into --output, so it must be storage they all reach."""
    cluster = connect(config.ray_address)
    cluster.check_shared(config.output, "--output")
    return cluster


@dataclass(frozen=True)
class PartOptions:
    """What an embedding actor needs to turn one maps part into one embeddings file."""

    output: str
    split: str
    shard_by: str
    tile_m: float
    columns: tuple[str, ...]
    side: int
    batch_size: int
    rgb: bool


class PartEmbedder:
    """Ray Data actor: loads the retriever once; each call embeds one maps part (`path`) into its embeddings file
    (`file`), reading it in batches, and returns its entry. A file already there (written before a kill) is reused."""

    def __init__(self, checkpoint: str, device: str, options: PartOptions):
        self.embedder = Embedder(checkpoint, device)
        self.options = options

    def __call__(self, batch: dict) -> dict:
        entries = [self.part(str(path), str(file)) for path, file in zip(batch["path"], batch["file"], strict=True)]
        return {"file": np.array([e["file"] for e in entries], dtype=object),
                "rows": np.array([e["rows"] for e in entries], dtype=np.int64),
                "shards": np.array([json.dumps(e["shards"]) for e in entries], dtype=object)}

    def part(self, path: str, file: str) -> dict:
        target = posixpath.join(self.options.output, EMBEDDINGS, file)
        fs, fs_path = url_to_fs(target)
        if fs.exists(fs_path):
            return {"file": file, **part_contents(target)}
        table = self.embed(path)
        write_embeddings(table, target)
        return {"file": file, **part_contents(target)}

    def embed(self, path: str) -> pa.Table:
        """The part's indexed rows (ok, of the split) with their kept columns, shard and vector, by shard then id."""
        from vprlib.train.data import resize_maps

        opts = self.options
        maps = ["depth", "seg", "map_height", "map_width", *(["rgb"] if opts.rgb else [])]
        wanted = list(dict.fromkeys(["image_id", "status", *opts.columns, *maps, *(["split"] if opts.split != "all"
                                                                                  else [])]))
        fs, fs_path = url_to_fs(path)
        pieces = []
        with fs.open(fs_path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=opts.batch_size, columns=wanted):
                rows = pa.Table.from_batches([batch])
                keep = pc.equal(rows["status"], OK)
                if opts.split != "all":
                    keep = pc.and_(keep, pc.equal(rows["split"], opts.split))
                rows = rows.filter(keep)
                if rows.num_rows == 0:
                    continue
                decoded = decode_batch({c: rows[c].to_numpy(zero_copy_only=False) for c in ["image_id", *maps]},
                                       columns=("image_id", *(["rgb"] if opts.rgb else [])))
                vectors = self.embedder(resize_maps(decoded, opts.side))["vector"]
                meta = rows.select(["image_id", *opts.columns])
                pieces.append(meta.append_column("vector", _vector_column(vectors)))
        if not pieces:
            return pa.table({"image_id": pa.array([], pa.string()), "shard": pa.array([], pa.string())})
        table = pa.concat_tables(pieces)
        table = table.append_column("shard", pa.array(shard_keys(table, opts.shard_by, opts.tile_m), pa.string()))
        return table.sort_by([("shard", "ascending"), ("image_id", "ascending")])


def _vector_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])


def vector_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A vector column (fixed-size or plain lists of float32) as one n x dim array, without a Python object per row."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(column) == 0:
        return np.zeros((0, 0), np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), -1).astype(np.float32, copy=False)


def write_embeddings(table: pa.Table, target: str) -> None:
    """An embeddings file: one row group per shard (a shard builder reads only its own), written whole. The vectors
    are not dictionary-encoded: descriptors hardly repeat a value, and a dictionary attempt costs 45% more bytes."""
    shards = table["shard"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, shards[1:] != shards[:-1]]) if len(shards) else np.array([0])
    dictionary = [name for name in table.column_names if name != "vector"]

    def write(sink) -> None:
        with pq.ParquetWriter(sink, table.schema, compression="zstd", use_dictionary=dictionary) as writer:
            for s, e in zip(starts, np.r_[starts[1:], len(shards)], strict=True):
                writer.write_table(table.slice(int(s), int(e - s)), row_group_size=max(1, int(e - s)))

    write_atomic(target, write)


def part_contents(target: str) -> dict:
    """An embeddings file's rows and rows per shard, from its shard column."""
    fs, fs_path = url_to_fs(target)
    with fs.open(fs_path, "rb") as f:
        shards = pq.read_table(f, columns=["shard"])["shard"]
    counts = pc.value_counts(shards).to_pylist() if len(shards) else []
    return {"rows": len(shards), "shards": sorted([c["values"], int(c["counts"])] for c in counts)}


def parts_table(reused: list[dict], fresh: list[dict]) -> pa.Table:
    entries = sorted(reused + fresh, key=lambda p: p["part"])
    return pa.table({"part": [p["part"] for p in entries], "fingerprint": [p["fingerprint"] for p in entries],
                     "file": [p["file"] for p in entries], "rows": pa.array([p["rows"] for p in entries], pa.int64()),
                     "shards": pa.array([[{"shard": s, "rows": n} for s, n in p["shards"]] for p in entries],
                                        pa.list_(pa.struct([("shard", pa.string()), ("rows", pa.int64())])))})


# ----------------------------------------------------------------------------------------------- shards
def shard_members(table: pa.Table) -> dict[str, list[str]]:
    """Each shard's embeddings files (those holding any of its rows), sorted."""
    members: dict[str, list[str]] = {}
    for file, shards in zip(table["file"].to_pylist(), table["shards"].to_pylist(), strict=True):
        for entry in shards:
            members.setdefault(entry["shard"], []).append(file)
    return {name: sorted(files) for name, files in sorted(members.items())}


def build_shards(config: IndexConfig, table: pa.Table, previous: dict | None, dim: int) -> tuple[dict, int]:
    """Every shard's manifest entry; the shards whose content (their embeddings files) or settings changed are built
    as parallel Ray tasks, each reserving the memory its vectors need."""
    import ray

    old = {} if previous is None else previous.get("shards", {})
    fs, _ = url_to_fs(config.output)
    counts = {}
    for shards in table["shards"].to_pylist():
        for entry in shards:
            counts[entry["shard"]] = counts.get(entry["shard"], 0) + entry["rows"]
    entries, todo = {}, {}
    for name, files in shard_members(table).items():
        key = hashlib.sha256(json.dumps([files, config.kind, config.shard_params, dim]).encode()).hexdigest()[:16]
        stem = f"{_safe(name)}-{key}"
        same = old.get(name, {})
        if same.get("file") == stem and all(fs.exists(url_to_fs(p)[1]) for p in shard_files(config.output, stem)):
            entries[name] = same
        else:
            todo[name] = (stem, files)
    if todo:
        cluster = _cluster(config)
        pending = {}
        for name, (stem, files) in todo.items():
            memory = SHARD_MEMORY_FACTOR * counts[name] * dim * 4 + 2**28
            if memory > cluster.node_memory and not cluster.can_grow:
                raise ValueError(f"shard {name} ({counts[name]} rows) needs about {memory / 2**30:.1f} GiB to build, "
                                 f"more than any node's {cluster.node_memory / 2**30:.1f} GiB: use smaller shards "
                                 f"(--shard-by utm-tile with a smaller --tile-m)")
            task = ray.remote(build_shard).options(num_cpus=config.cpus_per_shard, memory=memory, **io_task_args())
            pending[name] = task.remote(config.output, name, stem, files, config.kind, config.shard_params,
                                        config.cpus_per_shard)
        entries.update({name: ray.get(ref) for name, ref in pending.items()})
    return dict(sorted(entries.items())), len(todo)


def _safe(name: str) -> str:
    """A shard name as a file name (a city may hold any character)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def build_shard(output: str, name: str, stem: str, files: list[str], kind: str, params: dict, threads: int) -> dict:
    """Ray task: one shard's faiss index and rows, from the embeddings files that hold its rows; its manifest entry.
    A shard whose files are there already (built before a kill) is not built again."""
    import faiss
    import pyarrow.dataset as pads

    index_path, rows_path = shard_files(output, stem)
    fs, rows_fs_path = url_to_fs(rows_path)
    if fs.exists(url_to_fs(index_path)[1]) and fs.exists(rows_fs_path):
        with fs.open(rows_fs_path, "rb") as f:
            return json.loads(pq.read_schema(f).metadata[b"vprlib.shard"])
    faiss.omp_set_num_threads(threads)
    paths = [url_to_fs(posixpath.join(output, EMBEDDINGS, f))[1] for f in files]
    dataset = pads.dataset(paths, filesystem=fs, format="parquet")
    rows = dataset.to_table(filter=pc.field("shard") == name)
    order = pc.sort_indices(rows["image_id"])  # the ids alone are sorted; the vectors follow by one numpy take
    vectors = vector_matrix(rows["vector"])[order.to_numpy()]
    rows = rows.drop_columns(["vector"]).take(order)
    index, built = build_index(vectors, kind, params)
    del vectors
    write_index(index, index_path)
    del index
    entry = {"file": stem, "rows": rows.num_rows, "requested": kind, "params": params, "built": built,
             **shard_bounds(rows)}
    rows = rows.replace_schema_metadata({"vprlib.shard": json.dumps(entry, sort_keys=True)})
    write_atomic(rows_path, lambda sink: pq.write_table(rows, sink, compression="zstd"))
    return entry


# ----------------------------------------------------------------------------------------------- the manifest
def write_manifest(config: IndexConfig, record: RetrieverRecord, spec: dict, table: pa.Table, shards: dict) -> None:
    """The parts table, then index.json (whole or not at all), then the removal of what neither names."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue().to_pybytes()
    parts = f"parts-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
    fs, root = url_to_fs(config.output)
    if not fs.exists(posixpath.join(root, parts)):
        write_atomic(posixpath.join(config.output, parts), lambda sink: sink.write(data))
    manifest = {"model": record.identity(), "map_spec": spec, "config": asdict(config),
                "rows": int(pc.sum(table["rows"]).as_py()), "descriptor_size": record.descriptor_size,
                "parts": parts, "shards": shards}
    text = json.dumps(manifest, indent=2, sort_keys=True)
    if not fs.exists(posixpath.join(root, MANIFEST)) or fs.cat_file(posixpath.join(root, MANIFEST)).decode() != text:
        write_atomic(posixpath.join(config.output, MANIFEST), lambda sink: sink.write(text.encode()))
    remove_unused(config.output, manifest, table)


def remove_unused(output: str, manifest: dict, table: pa.Table) -> None:
    """Remove the embeddings, shard and parts files the manifest does not name (a previous build's)."""
    fs, root = url_to_fs(output)
    used = {posixpath.basename(url_to_fs(p)[1]) for entry in manifest["shards"].values()
            for p in shard_files(output, entry["file"])}
    folders = {SHARDS: used, EMBEDDINGS: set(table["file"].to_pylist())}
    for folder, keep in folders.items():
        path = posixpath.join(root, folder)
        for item in fs.ls(path, detail=False) if fs.exists(path) else []:
            if posixpath.basename(item) not in keep:
                fs.rm(item)
    for item in fs.ls(root, detail=False):
        name = posixpath.basename(item)
        if name.startswith("parts-") and name.endswith(".parquet") and name != manifest["parts"]:
            fs.rm(item)
    for folder in ("", SHARDS, EMBEDDINGS):  # temporaries of a killed writer
        remove_temporaries(posixpath.join(output, folder))
