"""Validation of a retriever during training: Recall@N (paper eq. 10, vprlib.metrics) with each validation image
queried against the images of the other captures: right when one of its top N lies within 25 m.

A capture is one camera stop seen in several headings (a synthetic-city visit, a HoliCity panorama): its other
headings stand at the same spot, so they would count as right without being recognised, and are left out of a
query's candidates. Rows without a capture column are each their own capture (leave one out)."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import torch

from vprlib.metrics import DEFAULT_NS, GPS_THRESHOLD_M, manifest_positives, recall_at_n

POSITION_COLUMNS = ("lat", "lon", "utm_east", "utm_north", "utm_zone")
CAPTURE_COLUMNS = ("visit_id", "place_id")  # the first present names a row's capture


@torch.no_grad()
def embed_batches(model, batches, autocast) -> tuple[np.ndarray, pa.Table]:
    """Descriptors (N, D) float32 of decoded map batches, and the batches' position columns as a table."""
    model.eval()
    descriptors, columns = [], {}
    for batch in batches:
        with autocast:
            descriptors.append(model.embed(batch["depth"], batch["seg"]).float().cpu().numpy())
        for name in (*POSITION_COLUMNS, "capture"):
            if name in batch:
                columns.setdefault(name, []).append(batch[name].cpu().numpy())
    rows = pa.table({name: np.concatenate(parts) for name, parts in columns.items()})
    return np.concatenate(descriptors).astype(np.float32), rows


def other_capture_recall(descriptors: np.ndarray, rows: pa.Table, ns=DEFAULT_NS,
                         radius_m: float = GPS_THRESHOLD_M) -> dict[str, float]:
    """Recall@N of every row as a query against the rows of other captures (inner product of unit descriptors);
    `rows` has the positions and, optionally, `capture` (int64)."""
    import faiss

    capture = rows["capture"].to_numpy() if "capture" in rows.column_names else np.arange(len(descriptors))
    largest = int(np.bincount(np.unique(capture, return_inverse=True)[1]).max())
    k = min(max(ns) + largest, len(descriptors))
    index = faiss.IndexFlatIP(descriptors.shape[1])
    index.add(np.ascontiguousarray(descriptors))
    _, ranked = index.search(np.ascontiguousarray(descriptors), k)
    width = min(max(ns), len(descriptors) - largest)
    predictions = np.array([[j for j in row if capture[j] != capture[i]][:width] for i, row in enumerate(ranked)],
                           dtype=np.int64)
    positives = manifest_positives(rows, rows, mode="gps", radius_m=radius_m)
    positives = [p[capture[p] != capture[i]] for i, p in enumerate(positives)]
    usable = [n for n in ns if n <= width]
    return {f"recall@{n}": value for n, value in recall_at_n(predictions, positives, usable).items()}


def capture_codes(batch: dict, column: str) -> dict:
    """Ray Data map: the batch's capture ids as int64 codes in `capture` (strings hashed; tensors cannot hold them),
    the original column dropped."""
    values = batch.pop(column)
    if values.dtype.kind in "iu":
        batch["capture"] = values.astype(np.int64)
    else:
        batch["capture"] = np.array([zlib.crc32(str(v).encode()) for v in values], dtype=np.int64)
    return batch
