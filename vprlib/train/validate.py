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
            descriptors.append(model.embed(batch["depth"], batch["seg"], batch.get("rgb")).float().cpu().numpy())
        for name in (*POSITION_COLUMNS, "capture"):
            if name in batch:
                columns.setdefault(name, []).append(batch[name].cpu().numpy())
    rows = pa.table({name: np.concatenate(parts) for name, parts in columns.items()})
    return np.concatenate(descriptors).astype(np.float32), rows


def other_capture_recall(descriptors: np.ndarray, rows: pa.Table, ns=DEFAULT_NS,
                         radius_m: float = GPS_THRESHOLD_M) -> dict[str, float]:
    """Recall@N of every row as a query against the rows of other captures (inner product of unit descriptors);
    `rows` has the positions and, optionally, `capture` (int64)."""
    capture = rows["capture"].to_numpy() if "capture" in rows.column_names else np.arange(len(descriptors))
    largest = int(np.bincount(np.unique(capture, return_inverse=True)[1]).max())
    k = min(max(ns) + largest, len(descriptors))
    ranked = top_k_inner_product(descriptors, k)
    width = min(max(ns), len(descriptors) - largest)
    predictions = np.array([[j for j in row if capture[j] != capture[i]][:width] for i, row in enumerate(ranked)],
                           dtype=np.int64)
    positives = manifest_positives(rows, rows, mode="gps", radius_m=radius_m)
    positives = [p[capture[p] != capture[i]] for i, p in enumerate(positives)]
    usable = [n for n in ns if n <= width]
    return {f"recall@{n}": value for n, value in recall_at_n(predictions, positives, usable).items()}


def top_k_inner_product(descriptors: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Per row, the k rows of largest inner product, best first (exact; numpy, in chunks of rows). Validation sets
    are small, and this keeps training free of faiss, which the index job alone needs."""
    out = []
    for start in range(0, len(descriptors), chunk):
        scores = descriptors[start : start + chunk] @ descriptors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
            np.arange(scores.shape[1]), (len(scores), 1))
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out)


def capture_codes(batch: dict, column: str) -> dict:
    """Ray Data map: the batch's capture ids as int64 codes in `capture` (strings hashed; tensors cannot hold them),
    the original column dropped."""
    values = batch.pop(column)
    if values.dtype.kind in "iu":
        batch["capture"] = values.astype(np.int64)
    else:
        batch["capture"] = np.array([zlib.crc32(str(v).encode()) for v in values], dtype=np.int64)
    return batch
