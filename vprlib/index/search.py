"""Searching an index folder: shards loaded memory-mapped, in this process (`Index`) or spread over Ray actors that
each hold a group of shards (`SearchPool`); every shard's top-k merged exactly.

An index folder holds:
- `index.json`, the manifest: the retriever's identity, the map specification, the settings, the name of the parts
  table and every shard's entry (its file stem, rows, bounds, what was built);
- `parts-<hash>.parquet`: one row per maps part (its name, fingerprint, embeddings file, rows, rows per shard);
- `embeddings/<part>-<key>.parquet`: one per maps part, its indexed rows (ids, positions, ground truth, shard,
  vector), one row group per shard;
- `shards/<name>-<key>.faiss` (vprlib.index.shards) and `shards/<name>-<key>.parquet`: the shard's rows without
  vectors, in faiss id order (sorted by image_id).
Files are named by what they were made from, so a reindex writes new files beside those the current manifest names,
and an interrupted one leaves the index as it was.

Results are exact over the shards searched and ordered as the VPR community's reference evaluation orders them: by
score, then (ties) by ascending image_id. faiss runs on the GPUs when its GPU build is installed.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vprlib.metrics import haversine_m
from vprlib.storage import url_to_fs

MANIFEST, SHARDS, EMBEDDINGS = "index.json", "shards", "embeddings"
METRIC_COLUMNS = (("utm_east", "utm_north"), ("east_m", "north_m"))


class IndexFolderError(ValueError):
    """A folder that holds no index, or a search it cannot answer."""


def read_manifest(root: str) -> dict:
    fs, path = url_to_fs(root)
    file = posixpath.join(path, MANIFEST)
    if not fs.exists(file):
        raise IndexFolderError(f"{root} is not an index: no {MANIFEST} (written by jobs/index.py)")
    with fs.open(file, "r") as f:
        manifest = json.load(f)
    if "parts" not in manifest:
        raise IndexFolderError(f"{root} holds an index of an older layout (one embeddings table): build it again "
                               f"into a new folder with jobs/index.py")
    return manifest


def read_parts(root: str, manifest: dict | None = None) -> pa.Table:
    """The index's parts table: part, fingerprint, file (its embeddings file), rows, shards (rows per shard)."""
    manifest = manifest or read_manifest(root)
    fs, path = url_to_fs(posixpath.join(root, manifest["parts"]))
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def read_embeddings(root: str, columns: list[str] | None = None, manifest: dict | None = None) -> pa.Table:
    """Every indexed row from the embeddings files (all columns, or `columns`; "vector" holds the descriptors), sorted
    by shard then image_id. It holds the whole index in memory: for small indexes, tests and inspection."""
    import pyarrow.dataset as pads

    manifest = manifest or read_manifest(root)
    files = [f for f, n in zip(*read_parts(root, manifest).select(["file", "rows"]).to_pydict().values(), strict=True)
             if n]
    fs, _ = url_to_fs(root)
    paths = [url_to_fs(posixpath.join(root, EMBEDDINGS, f))[1] for f in files]
    table = pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=columns)
    keys = [k for k in ("shard", "image_id") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


def shard_files(root: str, stem: str) -> tuple[str, str]:
    """A shard's faiss index and rows table."""
    return posixpath.join(root, SHARDS, stem + ".faiss"), posixpath.join(root, SHARDS, stem + ".parquet")


def shard_bounds(rows: pa.Table) -> dict:
    """Where a shard's rows are: the centre and reach (metres) of their lat/lon, and the box of each metric frame
    they have, for choosing the shards near a position (None where the rows lack the columns or have gaps); and what
    vprlib.metrics needs to know of their positions to choose the frame GPS mode measures in."""
    from vprlib.metrics import position_stats

    out = {"centre": None, "reach_m": None, "boxes": {}, "positions": position_stats(rows)}
    if _complete(rows, "lat", "lon") and rows.num_rows:
        lat, lon = rows["lat"].to_numpy(), rows["lon"].to_numpy()
        centre = (float(np.mean(lat)), float(np.mean(lon)))
        out["centre"], out["reach_m"] = centre, float(np.max(haversine_m(centre[0], centre[1], lat, lon)))
    for east, north in METRIC_COLUMNS:
        if _complete(rows, east, north) and rows.num_rows:
            e, n = rows[east].to_numpy(), rows[north].to_numpy()
            out["boxes"][f"{east}/{north}"] = [float(e.min()), float(n.min()), float(e.max()), float(n.max())]
    return out


def _complete(rows: pa.Table, *columns: str) -> bool:
    return all(c in rows.column_names and rows[c].null_count == 0 for c in columns)


# ----------------------------------------------------------------------------------------------- results
@dataclass
class Hits:
    """The top k of Q queries, best first: `scores` (Q, k) float32 (-inf pads), `ids` (Q, k) object (image_id, None
    pads) and `columns`: each column of the shards' rows tables at those hits, (Q, k) arrays (None / NaN pads)."""

    scores: np.ndarray
    ids: np.ndarray
    columns: dict[str, np.ndarray]

    @classmethod
    def empty(cls, queries: int, k: int = 0) -> Hits:
        return cls(np.full((queries, k), -np.inf, np.float32), np.full((queries, k), None, object), {})

    def take(self, order: np.ndarray) -> Hits:
        """The hits reordered (and cut) along each query's row by `order` (Q, k')."""
        pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
        return Hits(pick(self.scores), pick(self.ids), {c: pick(v) for c, v in self.columns.items()})


def merge_hits(parts: list[Hits], k: int) -> Hits:
    """The exact top k of several shards' hits for the same queries: by score, ties by ascending image_id; pads last."""
    if not parts:
        raise ValueError("nothing to merge")
    queries = len(parts[0].scores)
    names = sorted({c for p in parts for c in p.columns})
    scores = np.concatenate([p.scores for p in parts], axis=1)
    ids = np.concatenate([p.ids for p in parts], axis=1)
    columns = {c: np.concatenate([p.columns.get(c, _pad(p.scores.shape)) for p in parts], axis=1) for c in names}
    if scores.shape[1] < k:
        extra = Hits.empty(queries, k - scores.shape[1])
        scores, ids = np.concatenate([scores, extra.scores], 1), np.concatenate([ids, extra.ids], 1)
        columns = {c: np.concatenate([v, _pad(extra.scores.shape)], 1) for c, v in columns.items()}
    text = np.where(ids == None, "\U0010ffff", ids).astype(str)  # noqa: E711  (pads after every id)
    order = np.lexsort((text, -scores.astype(np.float64)), axis=-1)[:, :k]
    return Hits(scores, ids, columns).take(order)


def _pad(shape: tuple) -> np.ndarray:
    return np.full(shape, None, dtype=object)


# ----------------------------------------------------------------------------------------------- shards in a process
class ShardGroup:
    """Some shards of an index, loaded when first searched: faiss memory-mapped, their rows tables in memory."""

    def __init__(self, root: str, names: list[str] | None = None, manifest: dict | None = None):
        self.root = root
        self.manifest = manifest or read_manifest(root)
        every = self.manifest["shards"]
        self.names = list(every) if names is None else list(names)
        unknown = set(self.names) - set(every)
        if unknown:
            raise IndexFolderError(f"no shard(s) {sorted(unknown)} in {root}")
        self.entries = {n: every[n] for n in self.names}
        self._faiss: dict = {}
        self._rows: dict[str, pa.Table] = {}

    def index(self, name: str):
        if name not in self._faiss:
            import faiss

            from vprlib.index.shards import read_index

            index = read_index(shard_files(self.root, self.entries[name]["file"])[0], self.entries[name]["built"])
            if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
                index = faiss.index_cpu_to_all_gpus(index)
            self._faiss[name] = index
        return self._faiss[name]

    def rows(self, name: str) -> pa.Table:
        """The shard's rows (image_id, kept columns, shard) in faiss id order."""
        if name not in self._rows:
            fs, path = url_to_fs(shard_files(self.root, self.entries[name]["file"])[1])
            with fs.open(path, "rb") as f:
                self._rows[name] = pq.read_table(f).replace_schema_metadata(None)
        return self._rows[name]

    def search(self, vectors: np.ndarray, k: int, allowed: list | None = None) -> Hits:
        """The top k of each query vector (Q, D) over this group's shards, or per query over those of its shards
        named in `allowed[q]` (a collection of shard names)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        parts = []
        for name in self.names:
            wanted = np.arange(len(vectors)) if allowed is None else np.array(
                [i for i, names in enumerate(allowed) if name in names], dtype=np.int64)
            if len(wanted) == 0:
                continue
            parts.append(self._search_shard(name, vectors, wanted, k))
        return merge_hits(parts, k) if parts else Hits.empty(len(vectors), k)

    def _search_shard(self, name: str, vectors: np.ndarray, wanted: np.ndarray, k: int) -> Hits:
        rows = self.rows(name)
        depth = min(k, rows.num_rows)
        scores, found = self.index(name).search(vectors[wanted], depth)
        order = np.lexsort((found, -scores.astype(np.float64)), axis=-1)  # ties: ascending id, as image_id sorts
        scores, found = np.take_along_axis(scores, order, 1), np.take_along_axis(found, order, 1)
        hits = Hits.empty(len(vectors), depth)
        hits.scores[wanted] = np.where(found >= 0, scores, -np.inf)
        safe = np.maximum(found, 0).ravel()
        for column in rows.column_names:
            values = np.full((len(vectors), depth), None, dtype=object)
            taken = np.asarray(rows[column].take(pa.array(safe)).to_pylist(), dtype=object)
            values[wanted] = np.where(found >= 0, taken.reshape(found.shape), None)
            if column == "image_id":
                hits.ids = values
            else:
                hits.columns[column] = values
        return hits

    def positives(self, queries: pa.Table, mode: str, radius_m: float, columns) -> list[list[str] | None]:
        """Each query row's positives among this group's rows (image ids; None: no ground truth), by
        vprlib.metrics.manifest_positives; in GPS mode only the shards within `radius_m` of a query are measured."""
        from vprlib.metrics import manifest_positives

        found: list[list[str] | None] = [None] * queries.num_rows
        for name in self.names:
            wanted = (np.arange(queries.num_rows) if mode != "gps" else
                      np.flatnonzero(near_shard(self.entries[name], queries, radius_m, columns)))
            if len(wanted) == 0:
                continue
            rows = self.rows(name)
            ids = np.asarray(rows["image_id"].to_pylist(), dtype=object)
            subset = queries.take(pa.array(wanted))
            for q, pos in zip(wanted, manifest_positives(subset, rows, mode, radius_m, columns), strict=True):
                if pos is not None:
                    found[q] = (found[q] or []) + ids[pos].tolist()
        return found

    def holds(self, image_ids: list[str]) -> list[bool]:
        """Whether each image id is one of this group's rows."""
        wanted = pa.array(image_ids, pa.string())
        held = np.zeros(len(image_ids), dtype=bool)
        for name in self.names:
            held |= pc.is_in(wanted, value_set=self.rows(name)["image_id"]).to_numpy(zero_copy_only=False)
        return held.tolist()


def near_shard(entry: dict, queries: pa.Table, radius_m: float, columns: tuple[str, str]) -> np.ndarray:
    """Which query rows may have a positive in a shard: within `radius_m` of its box (metric frame `columns`) or of
    its centre's reach (lat/lon); every row when the shard's entry has no bounds in that frame."""
    east, north = columns
    x = queries[east].to_numpy(zero_copy_only=False).astype(np.float64)
    y = queries[north].to_numpy(zero_copy_only=False).astype(np.float64)
    if (east, north) == ("lat", "lon"):
        if entry["centre"] is None:
            return np.ones(queries.num_rows, dtype=bool)
        return haversine_m(x, y, *entry["centre"]) <= radius_m + entry["reach_m"] + 1e-6
    box = entry["boxes"].get(f"{east}/{north}")
    if box is None:
        return np.ones(queries.num_rows, dtype=bool)
    dx = np.maximum(np.maximum(box[0] - x, x - box[2]), 0.0)
    dy = np.maximum(np.maximum(box[1] - y, y - box[3]), 0.0)
    return np.hypot(dx, dy) <= radius_m


def shards_near(shards: dict, lat: float, lon: float, radius_m: float) -> list[str]:
    """The shards (manifest entries by name) that may hold an image within `radius_m` of (lat, lon), by each shard's
    centre and reach (all shards whose rows have no lat/lon)."""
    return [name for name, shard in shards.items() if shard["centre"] is None or
            haversine_m(lat, lon, *shard["centre"]) <= radius_m + shard["reach_m"]]


class Index:
    """An index folder opened for search in this process (memory-mapped shards, loaded when first searched)."""

    def __init__(self, root: str):
        self.root = root
        self.manifest = read_manifest(root)
        self.shards = self.manifest["shards"]
        self.group = ShardGroup(root, manifest=self.manifest)

    def near(self, lat: float, lon: float, radius_m: float) -> list[str]:
        return shards_near(self.shards, lat, lon, radius_m)

    def search(self, vectors: np.ndarray, k: int, shards: list[str] | None = None) -> Hits:
        """The top k of each query vector over `shards` (default: all)."""
        unknown = set(shards or ()) - set(self.shards)
        if unknown:
            raise IndexFolderError(f"no shard(s) {sorted(unknown)} in {self.root}")
        allowed = None if shards is None else [set(shards)] * len(vectors)
        return self.group.search(vectors, k, allowed)


# ----------------------------------------------------------------------------------------------- shards on actors
def balance(entries: dict, groups: int) -> list[list[str]]:
    """Shard names split into at most `groups` groups of about equal rows (largest first, each to the lightest)."""
    bins: list[list[str]] = [[] for _ in range(max(1, min(groups, len(entries))))]
    load = [0] * len(bins)
    for name in sorted(entries, key=lambda n: (-entries[n]["rows"], n)):
        lightest = int(np.argmin(load))
        bins[lightest].append(name)
        load[lightest] += entries[name]["rows"]
    return [sorted(b) for b in bins]


class SearchPool:
    """The shards of an index spread over Ray actors (`ShardGroup`s of about equal rows); a batch of queries goes to
    the actors holding the shards it needs, and their top k are merged exactly.

    An actor reserves `cpus` (none by default): it works only while the pipeline step that asked it waits in
    `ray.get`, and Ray lends a waiting task's CPU to others, so a reservation would only keep CPUs idle between
    batches. Actors are restarted when they die (their state is the files they read)."""

    def __init__(self, root: str, actors: int = 1, cpus: float = 0.0, manifest: dict | None = None):
        import ray

        self.root = root
        self.manifest = manifest or read_manifest(root)
        self.groups = balance(self.manifest["shards"], actors)
        remote = ray.remote(ShardGroup).options(num_cpus=cpus, max_restarts=-1, max_task_retries=-1)
        self.actors = [remote.remote(root, names, self.manifest) for names in self.groups]

    def positives(self, queries: pa.Table, mode: str, radius_m: float, columns) -> list[list[str] | None]:
        """Each query row's positives over every actor's shards (ShardGroup.positives, joined)."""
        import ray

        found: list[list[str] | None] = [None] * queries.num_rows
        for part in ray.get([a.positives.remote(queries, mode, radius_m, columns) for a in self.actors]):
            for q, ids in enumerate(part):
                if ids is not None:
                    found[q] = (found[q] or []) + ids
        return found

    def holds(self, image_ids: list[str]) -> list[bool]:
        import ray

        held = np.zeros(len(image_ids), dtype=bool)
        for part in ray.get([a.holds.remote(image_ids) for a in self.actors]):
            held |= np.asarray(part, dtype=bool)
        return held.tolist()

    def search(self, vectors: np.ndarray, k: int, allowed: list | None = None) -> Hits:
        import ray

        refs = []
        for names, actor in zip(self.groups, self.actors, strict=True):
            mine = None if allowed is None else [set(a) & set(names) for a in allowed]
            if mine is not None and not any(mine):
                continue
            refs.append(actor.search.remote(vectors, k, mine))
        parts = ray.get(refs)
        return merge_hits(parts, k) if parts else Hits.empty(len(vectors), k)
