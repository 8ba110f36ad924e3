"""Recall@N for visual place recognition, as in the paper's equation (10).

    Recall@N = 1/M * sum_i 1[min(dist_i1, ..., dist_iN) < t]

M is the number of queries, dist_ij the distance between query i and its j-th ranked database item, t the
threshold. Every notion of distance reduces to a set of positive database indices per query, so the public API is:

- `manifest_positives(queries, database, mode=None)`: the positives of each query row of a manifest among the
  database rows of another (or the same) manifest. Modes:
  - "positives" (chosen when `mode` is None and `queries` has a `positives` column): right if the item is in the
    query's `positives`, a list of database `image_id`s (the GLDv2 retrieval benchmark's ground truth). Ids absent
    from `database` are skipped.
  - "gps" (chosen when `mode` is None otherwise): metres between the camera positions, t = 25 m (HoliCity).
    Positions are those of a metric frame every row of both tables has (`metric_frame`: UTM easting/northing, all
    in one zone or all in none, or HoliCity's CAD frame), else lat/lon (haversine). A frame needs no lat/lon:
    Nordland's names give easting 0 and a northing along the track, no zone, no lat/lon, so frames within 25 m
    along the track are positives, as the VPR community scores it. Rows that share no frame and whose lat/lon are
    no position are refused in one line (`gps_columns`) rather than compared by invented coordinates. A database
    item at exactly `radius_m` counts as a match, as the paper's text says ("at most a 25-meter difference", IV-A)
    and as radius searches in VPR benchmarks do.
  - "landmark": 0 if the two images share a landmark, 1 otherwise, t = 1 (Google Landmarks v2). Each row has one
    landmark (`landmark_id`) or a set of them (`landmark_ids`, a list column; used when both are present); a query
    showing several landmarks is right on an image of any of them.
- `gps_positives`, `metric_positives`, `landmark_positives`, `id_positives`: the same on plain arrays and lists.
- `metric_frame`, `gps_columns`: the columns GPS mode measures between, or why no columns will do, from two tables
  or their `position_stats` (what an index keeps of each shard's rows).
- `recall_at_n(predictions, positives, ns)`: {N: Recall@N}, a query counting as right if any of its top N
  predictions is a positive; `recall_from_ranks` the same from each query's first right rank.

A query row without ground truth (no landmark in landmark mode, a null `positives` list) is not a query: its
positives are None and `recall_at_n` leaves it out of M. A query with ground truth but no positive in the database
(an empty array) stays in M and can never be right, as the 1/M of equation (10) says and as the VPR community's
evaluation counts every query; `exclude_no_positive=True` drops such queries from M instead, the other convention
some benchmarks use. Recalls are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vprlib.geo import haversine_m

DEFAULT_NS = (1, 5, 10)
GPS_THRESHOLD_M = 25.0  # paper IV-A
_PAIRS_PER_CHUNK = 2_000_000  # query-database distances computed at once (a few arrays of this size in memory)


def _radius_positives(dist_fn, queries: np.ndarray, db: np.ndarray, radius_m: float, chunk: int | None):
    """Per query, the sorted database indices within `radius_m`; queries go in chunks to bound memory."""
    chunk = chunk or max(1, _PAIRS_PER_CHUNK // max(len(db), 1))
    positives: list[np.ndarray] = []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        dist = dist_fn(q[:, None, :], db[None, :, :])  # chunk x D
        positives.extend(np.flatnonzero(row <= radius_m) for row in dist)
    return positives


def gps_positives(query_latlon, db_latlon, radius_m: float = GPS_THRESHOLD_M, chunk: int | None = None) -> list:
    """Database indices within `radius_m` metres (haversine) of each query. Inputs are (Q, 2) and (D, 2) lat/lon."""
    q, db = _points(query_latlon, "query_latlon"), _points(db_latlon, "db_latlon")
    return _radius_positives(_haversine_pairs, q, db, radius_m, chunk)


def metric_positives(query_xy, db_xy, radius_m: float = GPS_THRESHOLD_M, chunk: int | None = None) -> list:
    """Database indices within `radius_m` of each query in a metric frame (UTM easting/northing, local metres).

    The caller makes sure all points share one frame (for UTM: one zone)."""
    q, db = _points(query_xy, "query_xy"), _points(db_xy, "db_xy")
    return _radius_positives(_euclidean_pairs, q, db, radius_m, chunk)


def landmark_positives(query_ids: Sequence, db_ids: Sequence) -> list[np.ndarray | None]:
    """Database indices sharing a landmark with each query: the union over the query's landmarks.

    An entry (query or database) is one landmark id or a collection of them (list, tuple, set, array); None, NaN or
    an empty collection is no landmark. A query with no landmark is not a query: its entry is None."""
    by_id: dict = {}
    for index, ids in enumerate(db_ids):
        for ident in _landmark_set(ids):
            by_id.setdefault(ident, []).append(index)
    positives: list[np.ndarray | None] = []
    for ids in query_ids:
        wanted = _landmark_set(ids)
        hits = sorted({index for ident in wanted for index in by_id.get(ident, ())})
        positives.append(np.asarray(hits, dtype=np.int64) if wanted else None)
    return positives


def id_positives(query_positive_ids: Sequence, db_image_ids: Sequence[str]) -> list[np.ndarray | None]:
    """Database indices of each query's positive image ids (ids not in the database are skipped, so a database
    subset works). A None entry has no ground truth: not a query, its entry stays None."""
    index_of = {ident: index for index, ident in enumerate(db_image_ids)}
    positives: list[np.ndarray | None] = []
    for ids in query_positive_ids:
        hits = None if ids is None else sorted({index_of[i] for i in ids if i in index_of})
        positives.append(None if hits is None else np.asarray(hits, dtype=np.int64))
    return positives


METRIC_FRAMES = (("utm_east", "utm_north"), ("east_m", "north_m"))  # synthetic city (UTM), HoliCity (CAD frame)
MODES = ("gps", "landmark", "positives")


def manifest_positives(
    queries: pa.Table, database: pa.Table, mode: str | None = None, radius_m: float = GPS_THRESHOLD_M,
    columns: tuple[str, str] | None = None,
) -> list[np.ndarray | None]:
    """Positives of each query row among the database rows of two manifests (None: the row is not a query).

    mode None: "positives" when `queries` has a `positives` column, else "gps".
    mode "positives": the database rows whose `image_id` is in the query's `positives` list.
    mode "gps": within `radius_m` metres, measured between `columns` (("lat", "lon") by haversine, else a metric
    frame), by default as `gps_columns` says: in a metric frame both manifests have on every row, else by haversine
    on lat/lon; ValueError when neither holds every row's own position. An index passes the columns it chose over
    all its shards when it measures one shard.
    mode "landmark": a shared landmark, from `landmark_ids` (a list per row) or `landmark_id` (one per row).
    """
    if mode is None:
        mode = "positives" if "positives" in queries.column_names else "gps"
    if mode == "positives":
        if "positives" not in queries.column_names:
            raise ValueError(f"mode 'positives' needs a positives column in the queries; has {queries.column_names}")
        return id_positives(queries["positives"].to_pylist(), database["image_id"].to_pylist())
    if mode == "landmark":
        return landmark_positives(_landmarks(queries, "queries"), _landmarks(database, "database"))
    if mode != "gps":
        raise ValueError(f"unknown mode {mode!r}; known: {list(MODES)}")
    columns = columns or gps_columns(queries, database)
    points = [np.stack([t[c].to_numpy(zero_copy_only=False) for c in columns], axis=1) for t in (queries, database)]
    if columns == ("lat", "lon"):
        return gps_positives(*points, radius_m=radius_m)
    return metric_positives(*points, radius_m=radius_m)


def position_stats(table: pa.Table) -> dict:
    """What GPS mode needs to know of a table's positions, small and mergeable (an index keeps one per shard): rows,
    the metric frames every row has (METRIC_FRAMES as "east/north"), the UTM zones named (None: rows naming none),
    how many rows name a zone, how many have UTM coordinates and no zone, how many have no GPS (`has_gps` false)."""
    names = table.column_names
    frames = [f"{e}/{n}" for e, n in METRIC_FRAMES if all(c in names and table[c].null_count == 0 for c in (e, n))]
    zone = table["utm_zone"] if "utm_zone" in names else pa.nulls(table.num_rows, pa.int32())
    bare = 0
    if "utm_east" in names and "utm_north" in names:
        utm = pc.and_(pc.is_valid(table["utm_east"]), pc.is_valid(table["utm_north"]))
        bare = int(pc.sum(pc.and_(utm, pc.is_null(zone))).as_py() or 0)
    no_gps = int(pc.sum(pc.invert(table["has_gps"].fill_null(False))).as_py() or 0) if "has_gps" in names else 0
    zones = pc.unique(zone).to_pylist() if table.num_rows else []
    return {"rows": table.num_rows, "frames": frames, "zones": sorted(zones, key=str),
            "zone_named": int(pc.sum(pc.is_valid(zone)).as_py() or 0), "zone_bare": bare, "no_gps": no_gps}


def merge_stats(parts: Sequence[dict]) -> dict:
    """The position stats of the rows of several tables together."""
    frames = [f"{e}/{n}" for e, n in METRIC_FRAMES if all(f"{e}/{n}" in p["frames"] for p in parts if p["rows"])]
    return {"rows": sum(p["rows"] for p in parts), "frames": frames,
            "zones": sorted({z for p in parts for z in p["zones"]}, key=str),
            **{k: sum(p[k] for p in parts) for k in ("zone_named", "zone_bare", "no_gps")}}


def _stats(rows) -> dict:
    """Position stats of a table, a stats dict, or a list of stats dicts (an index's shards)."""
    if isinstance(rows, pa.Table):
        return position_stats(rows)
    return merge_stats(rows) if isinstance(rows, (list, tuple)) else rows


def metric_frame(queries, database) -> tuple[str, str] | None:
    """The (east, north) columns of the metric frame GPS mode measures in: the first of METRIC_FRAMES that every
    row of both has, for UTM with every row in one zone or every row in none (a dataset's own grid, such as
    Nordland's track); None: no frame holds them all. Each side is a table or its `position_stats` (or a list of
    them)."""
    q, d = _stats(queries), _stats(database)
    one_zone = len(set(q["zones"]) | set(d["zones"])) <= 1  # None, no zone, counts as one
    for east, north in METRIC_FRAMES:
        shared = f"{east}/{north}" in q["frames"] and f"{east}/{north}" in d["frames"]
        if shared and (east != "utm_east" or one_zone):
            return east, north
    return None


def gps_columns(queries, database) -> tuple[str, str]:
    """The columns GPS mode measures between: the metric frame both share, else ("lat", "lon").

    Without a shared frame, lat/lon must be every row's own position. ValueError in one line when they may not be:
    rows naming a UTM zone beside UTM rows naming none (the VPR format gives a zone-less row lat/lon only when its
    name has them), or rows whose `has_gps` is false (their lat/lon are placeholders, 0, 0). Each side is a table
    or its `position_stats` (or a list of them)."""
    q, d = _stats(queries), _stats(database)
    frame = metric_frame(q, d)
    if frame is not None:
        return frame
    problem = _mixed_zones(q, d) or _without_gps(q, d)
    if problem:
        raise ValueError(f"GPS mode: {problem}")
    return "lat", "lon"


def has_ground_truth(queries: pa.Table, mode: str, columns: tuple[str, str] | None = None) -> list[bool]:
    """Which rows are queries in `mode` (the others have no ground truth: no landmark, a null positives list)."""
    return [p is not None for p in manifest_positives(queries, queries.slice(0, 0), mode, columns=columns)]


def _landmarks(table: pa.Table, name: str) -> list:
    """Each row's landmark(s): the `landmark_ids` lists when the table has them, else the `landmark_id` values."""
    column = next((c for c in ("landmark_ids", "landmark_id") if c in table.column_names), None)
    if column is None:
        raise ValueError(f"mode 'landmark': the {name} have no landmark_ids or landmark_id column; "
                         f"has {table.column_names}")
    return table[column].to_pylist()


def _mixed_zones(q: dict, d: dict) -> str | None:
    """What is wrong when rows naming a UTM zone meet UTM rows naming none; None when they do not."""
    if not (q["zone_named"] + d["zone_named"] and q["zone_bare"] + d["zone_bare"]):
        return None
    zones = ", ".join(sorted(str(z) for z in set(q["zones"]) | set(d["zones"]) if z is not None))
    return (f"{q['zone_named']} query and {d['zone_named']} database row(s) name UTM zone(s) {zones} but "
            f"{q['zone_bare']} query and {d['zone_bare']} database row(s) have UTM coordinates and no zone: they "
            "share no metric frame (give every row its zone)")


def _without_gps(q: dict, d: dict) -> str | None:
    """What is wrong when rows without GPS (`has_gps` false) would be compared by lat/lon; None when none is."""
    if not (q["no_gps"] or d["no_gps"]):
        return None
    frames = " or ".join("/".join(c) for c in METRIC_FRAMES)
    return (f"{q['no_gps']} query and {d['no_gps']} database row(s) have no GPS (has_gps false) and the rows share "
            f"no metric frame ({frames} on every row): there is no position to measure them from")


def recall_key(n: int) -> str:
    """The name Recall@N goes by in summaries, metrics tables and sweeps: "recall@N"."""
    return f"recall@{n}"


def recall_ns(keys: Iterable[str]) -> list[int]:
    """The N of the "recall@N" names among `keys` (a summary's, a metrics row's), sorted."""
    return sorted(int(key.split("@", 1)[1]) for key in keys if key.startswith("recall@"))


def recall_at_n(
    predictions,
    positives: Sequence[np.ndarray | None],
    ns: Iterable[int] = DEFAULT_NS,
    exclude_no_positive: bool = False,
) -> dict[int, float]:
    """Recall@N (paper eq. (10)) for each N in `ns`.

    predictions: (Q, K) int database indices, best first (K >= max N; negative entries, e.g. faiss padding, never
    match). positives: per query, the database indices that count as right, or None for a row that is not a query
    (no ground truth), which is left out of M. Returns {N: fraction of queries with a positive among their first N
    predictions}. Queries without positives count as misses unless `exclude_no_positive`, which drops them from the
    denominator (0.0 if no query is left).
    """
    predictions = np.asarray(predictions)
    ns = sorted(set(int(n) for n in ns))
    if predictions.ndim != 2 or not np.issubdtype(predictions.dtype, np.integer):
        raise ValueError(f"predictions must be a 2-D integer array (queries x ranked indices), got {predictions.shape}")
    if len(positives) != len(predictions):
        raise ValueError(f"{len(predictions)} queries in predictions but {len(positives)} positive lists")
    if not ns or ns[0] < 1 or ns[-1] > predictions.shape[1]:
        raise ValueError(f"every N must be in [1, {predictions.shape[1]}] (the predictions per query), got {ns}")
    hits = np.zeros(predictions.shape, dtype=bool)
    for i, (row, pos) in enumerate(zip(predictions, positives, strict=True)):
        if pos is not None:
            hits[i] = np.isin(row, pos) & (row >= 0)
    first = [int(h.argmax()) + 1 if h.any() else None for h in hits]  # rank of the first right one
    return recall_from_ranks(first, [p is not None for p in positives],
                             [None if p is None else len(p) for p in positives], ns, exclude_no_positive)


def recall_from_ranks(first_ranks: Sequence[int | None], truth: Sequence[bool], positives: Sequence[int | None],
                      ns: Iterable[int] = DEFAULT_NS, exclude_no_positive: bool = False) -> dict[int, float]:
    """Recall@N from each row's 1-based rank of its first right prediction (None: none right in its top k), whether
    it is a query (has ground truth) and how many positives the database holds for it: the fraction of queries whose
    first right prediction is within N; queries without positives stay in M unless `exclude_no_positive` (0.0 if no
    query is left)."""
    keep = np.array([t and ((p or 0) > 0 or not exclude_no_positive) for t, p in zip(truth, positives, strict=True)],
                    dtype=bool)
    first = np.array([np.inf if r is None else r for r in first_ranks], dtype=np.float64)
    total = int(keep.sum())
    return {n: float((first[keep] <= n).sum() / total) if total else 0.0 for n in sorted(set(int(n) for n in ns))}


def _haversine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return haversine_m(a[..., 0], a[..., 1], b[..., 0], b[..., 1])


def _euclidean_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1])


def _points(values, name: str) -> np.ndarray:
    points = np.asarray(values, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2), got {points.shape}")
    return points


def _landmark_set(value) -> set:
    """The landmark ids of one entry: a scalar id or a collection of them; missing values (None, NaN) dropped."""
    values = value if isinstance(value, (list, tuple, set, frozenset, np.ndarray)) else [value]
    return {v for v in values if not (v is None or (isinstance(v, float) and np.isnan(v)))}
