"""The maps table: its layout on disk, how it is written safely, and how every job reads it back.

A maps table is a folder (local or s3://) of `part-<32 hex>.parquet` files (zstd), all with one schema, beside
`_map_spec.json` (vprlib.spec.MapSpec.record: strategy, models and their identity, side, label set, depth
convention). One row per input photo, with:
- every manifest column, carried through untouched (one named like a column below gets the prefix `input_`);
- `status` ('ok' or 'error') and `error` (one line naming the cause; '' when ok);
- `depth`: raw little-endian float32 of shape (map_height, map_width), row-major, in the spec's depth convention;
  empty bytes on error rows;
- `seg`: a PNG (8-bit grayscale) of uint8 labels of the spec's label set; empty on error rows;
- `seg_prob` (only with seg_probabilities): raw little-endian float16, shape (4, map_height, map_width);
- `map_height`, `map_width` (int32), `seg_classes`, `dynamic_fraction` (float32: share of pixels S(x) labels
  dynamic), `strategy`, `models` (JSON: what each model was loaded from).
Any Parquet reader works: `np.frombuffer(row["depth"], "<f4").reshape(row["map_height"], row["map_width"])` and
`PIL.Image.open(io.BytesIO(row["seg"]))` decode a row; `read_maps`, `decode_depth`, `decode_seg` do exactly that, and
`maps_dataset` yields the decoded maps as a Ray Dataset for training and indexing.

Writing is resumable. A part file appears under its final name only when complete: locally it is written to a
hidden temporary name and renamed (atomic on one filesystem); on S3 an object exists only once its upload completed.
`scan_output` lists which ids a table holds (only this layout's own part names: other tools' files in the folder are
never read or removed), removing parts that do not read back as Parquet; `duplicate_rows` and `drop_rows` repair a
table two writers filled at once, rewriting parts atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import re
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from PIL import Image

from vprlib.spec import MapSpec, spec_mismatch
from vprlib.storage import is_remote, url_to_fs

PART_PATTERN = re.compile(r"part-[0-9a-f]{32}\.parquet")
SPEC_FILE = "_map_spec.json"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_S = 3600  # a temporary part this old is a killed writer's leftover, not one another writer is writing
OK, ERROR = "ok", "error"

MAP_FIELDS = (
    pa.field("status", pa.string()),
    pa.field("error", pa.string()),
    pa.field("depth", pa.binary()),
    pa.field("seg", pa.binary()),
    pa.field("map_height", pa.int32()),
    pa.field("map_width", pa.int32()),
    pa.field("seg_classes", pa.string()),
    pa.field("dynamic_fraction", pa.float32()),
    pa.field("strategy", pa.string()),
    pa.field("models", pa.string()),
)
SEG_PROB_FIELD = pa.field("seg_prob", pa.binary())
RGB_FIELD = pa.field("rgb", pa.binary())  # the photo at the maps' side (MapSpec.rgb), from the batch key `image`
# Batch keys of the pipeline that are never manifest columns' names either.
RESERVED = {f.name for f in MAP_FIELDS} | {SEG_PROB_FIELD.name, RGB_FIELD.name, "image", "mask"}


class MapSpecError(ValueError):
    """A maps table is missing, or holds maps of another kind than the caller was built for."""


# ----------------------------------------------------------------------------------------------- schema and encoding
def output_schema(manifest_schema: pa.Schema, spec: MapSpec) -> pa.Schema:
    """Manifest columns followed by the maps columns (the manifest must not share their names: `carry_columns`)."""
    extra = (list(MAP_FIELDS) + ([SEG_PROB_FIELD] if "seg_prob" in spec.outputs else [])
             + ([RGB_FIELD] if "image" in spec.outputs else []))
    return pa.schema([f.remove_metadata() for f in manifest_schema] + extra)


def carry_columns(manifest: pa.Table) -> pa.Table:
    """The manifest with any column named like a maps column renamed `input_<name>` (e.g. the synthetic city's
    ground-truth `dynamic_fraction` becomes `input_dynamic_fraction`), so both survive."""
    used = set(manifest.column_names) | RESERVED
    names = []
    for column in manifest.column_names:
        name = column
        if column in RESERVED:
            name = f"input_{column}"
            while name in used:  # the manifest has an input_status already: input_input_status, and so on
                name = f"input_{name}"
            used.add(name)
        names.append(name)
    return manifest.rename_columns(names)


def _png(array: np.ndarray, mode: str) -> bytes:
    """uint8 image -> PNG bytes (lossless; fast compression, Parquet's zstd runs on top)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode=mode).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _unpng(data: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image if image.mode == mode else image.convert(mode), dtype=np.uint8)


def encode_seg(labels: np.ndarray) -> bytes:
    """uint8 label map (H, W) -> PNG bytes."""
    return _png(labels, "L")


def decode_seg(row: dict) -> np.ndarray:
    """The `seg` column of one row -> uint8 (map_height, map_width)."""
    return _unpng(row["seg"], "L")


def encode_depth(depth: np.ndarray) -> bytes:
    """float depth (H, W) -> raw little-endian float32 bytes."""
    return np.ascontiguousarray(depth, dtype="<f4").tobytes()


def decode_depth(row: dict) -> np.ndarray:
    """The `depth` column of one row -> float32 (map_height, map_width)."""
    return np.frombuffer(row["depth"], dtype="<f4").reshape(int(row["map_height"]), int(row["map_width"]))


def encode_rgb(image: np.ndarray) -> bytes:
    """uint8 photo (H, W, 3) -> PNG bytes."""
    return _png(image, "RGB")


def decode_rgb(row: dict) -> np.ndarray:
    """The `rgb` column of one row -> uint8 (map_height, map_width, 3)."""
    return _unpng(row["rgb"], "RGB")


def decode_seg_prob(row: dict) -> np.ndarray:
    """The `seg_prob` column -> float32 (4, map_height, map_width)."""
    probs = np.frombuffer(row["seg_prob"], dtype="<f2").reshape(-1, int(row["map_height"]), int(row["map_width"]))
    return probs.astype(np.float32)


def encode_batch(batch: dict[str, np.ndarray], spec: MapSpec, models_json: str) -> dict:
    """Maps of a batch (depth B,S,S float, seg B,S,S uint8, dynamic_fraction B, seg_prob B,4,S,S, image B,S,S,3
    uint8) -> the table's columns; error rows get empty maps. Every other key of the batch is passed through."""
    n = len(batch["status"])
    ok = batch["status"] == OK
    side = batch["depth"].shape[-1]
    out = {k: v for k, v in batch.items() if k not in ("depth", "seg", "seg_prob", "image")}
    out["depth"] = _encode_ok(batch["depth"], ok, encode_depth)
    out["seg"] = _encode_ok(batch["seg"], ok, encode_seg)
    if "seg_prob" in spec.outputs:
        out["seg_prob"] = _encode_ok(batch["seg_prob"], ok, lambda p: np.ascontiguousarray(p, dtype="<f2").tobytes())
    if "image" in spec.outputs:
        out["rgb"] = _encode_ok(batch["image"], ok, encode_rgb)
    out["map_height"] = np.full(n, side, dtype=np.int32)
    out["map_width"] = np.full(n, side, dtype=np.int32)
    out["seg_classes"] = np.full(n, spec.seg_classes, dtype=object)
    out["dynamic_fraction"] = np.where(ok, batch["dynamic_fraction"], np.nan).astype(np.float32)
    out["strategy"] = np.full(n, spec.strategy, dtype=object)
    out["models"] = np.full(n, models_json, dtype=object)
    return out


def _encode_ok(maps: np.ndarray, ok: np.ndarray, encode) -> np.ndarray:
    return np.array([encode(m) if good else b"" for m, good in zip(maps, ok, strict=True)], dtype=object)


# ----------------------------------------------------------------------------------------------- part files
def part_name() -> str:
    return f"part-{uuid.uuid4().hex}.parquet"


def part_name_of(image_ids: list[str]) -> str:
    """A part name made from the ids it holds: a write retried after its node was lost rewrites the same file (atomic
    rename) instead of adding a second copy of its rows."""
    digest = hashlib.sha256("\n".join(image_ids).encode()).hexdigest()
    return f"part-{digest[:32]}.parquet"


def is_part_name(name: str) -> bool:
    """Whether a file name is one `part_name` makes (another tool's `part-00000-....parquet` is not)."""
    return PART_PATTERN.fullmatch(name) is not None


def part_files(path: str) -> list[str]:
    """Full paths (with scheme for s3) of a table's part files, sorted."""
    fs, root = url_to_fs(path)
    fs.invalidate_cache(root)  # other processes write parts: a cached S3 listing would be stale
    if not fs.exists(root) or not fs.isdir(root):
        return []
    names = sorted(p for p in fs.ls(root, detail=False) if is_part_name(posixpath.basename(p)))
    scheme = path.split("://", 1)[0] + "://" if "://" in path else ""
    return [scheme + p if scheme and not p.startswith(scheme) else p for p in names]


def part_fingerprints(path: str) -> dict[str, str]:
    """Each part file of a table (full path, as `part_files` names it) and a fingerprint of its current version, from
    one listing: its size with its ETag (S3: the content's hash) or modification time (a local file). A part is
    written once under its name, so a fingerprint that did not change is a part whose rows did not change."""
    fs, root = url_to_fs(path)
    fs.invalidate_cache(root)
    if not fs.exists(root) or not fs.isdir(root):
        return {}
    scheme = path.split("://", 1)[0] + "://" if "://" in path else ""
    out = {}
    for info in fs.ls(root, detail=True):
        name = info["name"]
        if not is_part_name(posixpath.basename(name)):
            continue
        version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        full = scheme + name if scheme and not name.startswith(scheme) else name
        out[full] = f"{info.get('size')}:{version}"
    return dict(sorted(out.items()))


def _dataset(parts: list[str], exclude_invalid: bool = False) -> pads.Dataset:
    fs, _ = url_to_fs(parts[0])
    return pads.dataset([url_to_fs(p)[1] for p in parts], filesystem=fs, format="parquet",
                        exclude_invalid_files=exclude_invalid)


def read_maps(path: str, columns: list[str] | None = None, filter: pc.Expression | None = None) -> pa.Table:
    """All rows of a maps table (local or s3://) as one Arrow table (`.to_pandas()` for pandas); `filter` e.g.
    `pc.field("split") == "database"`."""
    parts = part_files(path)
    if not parts:
        raise FileNotFoundError(f"no maps in {path}: no part-<hex>.parquet files")
    return _dataset(parts).to_table(columns=columns, filter=filter)


def table_schema(path: str) -> pa.Schema:
    """The schema of a maps table (its first part's; all parts share it)."""
    parts = part_files(path)
    if not parts:
        raise FileNotFoundError(f"no maps in {path}: no part-<hex>.parquet files")
    return _dataset(parts[:1]).schema


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns and types (missing columns null), so all parts share one schema."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table[field.name]
        if column.type != field.type:
            try:
                column = pc.cast(column, field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # e.g. ints that became NaN-padded floats
                column = pa.array(column.to_pandas(), type=field.type, from_pandas=True)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def attach_manifest(batch: pa.Table, manifest) -> pa.Table:
    """The manifest rows a batch's `_row` indexes (a pa.Table, or a Ray object ref to one), then the batch's other
    columns. Manifest columns travel beside a pipeline, not through it: numpy batches would lose their Arrow types
    (all-null, list, nullable float32 columns)."""
    if not isinstance(manifest, pa.Table):
        import ray

        manifest = ray.get(manifest)
    carried = manifest.take(batch["_row"])
    for name in batch.column_names:
        if name not in carried.column_names and name != "_row":
            carried = carried.append_column(name, batch[name])
    return carried


def write_part(batch: pa.Table, output: str, schema: pa.Schema, manifest=None, name: str | None = None) -> pa.Table:
    """Write one part file atomically (under `name`, a part name, or a new one); return its (image_id, status).
    With `manifest`, the batch's `_row` column picks that table's rows to carry (`attach_manifest`)."""
    table = conform(batch if manifest is None else attach_manifest(batch, manifest), schema)
    if name is not None and not is_part_name(name):
        raise ValueError(f"{name!r} is not a part file name (part-<32 hex>.parquet)")
    _write_atomic(table, output, name or part_name())
    return table.select(["image_id", "status"])


def write_maps(maps: dict[str, np.ndarray], manifest: pa.Table, spec: MapSpec, output: str, schema: pa.Schema,
               models_json: str = "{}", name: str | None = None) -> pa.Table:
    """Write the maps of `manifest`'s rows (row i of every array in `maps`: `status`, `error`, `depth`, `seg`,
    `dynamic_fraction`, as `encode_batch` takes them) as one part file (`write_part`); return its (image_id,
    status). The same encoding and join as a Ray job's writer (vprlib.maps_ray.MapsSink), for a process that holds
    its rows whole."""
    rows = {**maps, "_row": np.arange(manifest.num_rows, dtype=np.int64)}
    return write_part(pa.table(encode_batch(rows, spec, models_json)), output, schema, manifest, name)


def _write_atomic(table: pa.Table, output: str, name: str) -> None:
    fs, root = url_to_fs(output)
    final = posixpath.join(root, name)
    temp = final if is_remote(output) else posixpath.join(root, TEMP_PREFIX + name)
    with fs.open(temp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    if temp != final:
        fs.mv(temp, final)


# ----------------------------------------------------------------------------------------------- scan and repair
def scan_output(output: str, clean: bool = True) -> tuple[pa.Table, list[str]]:
    """Every written row's (image_id, status, part, row: its index in that part), and, with `clean`, the paths
    removed: parts that do not read back as Parquet (a kill can leave those on filesystems without atomic renames)
    and temporaries older than STALE_TEMP_S (younger ones may be another writer's; they are never read). A part that
    cannot be *reached* (network, permissions) raises: its rows are not lost."""
    removed = _remove_stale_temporaries(output) if clean else []
    parts = part_files(output)
    empty = pa.table({"image_id": pa.array([], pa.string()), "status": pa.array([], pa.string()),
                      "part": pa.array([], pa.string()), "row": pa.array([], pa.int64())})
    if not parts:
        return empty, removed
    dataset = _dataset(parts, exclude_invalid=True)
    fs, _ = url_to_fs(output)
    valid = set(dataset.files)
    for part in parts:
        if url_to_fs(part)[1] not in valid and clean and fs.exists(url_to_fs(part)[1]):
            _remove(fs, url_to_fs(part)[1])  # not Parquet (cut short): its rows are simply redone
            removed.append(part)
    fragments = list(dataset.get_fragments())
    if not fragments:
        return empty, removed
    ids = dataset.to_table(columns=["image_id", "status"])  # in fragment order
    counts = [fragment.count_rows() for fragment in fragments]
    scheme = output.split("://", 1)[0] + "://" if is_remote(output) else ""
    names = np.repeat(np.array([scheme + f.path for f in fragments], dtype=object), counts)
    rows = np.concatenate([np.arange(c) for c in counts])
    return ids.append_column("part", pa.array(names, pa.string())).append_column("row", pa.array(rows, pa.int64())), \
        removed


def prepare_output(output: str, retry_errors: bool, job: str) -> pa.Table:
    """Before a job writes into `output`: scan it (removing what a kill left half-written), remove rows a concurrent
    run duplicated and, with `retry_errors`, the earlier error rows; return the rows that stay written. `job` names
    the job in what it prints."""
    done, removed = scan_output(output)
    if removed:
        print(f"{job}: removed {len(removed)} partial file(s) an interrupted run left", flush=True)
    duplicates = duplicate_rows(done)
    if duplicates.any():
        drop_rows(output, done, duplicates)
        print(f"{job}: removed {int(duplicates.sum())} duplicate row(s) (two runs wrote into this output at once)",
              flush=True)
        done, _ = scan_output(output)  # the repair rewrote parts under new names
    errors = np.asarray(done["status"].to_pylist(), dtype=object) == ERROR
    if retry_errors and errors.any():
        drop_rows(output, done, errors)
        print(f"{job}: --retry-errors: redoing {int(errors.sum())} row(s) that failed before", flush=True)
        done = done.filter(pa.array(~errors))
    return done


def _remove_stale_temporaries(output: str) -> list[str]:
    fs, root = url_to_fs(output)
    removed = []
    if fs.exists(root) and fs.isdir(root):
        for info in fs.ls(root, detail=True):
            name = posixpath.basename(info["name"])
            if name.startswith(TEMP_PREFIX) and is_part_name(name[len(TEMP_PREFIX):]) and _stale(info):
                _remove(fs, info["name"])
                removed.append(info["name"])
    return removed


def _stale(info: dict) -> bool:
    modified = info.get("mtime") or info.get("LastModified")
    if modified is None:
        return True
    seconds = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
    return time.time() - seconds > STALE_TEMP_S


def _remove(fs, path: str) -> None:
    """Remove a file another writer may have removed first."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def duplicate_rows(done: pa.Table) -> np.ndarray:
    """Which rows of `scan_output`'s table repeat an id written elsewhere (two writers ran at once): per id, an 'ok'
    row is kept over an 'error' one, then the one in the first part (by name). Bool mask."""
    mask = np.zeros(done.num_rows, dtype=bool)
    if pc.count_distinct(done["image_id"]).as_py() == done.num_rows:  # the usual case: no sort needed
        return mask
    ids = np.asarray(done["image_id"].to_pylist(), dtype=object).astype(str)
    order = np.lexsort((done["row"].to_numpy(), np.asarray(done["part"].to_pylist(), dtype=object).astype(str),
                        np.asarray(done["status"].to_pylist(), dtype=object) != OK, ids))
    ids = ids[order]
    repeat = np.zeros(len(ids), dtype=bool)
    repeat[1:] = ids[1:] == ids[:-1]
    mask[order[repeat]] = True
    return mask


def duplicate_ids(ids: pa.ChunkedArray) -> np.ndarray:
    values, counts = np.unique(np.asarray(ids.to_pylist(), dtype=object).astype(str), return_counts=True)
    return values[counts > 1]


def drop_rows(output: str, done: pa.Table, drop: np.ndarray) -> int:
    """Rewrite the part files holding the `drop`ped rows of `scan_output`'s table without them (a part left empty is
    removed). Each part is replaced atomically, new part first, so a kill midway leaves every row either kept or to
    be redone. Returns the number of rows dropped."""
    if not drop.any():
        return 0
    parts = np.asarray(done["part"].to_pylist(), dtype=object)
    rows = done["row"].to_numpy()
    dropped = 0
    for part in sorted(set(parts[drop])):
        gone = rows[drop & (parts == part)]
        part_fs, path = url_to_fs(part)
        try:
            with part_fs.open(path, "rb") as f:
                table = pq.read_table(f)
        except FileNotFoundError:  # another writer's repair replaced it already
            continue
        keep = np.ones(table.num_rows, dtype=bool)
        keep[gone] = False
        if keep.any():
            _write_atomic(table.filter(pa.array(keep)), output, part_name())
        _remove(part_fs, path)
        dropped += len(gone)
    return dropped


# ----------------------------------------------------------------------------------------------- the spec file
def write_spec(path: str, record: dict) -> None:
    """Write a table's recorded MapSpec (MapSpec.record) as `_map_spec.json`."""
    fs, root = url_to_fs(path)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, SPEC_FILE), "w") as f:
        f.write(json.dumps(record, indent=2, sort_keys=True))


