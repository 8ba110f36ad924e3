"""A maps table written by a Ray job: a Ray Dataset of pipeline maps encoded by CPU tasks and written by a Datasink
as atomic part files (vprlib.maps). Extraction and HoliCity's ground truth both write through `write_dataset`.

Manifest columns travel beside the pipeline, not through it: the dataset carries `_row`, an index into one copy of
the rows still to do held in the object store, and each write task joins those rows back (`maps.attach_manifest`), so
the manifest's Arrow types survive. A part is named from the ids it holds, so a write Ray Data retries after losing
its node rewrites the same file instead of adding a second copy of its rows. Kept apart from vprlib.maps, which the
job configs import, because a Datasink needs Ray.
"""

from __future__ import annotations

import pyarrow as pa
from ray.data import Datasink

from vprlib.cluster import io_task_args
from vprlib.maps import encode_batch, output_schema, part_name_of, write_part
from vprlib.spec import MapSpec


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
