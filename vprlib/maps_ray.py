"""A maps table written by a Ray job: a Ray Dataset of pipeline maps encoded by CPU tasks and written by a Datasink
as atomic part files (vprlib.maps). Extraction and HoliCity's ground truth both write through `write_dataset`; the
refiners' training reads two maps tables joined by image_id through `pair_maps`.

Manifest columns travel beside the pipeline, not through it: the dataset carries `_row`, an index into one copy of
the rows still to do held in the object store, and each write task joins those rows back (`maps.attach_manifest`), so
the manifest's Arrow types survive. A part is named from the ids it holds, so a write Ray Data retries after losing
its node rewrites the same file instead of adding a second copy of its rows. Kept apart from vprlib.maps, which the
job configs import, because a Datasink needs Ray.
"""

from __future__ import annotations

import math
import posixpath
import zlib
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Datasink

from vprlib.cluster import io_task_args
from vprlib.maps import OK, encode_batch, output_schema, part_files, part_name_of, write_part
from vprlib.spec import MapSpec
from vprlib.storage import url_to_fs


class MapsSink(Datasink):
    """Writes a job's encoded rows as part files of at most `rows_per_file` rows (vprlib.maps.write_part: atomic,
    manifest columns joined by `_row`) and tallies their statuses in `counts`."""

    def __init__(self, output: str, schema: pa.Schema, manifest, rows_per_file: int):
        self.output, self.schema, self.manifest, self.rows_per_file = output, schema, manifest, rows_per_file
        self.counts: dict[str, int] = {}

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks, ctx) -> dict[str, int]:
        from ray.data.block import BlockAccessor

        table = pa.concat_tables([BlockAccessor.for_block(block).to_arrow() for block in blocks])
        counts: dict[str, int] = {}
        for start in range(0, table.num_rows, self.rows_per_file):
            rows = table.slice(start, self.rows_per_file)
            written = write_part(rows, self.output, self.schema, self.manifest,
                                 name=part_name_of(rows["image_id"].to_pylist()))
            for status in written["status"].to_pylist():
                counts[status] = counts.get(status, 0) + 1
        return counts

    def on_write_complete(self, write_result) -> None:
        for counts in write_result.write_returns:
            for status, n in counts.items():
                self.counts[status] = self.counts.get(status, 0) + n


def write_dataset(ds, output: str, spec: MapSpec, models_json: str, todo: pa.Table, rows_per_file: int,
                  batch_size: int) -> dict[str, int]:
    """Encode `ds` (batches of `image_id`, `_row` (a row of `todo`, the manifest rows still to do, with
    `carry_columns` applied), `status`, `error` and the maps `encode_batch` takes) in CPU tasks of `batch_size`
    rows and write it into `output` as parts of `rows_per_file` rows; return the status counts of the rows written."""
    import ray

    encoded = ds.map_batches(encode_batch, batch_size=batch_size, num_cpus=1,
                             fn_kwargs={"spec": spec, "models_json": models_json})
    sink = MapsSink(output, output_schema(todo.schema, spec), ray.put(todo), rows_per_file)
    encoded.write_datasink(sink, ray_remote_args={"num_cpus": 1, **io_task_args()})
    return sink.counts


# ----------------------------------------------------------------------------------------------- pairing two tables
TARGET = -1  # `source` of a ground-truth row in the pairing shuffle; input rows carry their source's index
PAIR_COLUMNS = ("depth", "seg", "map_height", "map_width")  # the encoded maps a pair carries, input and gt_*
ROWS_PER_PARTITION = 128  # rows per bucket of the pairing shuffle
MAX_BUCKETS = 256


def _encoded_rows(table: pa.Table, ids: pa.Array, source: int, split: str | None) -> pa.Table:
    """A part file's ok rows of the wanted ids (and split), encoded maps only, tagged with their `source`."""
    keep = pc.and_(pc.equal(table["status"], OK), pc.is_in(table["image_id"], value_set=ids))
    if split is not None:
        keep = pc.and_(keep, pc.equal(table["split"], split))
    rows = table.filter(keep).select(["image_id", *PAIR_COLUMNS])
    return rows.append_column("source", pa.array(np.full(rows.num_rows, source, np.int8)))


def bucket_of(ids: pa.Array, buckets: int) -> np.ndarray:
    """A stable bucket per id (CRC-32 of its UTF-8 bytes: the same in every process, unlike hash())."""
    return np.array([zlib.crc32(i.encode()) % buckets for i in ids.to_pylist()], dtype=np.int64)


def _bucketed(part: str, ids: pa.Array, source: int, split: str | None, buckets: int):
    """Map side of the pairing shuffle: one part file's wanted rows, cut into `buckets` by id."""
    import pyarrow.parquet as pq

    fs, path = url_to_fs(part)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["image_id", "status", *PAIR_COLUMNS]
                              + (["split"] if split is not None else []))
    rows = _encoded_rows(table, ids, source, split)
    bucket = bucket_of(rows["image_id"].combine_chunks(), buckets)
    pieces = [rows.filter(pa.array(bucket == b)) for b in range(buckets)]
    return pieces if buckets > 1 else pieces[0]  # one return value per bucket