def read_spec(path: str) -> dict:
    """A maps table's recorded MapSpec; MapSpecError when the folder holds no maps table."""
    fs, root = url_to_fs(path)
    file = posixpath.join(root, SPEC_FILE)
    if not fs.exists(root):
        raise MapSpecError(f"{path} does not exist")
    if not fs.exists(file):
        raise MapSpecError(f"{path} is not a maps table: no {SPEC_FILE} (written by jobs/extract.py, or by "
                           f"jobs/synthcity.py for ground truth)")
    with fs.open(file, "r") as f:
        return json.load(f)


def check_spec(path: str, expected: dict, what: str) -> dict:
    """The table's recorded spec, after checking it agrees with `expected` (what `what` was built for)."""
    actual = read_spec(path)
    diff = spec_mismatch(expected, actual)
    if diff:
        raise MapSpecError(f"{path} holds other maps than {what} was built for ({diff})")
    return actual


# ----------------------------------------------------------------------------------------------- as a Ray Dataset
KEY_COLUMNS = ("image_id", "lat", "lon", "heading")


def decode_batch(batch: dict[str, np.ndarray], columns: tuple[str, ...] = KEY_COLUMNS) -> dict[str, np.ndarray]:
    """Encoded rows (all of one side) -> `depth` float32 (B,H,W), `seg` uint8 (B,H,W), `rgb` uint8 (B,H,W,3) when
    `columns` holds it, and the other `columns` as they are."""
    rows = [{"depth": d, "seg": s, "map_height": h, "map_width": w} for d, s, h, w in
            zip(batch["depth"], batch["seg"], batch["map_height"], batch["map_width"], strict=True)]
    side = (int(batch["map_height"][0]), int(batch["map_width"][0])) if rows else (0, 0)
    out = {c: batch[c] for c in columns if c in batch}
    out["depth"] = np.stack([decode_depth(r) for r in rows]) if rows else np.zeros((0, *side), np.float32)
    out["seg"] = np.stack([decode_seg(r) for r in rows]) if rows else np.zeros((0, *side), np.uint8)
    if "rgb" in columns:
        out["rgb"] = (np.stack([_unpng(data, "RGB") for data in batch["rgb"]]) if rows
                      else np.zeros((0, *side, 3), np.uint8))
    return out


