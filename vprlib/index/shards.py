"""Shards of an index: which shard a row belongs to, the faiss index built for each, and the content hash that says
whether a shard must be rebuilt.

Shards are UTM tiles (`utm-tile`: `tile_m` x `tile_m` metres of one UTM zone), the values of a `city` column, or
one shard for all (`none`). Each is a faiss index over unit descriptors: exact inner product (`flat`, the default),
or IVF-PQ (`ivfpq`) for millions of images, with its parameters chosen from the shard's size unless given. A shard too
small to train IVF-PQ well (fewer than 39 points per centroid) is built flat, and the manifest says so.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

SHARD_BY = ("utm-tile", "city", "none")
KINDS = ("flat", "ivfpq")
MIN_TRAIN_PER_CENTROID = 39  # faiss warns below this many training points per centroid


def shard_keys(rows: pa.Table, shard_by: str, tile_m: float) -> np.ndarray:
    """Each row's shard name."""
    if shard_by == "none":
        return np.full(rows.num_rows, "all", dtype=object)
    if shard_by == "city":
        if "city" not in rows.column_names or rows["city"].null_count:
            raise ValueError("--shard-by city needs a `city` column with a value in every row of the maps")
        return np.array([str(c) for c in rows["city"].to_pylist()], dtype=object)
    if shard_by != "utm-tile":
        raise ValueError(f"unknown --shard-by {shard_by!r}; known: {', '.join(SHARD_BY)}")
    from vprlib.data.synthcity import latlon_to_utm

    lat, lon = rows["lat"].to_numpy(), rows["lon"].to_numpy()
    zones = np.floor((lon + 180.0) / 6.0).astype(int) % 60 + 1
    keys = np.empty(rows.num_rows, dtype=object)
    for zone in np.unique(zones):
        members = zones == zone
        east, north, _ = latlon_to_utm(lat[members], lon[members], int(zone))
        keys[members] = [f"utm{zone}-{int(e // tile_m)}-{int(n // tile_m)}" for e, n in zip(east, north, strict=True)]
    return keys


def content_hash(ids: list[str], vectors: np.ndarray) -> str:
    """A shard's content: its ids and their vectors, in the order the index holds them."""
    digest = hashlib.sha256()
    for ident in ids:
        digest.update(ident.encode())
        digest.update(b"\0")
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class IvfPq:
    nlist: int  # coarse centroids
    m: int  # sub-quantizers (bytes per vector at 8 bits)
    nbits: int = 8
    nprobe: int = 16  # lists searched per query


def ivfpq_params(n: int, dim: int, nlist: int = 0, m: int = 0, nprobe: int = 0) -> IvfPq | None:
    """IVF-PQ parameters for a shard of `n` vectors of `dim` (given ones win): about 4 sqrt(n) lists, sub-vectors of
    16 dimensions, an 8th of the lists probed; None when the shard is too small to train them."""
    nlist = nlist or max(1, int(4 * math.sqrt(n)))
    m = m or max(1, dim // 16)
    while dim % m:
        m -= 1
    if n < MIN_TRAIN_PER_CENTROID * max(nlist, 2**8):
        return None
    return IvfPq(nlist=nlist, m=m, nprobe=nprobe or max(1, nlist // 8))


def build(vectors: np.ndarray, kind: str, params: dict | None = None) -> tuple[bytes, dict]:
    """A faiss index of unit `vectors` (inner product), serialised, and what was built."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    chosen = ivfpq_params(n, dim, **(params or {})) if kind == "ivfpq" else None
    if chosen is None:
        index = faiss.IndexFlatIP(dim)
        built = {"kind": "flat", **({"requested": "ivfpq", "why": "too few vectors to train"} if kind == "ivfpq"
                                    else {})}
    else:
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, chosen.nlist, chosen.m, chosen.nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = chosen.nprobe
        built = {"kind": "ivfpq", **asdict(chosen)}
    index.add(vectors)
    return faiss.serialize_index(index).tobytes(), built