def pair_rows(rows: pa.Table) -> pa.Table:
    """Input rows (source >= 0) each with the maps of the ground-truth row (source TARGET) of its image_id, as
    gt_* columns; inputs without one are dropped."""
    is_target = pc.equal(rows["source"], TARGET)
    targets, inputs = rows.filter(is_target), rows.filter(pc.invert(is_target))
    where = pc.index_in(inputs["image_id"], value_set=targets["image_id"].combine_chunks())
    found = pc.is_valid(where)
    inputs, where = inputs.filter(found), where.filter(found)
    truth = targets.take(where)
    for name in PAIR_COLUMNS:
        inputs = inputs.append_column(f"gt_{name}", truth[name])
    return inputs


def _paired(decode: Callable[..., dict], decode_kwargs: dict, sources: int, folder: str | None, index: int,
            *pieces: pa.Table) -> list:
    """Reduce side: one bucket's rows of every part, paired, per source either decoded (an Arrow table of the
    tensors `decode` makes, kept in the object store) or, with `folder`, written encoded to `folder`/source-<i>/
    (its row count)."""
    from ray.data.extensions import ArrowTensorArray

    pairs = pair_rows(pa.concat_tables(pieces))
    out = []
    for source in range(sources):
        rows = pairs.filter(pc.equal(pairs["source"], source))
        if folder is not None:
            if rows.num_rows:
                _write_pairs(rows, posixpath.join(folder, f"source-{source}"), index)
            out.append(rows.num_rows)
            continue
        decoded = decode(rows.to_pydict(), **decode_kwargs)
        out.append(pa.table({k: ArrowTensorArray.from_numpy(v) for k, v in decoded.items()}))
    return out if sources > 1 else out[0]  # one return value per source


def _write_pairs(rows: pa.Table, folder: str, index: int) -> None:
    import pyarrow.parquet as pq

    fs, root = url_to_fs(folder)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, f"part-{index:05d}.parquet"), "wb") as f:
        pq.write_table(rows.drop_columns(["source"]), f, compression="zstd")


def pair_maps(sources: list[tuple[str, str, pa.Array]], targets: str, decode: Callable[..., dict],
              decode_kwargs: dict, folder: str | None = None) -> list:
    """Per (path, split, ids) source, its ok rows of those ids each with the maps of the ok row of the same image_id
    in the maps table `targets` (gt_* columns; rows without one are dropped), as Ray Datasets of what
    `decode(batch, **decode_kwargs)` makes of a batch of paired encoded rows (a dict of numpy arrays).

    One hash shuffle of plain Ray tasks pairs all sources at once: a map task per part file of every table cuts its
    wanted rows into buckets by id (`bucket_of`), a reduce task per bucket pairs them (`pair_rows`). Each row's bytes
    move once, memory and work are spread over the cluster, and nothing is assumed about the tables' row order. (Ray
    Data's `Dataset.join` needs polars, which is not a dependency, and its `groupby().map_groups` did the same work
    some 20 s slower on 64 rows, mostly fixed costs, on a 2-core machine.) Without `folder` the reducers decode the
    pairs and the datasets hold them in the object store; with it, they write the encoded pairs under `folder`
    (emptied first) and the datasets decode them from there on every pass."""
    import ray
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    everything = pc.unique(pa.concat_arrays([ids for _, _, ids in sources]))
    rows = sum(len(ids) for _, _, ids in sources)
    buckets = max(1, min(MAX_BUCKETS, math.ceil(rows / ROWS_PER_PARTITION)))
    if folder is not None:
        fs, root = url_to_fs(folder)
        if fs.exists(root):
            fs.rm(root, recursive=True)
    mapper = ray.remote(_bucketed).options(num_returns=buckets, **io_task_args())
    reducer = ray.remote(_paired).options(num_returns=len(sources), **io_task_args())
    wanted = [(path, split, ray.put(ids)) for path, split, ids in sources] + [(targets, None, ray.put(everything))]
    pieces = []
    for source, (path, split, ids) in enumerate(wanted):
        for part in part_files(path):
            refs = mapper.remote(part, ids, TARGET if split is None else source, split, buckets)
            pieces.append(refs if buckets > 1 else [refs])
    outputs = [reducer.remote(decode, decode_kwargs, len(sources), folder, b, *(p[b] for p in pieces))
               for b in range(buckets)]
    outputs = [o if len(sources) > 1 else [o] for o in outputs]
    if folder is None:
        return [ray.data.from_arrow_refs([o[i] for o in outputs]) for i in range(len(sources))]
    ray.get([ref for o in outputs for ref in o])  # written
    fs, root = url_to_fs(folder)
    filesystem = PyFileSystem(FSSpecHandler(fs))
    return [ray.data.read_parquet(posixpath.join(root, f"source-{i}"), filesystem=filesystem)
            .map_batches(decode, fn_kwargs=decode_kwargs) for i in range(len(sources))]
