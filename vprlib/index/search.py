"""Searching an index folder: every shard (or those near a prior location), their top-k merged exactly by score.

An index folder holds `index.json` (the manifest: retriever identity, map specification, shards and their content
hashes), `embeddings-<hash>.parquet` (one row per indexed image, sorted by shard: ids, positions, maps hash, shard,
vector) and `shards/<name>-<content hash>.faiss`; files are named by content, so a reindex writes new files beside
the ones the current manifest names, and an interrupted one leaves the index as it was. A shard's faiss ids are its
rows' positions within the shard, so row = the shard's offset + faiss id. faiss runs on the GPUs when its GPU build
is installed.
"""

from __future__ import annotations

import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vprlib.data.manifest import url_to_fs
from vprlib.metrics import haversine_m

MANIFEST, SHARDS = "index.json", "shards"


class IndexFolderError(ValueError):
    """A folder that holds no index, or a search it cannot answer."""


def read_manifest(root: str) -> dict:
    fs, path = url_to_fs(root)
    file = posixpath.join(path, MANIFEST)
    if not fs.exists(file):
        raise IndexFolderError(f"{root} is not an index: no {MANIFEST} (written by jobs/index.py)")
    with fs.open(file, "r") as f:
        return json.load(f)


def embeddings_path(root: str, manifest: dict | None = None) -> str:
    manifest = manifest or read_manifest(root)
    return posixpath.join(url_to_fs(root)[1], manifest["embeddings"])


def read_embeddings(root: str, columns: list[str] | None = None, manifest: dict | None = None) -> pa.Table:
    """The index's embeddings table (all columns, or `columns`; "vector" is the descriptors)."""
    fs, _ = url_to_fs(root)
    with fs.open(embeddings_path(root, manifest), "rb") as f:
        if columns is not None and "vector" not in columns:
            columns = [c for c in pq.read_schema(f).names if c in columns]
        return pq.read_table(f, columns=columns)


def shard_path(root: str, file: str) -> str:
    return posixpath.join(url_to_fs(root)[1], SHARDS, file)


class Index:
    """An index folder opened for search: `rows` (the embeddings table without vectors) and the shards, loaded when
    first searched."""

    def __init__(self, root: str):
        self.root = root
        self.manifest = read_manifest(root)
        fs, _ = url_to_fs(root)
        with fs.open(embeddings_path(root, self.manifest), "rb") as f:
            names = [c for c in pq.read_schema(f).names if c != "vector"]
        self.rows = read_embeddings(root, columns=names, manifest=self.manifest)
        self.shards = self.manifest["shards"]
        self._loaded: dict = {}

    def _faiss(self, name: str):
        if name not in self._loaded:
            import faiss

            fs, _ = url_to_fs(self.root)
            with fs.open(shard_path(self.root, self.shards[name]["file"]), "rb") as f:
                index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
            if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
                index = faiss.index_cpu_to_all_gpus(index)
            self._loaded[name] = index
        return self._loaded[name]

    def near(self, lat: float, lon: float, radius_m: float) -> list[str]:
        """The shards holding any image within `radius_m` of (lat, lon): by each shard's centre and reach."""
        return [name for name, shard in self.shards.items()
                if haversine_m(lat, lon, shard["centre"][0], shard["centre"][1]) <= radius_m + shard["reach_m"]]

    def search(self, vectors: np.ndarray, k: int, shards: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top-k rows of each query vector (Q, D) over `shards` (default: all): (scores (Q, k) float32, rows
        (Q, k) int64 into `self.rows`), best first; -1 rows pad when the shards hold fewer than k images."""
        names = list(self.shards) if shards is None else shards
        unknown = set(names) - set(self.shards)
        if unknown:
            raise IndexFolderError(f"no shard(s) {sorted(unknown)} in {self.root}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        scores, rows = [], []
        for name in names:
            shard = self.shards[name]
            found_scores, found = self._faiss(name).search(vectors, min(k, shard["rows"]))
            scores.append(found_scores)
            rows.append(np.where(found >= 0, found + shard["offset"], -1))
        if not scores:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        return merge_top_k(np.concatenate(scores, axis=1), np.concatenate(rows, axis=1), k)


def merge_top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several shards' results per query (higher score first; padding -1 rows last)."""
    scores = np.where(rows >= 0, scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top_scores, top_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    pad = k - top_rows.shape[1]
    if pad > 0:
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_rows = np.pad(top_rows, ((0, 0), (0, pad)), constant_values=-1)
    return top_scores.astype(np.float32), top_rows.astype(np.int64)
