"""Resumable output: atomic part files, and a scan that says which ids are already done.

A part file appears under its final name only when complete: locally it is written to a hidden temporary name and
renamed (atomic on one filesystem); on S3 an object exists only once its upload completed. A rerun of the same
command lists the part files (only this job's `part-<32 hex>.parquet` names), reads each one's `image_id` column,
removes any that do not read back as Parquet (a file cut short by a kill, a stale temporary) and processes only the
ids not yet written. Ids two runs wrote at once are de-duplicated by rewriting parts (`duplicate_rows`, `drop_rows`),
and --retry-errors drops earlier error rows the same way, so they count as not yet written.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vprlib.data.manifest import is_remote, url_to_fs
from vprlib.extract.encode import CONFIG_FILE, is_part_name, part_files, part_name

TEMP_PREFIX = ".tmp-"
STALE_TEMP_S = 3600  # a temporary part this old is a killed run's leftover, not a part another run is writing
# Config fields that change what a row holds: a rerun into the same folder must match them. The input too: ids of
# another manifest may overlap this one's, and their rows would pass for done; and its columns, which every part
# carries (one schema for all parts).
RESULT_FIELDS = ("input", "manifest_columns", "strategy", "models", "models_identity", "side", "seg_probabilities",
                 "dilation")


class OutputMismatchError(ValueError):
    """The output folder holds maps made with other settings; resuming into it would mix them."""


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
    """The manifest rows a batch's `_row` indexes (a pa.Table, or a Ray object ref to one), then the batch's maps
    columns. Manifest columns travel beside the pipeline, not through it: numpy batches would lose their Arrow
    types (all-null, list, nullable float32 columns)."""
    if not isinstance(manifest, pa.Table):
        import ray

        manifest = ray.get(manifest)
    carried = manifest.take(batch["_row"])
    for name in batch.column_names:
        if name not in carried.column_names and name != "_row":
            carried = carried.append_column(name, batch[name])
    return carried


def write_part(batch: pa.Table, output: str, schema: pa.Schema, manifest=None) -> pa.Table:
    """Ray Data task: write one part file atomically; return its (image_id, status) for the job's tally.
    With `manifest`, the batch's `_row` column picks that table's rows to carry (`attach_manifest`)."""
    table = conform(batch if manifest is None else attach_manifest(batch, manifest), schema)
    _write_atomic(table, output, part_name())
    return table.select(["image_id", "status"])


def _write_atomic(table: pa.Table, output: str, name: str) -> None:
    fs, root = url_to_fs(output)
    final = posixpath.join(root, name)
    temp = final if is_remote(output) else posixpath.join(root, TEMP_PREFIX + name)
    with fs.open(temp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    if temp != final:
        fs.mv(temp, final)


def scan_output(output: str, clean: bool = True) -> tuple[pa.Table, list[str]]:
    """Every written row's (image_id, status, part, row: its index in that part), and, with `clean`, the paths
    removed: parts that do not read back as Parquet (a kill can leave those on filesystems without atomic renames)
    and this job's temporaries older than STALE_TEMP_S (younger ones may be another run's, still being written;
    they are never read). A part that cannot be *reached* (network, permissions) raises: its rows are not lost."""
    fs, root = url_to_fs(output)
    removed = []
    if clean and fs.exists(root) and fs.isdir(root):
        for info in fs.ls(root, detail=True):
            name = posixpath.basename(info["name"])
            if name.startswith(TEMP_PREFIX) and is_part_name(name[len(TEMP_PREFIX):]) and _stale(info):
                _remove(fs, info["name"])
                removed.append(info["name"])
    tables = []
    for part in part_files(output):
        part_fs, path = url_to_fs(part)
        try:
            with part_fs.open(path, "rb") as f:
                ids = pq.read_table(f, columns=["image_id", "status"])
        except FileNotFoundError:  # removed since the listing (another run's repair)
            continue
        except pa.ArrowInvalid:  # not Parquet (cut short): its rows are simply redone
            if clean:
                _remove(part_fs, path)
                removed.append(part)
            continue
        tables.append(ids.append_column("part", pa.array([part] * ids.num_rows, pa.string()))
                      .append_column("row", pa.array(np.arange(ids.num_rows), pa.int64())))
    empty = pa.table({"image_id": pa.array([], pa.string()), "status": pa.array([], pa.string()),
                      "part": pa.array([], pa.string()), "row": pa.array([], pa.int64())})
    return pa.concat_tables([empty, *tables], promote_options="default"), removed


def _stale(info: dict) -> bool:
    modified = info.get("mtime") or info.get("LastModified")
    if modified is None:
        return True
    seconds = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
    return time.time() - seconds > STALE_TEMP_S


def _remove(fs, path: str) -> None:
    """Remove a file another run may have removed first."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path)


