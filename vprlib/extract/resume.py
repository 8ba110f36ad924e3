"""Resumable output: atomic part files, and a scan that says which ids are already done.

A part file appears under its final name only when complete: locally it is written to a hidden temporary name and
renamed (atomic on one filesystem); on S3 an object exists only once its upload completed. A rerun of the same
command lists the part files, reads each one's `image_id` column, removes any that do not read back as Parquet
(a file cut short by a kill, a half-written temporary) and processes only the ids not yet written.
"""

from __future__ import annotations

import json
import posixpath
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vprlib.data.manifest import is_remote, url_to_fs
from vprlib.extract.encode import CONFIG_FILE, PART_PREFIX, part_files

TEMP_PREFIX = ".tmp-"
# Config fields that change what a row holds: a rerun into the same folder must match them.
RESULT_FIELDS = ("strategy", "models", "models_identity", "side", "seg_probabilities", "dilation")


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


def write_part(batch: pa.Table, output: str, schema: pa.Schema) -> pa.Table:
    """Ray Data task: write one part file atomically; return its (image_id, status) for the job's tally."""
    table = conform(batch, schema)
    fs, root = url_to_fs(output)
    name = f"{PART_PREFIX}{uuid.uuid4().hex}.parquet"
    final = posixpath.join(root, name)
    temp = final if is_remote(output) else posixpath.join(root, TEMP_PREFIX + name)
    with fs.open(temp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    if temp != final:
        fs.mv(temp, final)
    return table.select(["image_id", "status"])


def scan_output(output: str) -> tuple[pa.Table, list[str]]:
    """(image_id, status) of every readable part file, and the paths of unreadable parts/temporaries removed."""
    fs, root = url_to_fs(output)
    removed = []
    if fs.exists(root):
        for path in fs.ls(root, detail=False):
            if posixpath.basename(path).startswith(TEMP_PREFIX):
                fs.rm(path)
                removed.append(path)
    tables = []
    for part in part_files(output):
        part_fs, path = url_to_fs(part)
        try:
            with part_fs.open(path, "rb") as f:
                tables.append(pq.read_table(f, columns=["image_id", "status"]))
        except Exception:  # cut short by a kill, or not ours: its rows are simply redone
            part_fs.rm(path)
            removed.append(part)
    empty = pa.table({"image_id": pa.array([], pa.string()), "status": pa.array([], pa.string())})
    return pa.concat_tables([empty, *tables], promote_options="default"), removed


def check_config(output: str, config_json: str) -> None:
    """Write the resolved config beside the output; refuse to resume into maps made with other settings."""
    fs, root = url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    path = posixpath.join(root, CONFIG_FILE)
    new = json.loads(config_json)
    if fs.exists(path) and part_files(output):
        with fs.open(path, "r") as f:
            old = json.load(f)
        changed = [k for k in RESULT_FIELDS if old.get(k) != new.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise OutputMismatchError(f"{output} already holds maps made with other settings ({diffs}); "
                                      f"use another --output or remove it")
    with fs.open(path, "w") as f:
        f.write(config_json)


def duplicate_ids(ids: pa.Array) -> np.ndarray:
    values, counts = np.unique(np.asarray(ids.to_pylist(), dtype=object).astype(str), return_counts=True)
    return values[counts > 1]
