"""Shards of an index: which shard a row belongs to, and the faiss index built for each.

Shards are UTM tiles (`utm-tile`: `tile_m` x `tile_m` metres of one UTM zone), the values of a `city` column, or
one shard for all (`none`). Each is a faiss index over unit descriptors, searched by inner product:
- `flat`: exact.
- `ivfpq`: an inverted file of `nlist` lists over product-quantised codes of `m` 4-bit sub-quantizers (faiss's
  fast-scan PQ, `IVF{nlist},PQ{m}x4fs`), wrapped in `IndexRefineFlat`, which keeps the vectors themselves beside the
  codes: a search takes `refine` x k candidates from the codes and re-ranks them exactly, so the scores returned are
  exact inner products and only a candidate the codes missed can be lost. Its parameters follow the shard's size
  (`ivfpq_params`, the rule benchmarks/ivfpq_study.py measured); a shard too small to gain from it is built flat, and
  the manifest says so.

The vectors of a shard are its part of the index's file; both kinds load memory-mapped (`faiss.IO_FLAG_MMAP_IFC`), so
a search process holds in memory only what it touches (the codes of an IVF-PQ shard, the vectors a flat search reads).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

SHARD_BY = ("utm-tile", "city", "none")
KINDS = ("flat", "ivfpq")
IVF_MIN_ROWS = 50_000  # below this a flat shard searches fast enough and is exact (benchmarks/ivfpq_study.py)
TRAIN_PER_LIST = 64  # training vectors per inverted list (faiss warns under 39; more costs time and gains little)


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
    from vprlib.geo import latlon_to_utm, utm_zone

    lat, lon = rows["lat"].to_numpy(), rows["lon"].to_numpy()
    zones = utm_zone(lon)
    keys = np.empty(rows.num_rows, dtype=object)
    for zone in np.unique(zones):
        members = zones == zone
        east, north, _ = latlon_to_utm(lat[members], lon[members], int(zone))
        keys[members] = [f"utm{zone}-{int(e // tile_m)}-{int(n // tile_m)}" for e, n in zip(east, north, strict=True)]
    return keys


@dataclass(frozen=True)
class IvfPq:
    nlist: int  # inverted lists (coarse centroids)
    m: int  # sub-quantizers of `nbits` bits each (a code is m * nbits / 8 bytes)
    nprobe: int  # lists searched per query
    refine: int  # candidates per result re-ranked exactly from the stored vectors (faiss k_factor)
    train: int  # vectors the lists and codebooks are trained on (a random sample of the shard)
    nbits: int = 4  # 4-bit codes: faiss's fast-scan kernels (SIMD table lookups), several times faster than 8 bits


def ivfpq_params(n: int, dim: int, nlist: int = 0, m: int = 0, nprobe: int = 0, refine: int = 0) -> IvfPq | None:
    """IVF-PQ parameters for a shard of `n` vectors of `dim` (given ones win), or None when it stays flat.

    The rule: about sqrt(n) lists, a power of two; codes of dim/8 sub-quantizers of 4 bits (32 bytes for 512-d,
    searched by faiss's fast-scan kernels); half the lists probed; 16 candidates per result re-ranked exactly;
    TRAIN_PER_LIST training vectors per list. Shards under IVF_MIN_ROWS stay flat unless `nlist` is given.
    Measured by benchmarks/ivfpq_study.py (benchmarks/RESULTS.md) on synthetic 512-d place descriptors, which are
    harder for IVF than a trained CNN's: at 1,000,000 vectors, 20x flat's speed with the exact nearest neighbour first
    for 99.0% of queries and place Recall@1 0.893 against flat's 0.894; at 100,000, 7x with 99.3%. Probing a
    quarter of the lists is twice as fast (41x at 1M) with place Recall@1 still flat's but the exact neighbour first
    for 94.5% (`--nprobe`)."""
    if n < IVF_MIN_ROWS and not nlist:
        return None
    nlist = nlist or 2 ** max(4, round(math.log2(math.sqrt(n))))
    m = m or max(1, dim // 8)
    while dim % m:
        m -= 1
    if n < 39 * nlist:  # too few vectors to train the lists (faiss's own minimum)
        return None
    return IvfPq(nlist=nlist, m=m, nprobe=min(nlist, nprobe or max(16, nlist // 2)), refine=refine or 16,
                 train=min(n, TRAIN_PER_LIST * nlist))


def build_index(vectors: np.ndarray, kind: str, params: dict | None = None, seed: int = 0):
    """A faiss index of unit `vectors` (inner product) and a record of what was built."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    chosen = ivfpq_params(n, dim, **(params or {})) if kind == "ivfpq" else None
    if chosen is None:
        index = faiss.IndexFlatIP(dim)
        built = {"kind": "flat", **({"requested": "ivfpq", "why": "too few vectors for IVF"} if kind == "ivfpq"
                                    else {})}
    else:
        index = faiss.index_factory(dim, f"IVF{chosen.nlist},PQ{chosen.m}x{chosen.nbits}fs,RFlat",
                                    faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, chosen.train, replace=False) if chosen.train < n else None
        index.train(vectors if sample is None else vectors[np.sort(sample)])
        built = {"kind": "ivfpq", **asdict(chosen)}
    index.add(vectors)
    configure(index, built)
    return index, built


def configure(index, built: dict) -> None:
    """Set a loaded index's search parameters from its record (faiss does not store nprobe and k_factor)."""
    import faiss

    if built["kind"] == "ivfpq":
        index.k_factor = float(built["refine"])
        faiss.extract_index_ivf(index.base_index).nprobe = int(built["nprobe"])


def write_index(index, path: str) -> None:
    """Write a faiss index to a local path or a URL (through a local temporary file), whole or not at all."""
    import os
    import tempfile

    import faiss

    from vprlib.storage import is_remote, url_to_fs

    fs, target = url_to_fs(path)
    folder = os.path.dirname(target) if not is_remote(path) else None
    if folder:
        os.makedirs(folder, exist_ok=True)
    handle, temp = tempfile.mkstemp(suffix=".faiss", dir=folder)
    os.close(handle)
    try:
        faiss.write_index(index, temp)
        if folder:
            os.replace(temp, target)
        else:
            fs.put_file(temp, target)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def read_index(path: str, built: dict, cache_dir: str | None = None):
    """A shard's faiss index, memory-mapped (a URL is copied to `cache_dir` on this node first), configured."""
    import os

    import faiss

    from vprlib.storage import is_remote, url_to_fs

    local = path
    if is_remote(path):
        import tempfile

        fs, remote = url_to_fs(path)
        folder = cache_dir or os.path.join(tempfile.gettempdir(), "vprlib-shards")
        os.makedirs(folder, exist_ok=True)
        local = os.path.join(folder, os.path.basename(remote))
        if not os.path.exists(local):
            fs.get_file(remote, local + ".part")
            os.replace(local + ".part", local)
    index = faiss.read_index(local, faiss.IO_FLAG_MMAP_IFC)
    configure(index, built)
    return index