def maps_dataset(path: str, split: str | None = None, columns: tuple[str, ...] = KEY_COLUMNS, num_cpus: float = 1.0):
    """The table's ok rows (of `split`, or all) as a Ray Dataset of decoded maps: `depth` float32 (H, W), `seg`
    uint8 (H, W) and `columns` (ids, lat/lon, heading...), for Ray Train and the index job. `num_cpus`: what each of
    its read and decode tasks reserves."""
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    parts = part_files(path)
    if not parts:
        raise MapSpecError(f"no maps in {path}: no part-<hex>.parquet files")
    fs, _ = url_to_fs(parts[0])
    wanted = ["status", "depth", "seg", "map_height", "map_width", *columns] + (["split"] if split else [])
    ds = ray.data.read_parquet([url_to_fs(p)[1] for p in parts], filesystem=PyFileSystem(FSSpecHandler(fs)),
                               num_cpus=num_cpus)
    ds = ds.select_columns(list(dict.fromkeys(wanted)))

    def keep(batch: pa.Table) -> pa.Table:
        mask = pc.equal(batch["status"], OK)
        if split:
            mask = pc.and_(mask, pc.equal(batch["split"], split))
        return batch.filter(mask)

    return (ds.map_batches(keep, batch_format="pyarrow", num_cpus=num_cpus)
            .map_batches(decode_batch, fn_kwargs={"columns": columns}, num_cpus=num_cpus))