def duplicate_rows(done: pa.Table) -> np.ndarray:
    """Which rows of `scan_output`'s table repeat an id written elsewhere (two jobs ran into one folder at once):
    per id, an 'ok' row is kept over an 'error' one, then the one in the first part (by name). Bool mask."""
    mask = np.zeros(done.num_rows, dtype=bool)
    if pc.count_distinct(done["image_id"]).as_py() == done.num_rows:  # the usual case, every run: no sort needed
        return mask
    ids = np.asarray(done["image_id"].to_pylist(), dtype=object).astype(str)
    order = np.lexsort((done["row"].to_numpy(), np.asarray(done["part"].to_pylist(), dtype=object).astype(str),
                        np.asarray(done["status"].to_pylist(), dtype=object) != "ok", ids))
    ids = ids[order]
    repeat = np.zeros(len(ids), dtype=bool)
    repeat[1:] = ids[1:] == ids[:-1]
    mask[order[repeat]] = True
    return mask


def drop_rows(output: str, done: pa.Table, drop: np.ndarray) -> int:
    """Rewrite the part files holding the `drop`ped rows of `scan_output`'s table without them (a part left empty is
    removed). Each part is replaced atomically, so a kill midway leaves every row either kept or to be redone.
    Returns the number of rows dropped."""
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
        except FileNotFoundError:  # another run's repair replaced it already
            continue
        keep = np.ones(table.num_rows, dtype=bool)
        keep[gone] = False
        if keep.any():  # a new name first, then the old part goes: never a moment with the kept rows absent
            _write_atomic(table.filter(pa.array(keep)), output, part_name())
        _remove(part_fs, path)
        dropped += len(gone)
    return dropped


def check_config(output: str, config_json: str, write: bool = True) -> None:
    """Refuse to resume into maps made with other settings (RESULT_FIELDS; one an older config lacks is not
    compared), then write the resolved config beside the output."""
    fs, root = url_to_fs(output)
    if fs.exists(root) and not fs.isdir(root):
        raise OutputMismatchError(f"--output {output} is a file, not a folder")
    try:
        fs.makedirs(root, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as exc:  # a file on the way: a/file/sub
        raise OutputMismatchError(f"--output {output}: cannot make the folder ({exc.strerror or exc})") from None
    path = posixpath.join(root, CONFIG_FILE)
    new = json.loads(config_json)
    if fs.exists(path) and part_files(output):
        with fs.open(path, "r") as f:
            old = json.load(f)
        changed = [k for k in RESULT_FIELDS if k in old and old[k] != new.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise OutputMismatchError(f"{output} already holds maps made with other settings ({diffs}); "
                                      f"use another --output or remove it")
    if write:
        with fs.open(path, "w") as f:
            f.write(config_json)


def duplicate_ids(ids: pa.Array) -> np.ndarray:
    values, counts = np.unique(np.asarray(ids.to_pylist(), dtype=object).astype(str), return_counts=True)
    return values[counts > 1]
