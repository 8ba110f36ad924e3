"""Query sequences of a VPR-format benchmark (vprlib.data.vpr): consecutive frames of one query folder grouped into
sequences, as MSLS-style sequence evaluation reads them (Mereu et al. 2022).

A query folder of a traversal holds its frames; ordered by the names' `timestamp` field where every frame of the
folder has one (numerically when each is a number), by name otherwise, they are cut into consecutive groups of
`frames` (the last group may be shorter). Each group gets a `sequence_id` ("<folder>#<n>") and each frame its
`frame_index` (0 = the first), the columns `evaluate --sequences` reads. Database rows are left as they are (their
sequence columns null): the database is single images, as the protocol has it.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa

from vprlib.data.manifest import ManifestError


def _order_key(row: dict, numeric: bool):
    stamp = row.get("timestamp")
    return (float(stamp) if numeric else stamp, row["image_id"])


def _is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def add_sequences(table: pa.Table, frames: int) -> pa.Table:
    """`table` (a VPR manifest) with `sequence_id` and `frame_index`: each query folder's frames in time order cut
    into consecutive sequences of `frames`."""
    if frames < 1:
        raise ManifestError(f"sequence frames must be >= 1, got {frames}")
    rows = table.select([c for c in ("image_id", "split", "timestamp") if c in table.column_names]).to_pylist()
    folders: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row["split"] == "query":
            folders.setdefault(posixpath.dirname(row["image_id"]), []).append(i)
    sequence: list[str | None] = [None] * len(rows)
    index: list[int | None] = [None] * len(rows)
    for folder, members in sorted(folders.items()):
        timed = all(rows[i].get("timestamp") is not None for i in members)
        numeric = timed and all(_is_number(rows[i]["timestamp"]) for i in members)
        keys = {i: _order_key(rows[i], numeric) if timed else rows[i]["image_id"] for i in members}
        for position, row in enumerate(sorted(members, key=keys.__getitem__)):
            sequence[row] = f"{folder}#{position // frames}"
            index[row] = position % frames
    return table.append_column("sequence_id", pa.array(sequence, pa.string())).append_column(
        "frame_index", pa.array(index, pa.int32()))
