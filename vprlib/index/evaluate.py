"""Evaluating an index: Recall@N (paper eq. 10, vprlib.metrics) of a query maps table's rows against the images the
index holds, with per-query results, a summary and, on request, an HTML report (vprlib.index.report).

1. Before any work: the queries' maps must be of the kind the index was built from (their recorded map specs agree),
   and the retriever must be the one that built it (the sha256 of its checkpoint), each refused in one line; in GPS
   mode the query rows and the index's rows (as its manifest describes each shard's) must share a frame to measure
   in (vprlib.metrics.gps_columns).
2. The queries' maps stream through Ray Data (the `query` split's ok rows by default): embedded by that retriever on
   an actor pool, then searched on the index's shards, held by Ray actors (vprlib.index.search.SearchPool: exact
   merge of the shards' top-k), which also find each query's positives among their rows; with --rerank K (default
   10) the first K candidates are re-ordered by how well their maps agree with the query's (vprlib.index.rerank:
   actors that read only the candidates' maps parts). The driver holds the query rows' metadata and the results,
   never a descriptor, a map or the index's rows.
3. Ground truth is `vprlib.metrics.manifest_positives` between the query rows and the index's rows: GPS mode
   (within --radius-m, in a metric frame when every row has one, which needs no lat/lon: Nordland), landmark mode
   (--landmarks), or the positives-list mode when the query rows carry `positives` (GLDv2's retrieval protocol).
   A row with no ground truth is not a query (left out of M); a query with no positive in the index stays in M as a
   miss, as the VPR community's evaluation counts it, unless --exclude-no-positive.
4. `results.parquet` holds one row per embedded query row (its top-k ids, scores, distances in metres, which are
   correct, the rank of the first correct one, and before re-ranking, where the hits are); `summary.json` the
   recalls and settings, the search's own recalls and what the re-ranking cost per query;
   `report.html` the report.
"""

from __future__ import annotations

import datetime
import json
import posixpath
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vprlib.cli import help_text
from vprlib.cluster import absolute_path, connect, io_task_args
from vprlib.index.embed import EmbeddingOptions, RetrieverRecord
from vprlib.index.rerank import DEFAULT_K, database_maps
from vprlib.index.search import SearchPool, read_manifest
from vprlib.maps import MapSpecError, maps_dataset, read_maps, read_spec, table_schema
from vprlib.metrics import (
    GPS_THRESHOLD_M,
    gps_columns,
    has_ground_truth,
    haversine_m,
    metric_frame,
    recall_from_ranks,
    recall_key,
    recall_ns,
)
from vprlib.spec import spec_mismatch
from vprlib.storage import url_to_fs

RESULTS, SUMMARY = "results.parquet", "summary.json"
TIMING = ("_search_ms", "_rerank_ms")  # per-query milliseconds the scoring step spent searching and re-ranking
# Query columns read besides the maps: positions and ground truth for the metrics, the photo for the report.
QUERY_COLUMNS = ("lat", "lon", "has_gps", "utm_east", "utm_north", "utm_zone", "east_m", "north_m", "landmark_id",
                 "landmark_ids", "positives", "uri")



@dataclass(frozen=True)
class EvaluateConfig(EmbeddingOptions):
    index: str = field(metadata=help_text("the index folder (jobs/index.py output)"))
    queries: str = field(metadata=help_text("the maps table of the query photos (same kind of maps as the index's)"))
    output: str = field(metadata=help_text("folder for results.parquet, summary.json and report.html"))
    recall: str = field(default="1,5,10", metadata=help_text("the N of Recall@N, comma-separated"))
    radius_m: float = field(default=GPS_THRESHOLD_M, metadata=help_text(
        "GPS mode: a prediction within this many metres of the query is right (paper: 25)"))
    landmarks: bool = field(default=False, metadata=help_text(
        "landmark mode: a prediction of the query's landmark (landmark_id or landmark_ids) is right"))
    exclude_no_positive: bool = field(default=False, metadata=help_text(
        "leave queries with no positive in the index (none within --radius-m, none of their landmark) out of "
        "Recall@N's denominator; off, they count as misses, as the VPR community's evaluation does"))
    query_split: str = field(default="query", metadata=help_text("rows of --queries evaluated: this split, or all"))
    model: str = field(default="", metadata=help_text(
        "the retriever checkpoint when it moved since indexing ('' = the path index.json records); same sha256"))
    report: bool = field(default=False, metadata=help_text("also write report.html: sample queries, maps, predictions"))
    report_queries: int = field(default=20, metadata=help_text("queries shown in the report (wrong ones first)"))
    report_top: int = field(default=3, metadata=help_text("predictions shown per query in the report"))
    seed: int = field(default=0, metadata=help_text("seed of the report's sample of queries"))
    search_actors: int = field(default=1, metadata=help_text("actors holding the index's shards (each a share)"))
    search_cpus: float = field(default=0.0, metadata=help_text(
        "CPUs reserved per search actor (0: it searches while the step that asked it waits, on the CPU that step "
        "frees)"))
    rerank: int = field(default=DEFAULT_K, metadata=help_text(
        "re-rank each query's first K candidates by how well their maps agree with the query's (vprlib.index.rerank; "
        "0 = off): only their order changes"))
    database_maps: str = field(default="", metadata=help_text(
        "the maps table the index was built from, read by the re-ranking ('' = the one index.json records)"))
    ray_address: str = field(default="", metadata=help_text("Ray cluster address ('' = connect or start local)"))

    def __post_init__(self):
        super().__post_init__()
        parse_ns(self.recall)
        if self.rerank < 0:
            raise ValueError(f"rerank must be >= 0 (0 = off), got {self.rerank}")
        if self.radius_m <= 0:
            raise ValueError(f"radius_m must be > 0, got {self.radius_m}")
        if min(self.report_queries, self.report_top, self.search_actors) < 1:
            raise ValueError("report_queries, report_top and search_actors must be >= 1")
        if self.search_cpus < 0:
            raise ValueError(f"search_cpus must be >= 0, got {self.search_cpus}")

    @property
    def ns(self) -> tuple[int, ...]:
        return parse_ns(self.recall)

    @property
    def k(self) -> int:
        """Predictions kept per query: enough for the largest N and the report."""
        return max(max(self.ns), self.report_top)

    @property
    def depth(self) -> int:
        """Candidates searched per query: the predictions kept, or the re-ranked ones when more."""
        return max(self.k, self.rerank)


def parse_ns(recall: str) -> tuple[int, ...]:
    """The N of Recall@N from "1,5,10", sorted; ValueError in one line otherwise."""
    try:
        ns = sorted({int(n) for n in recall.split(",") if n.strip()})
    except ValueError:
        raise ValueError(f"recall must be comma-separated integers such as 1,5,10, got {recall!r}") from None
    if not ns or ns[0] < 1:
        raise ValueError(f"recall must list integers >= 1, got {recall!r}")
    return tuple(ns)


def run_evaluate(config: EvaluateConfig) -> dict:
    """Evaluate the index on the queries; write results, summary (and report); return the summary."""
    start = time.perf_counter()
    manifest = read_manifest(config.index)
    check_queries(config.queries, manifest, config.index)
    record = retriever(config, manifest)
    if config.rerank:
        database_maps(manifest, config.database_maps)
    record.check_photos(config.queries)
    queries, skipped = query_rows(config)
    mode = resolve_mode(config, queries)
    columns = gps_frame(config, queries, manifest) if mode == "gps" else None
    truth = ground_truth_rows(config, queries, mode, columns)
    results = score_queries(config, record, manifest, queries, mode, columns)
    costs = {c: float(pc.sum(results[c]).as_py() or 0.0) / max(results.num_rows, 1) for c in TIMING}
    results = results.drop_columns(list(TIMING))
    warn_overlap(results)
    curve, searched = (recall_from_ranks(results[c].to_pylist(), truth, results["positives"].to_pylist(),
                                         range(1, config.k + 1), config.exclude_no_positive)
                       for c in ("first_correct_rank", "search_first_correct_rank"))
    summary = summarize(config, manifest, mode, distance_note(queries, columns), results, truth, curve, skipped,
                        start)
    summary["rerank"] = {"k": config.rerank, "ms_per_query": costs["_rerank_ms"],
                         "search_ms_per_query": costs["_search_ms"],
                         "search_only": {recall_key(n): searched[n] for n in config.ns}}
    write_outputs(config.output, results, summary)
    print_summary(summary)
    if config.report:
        from vprlib.index.report import write_report

        path = write_report(summary, results, queries, predicted_rows(results), manifest["map_spec"],
                            config.report_queries, config.report_top, config.seed)
        print(f"evaluate: report {path}", flush=True)
    return summary


def check_queries(queries: str, manifest: dict, index: str) -> None:
    """Refuse query maps of another kind than the index's, in one line naming the differences."""
    diff = spec_mismatch(manifest["map_spec"], read_spec(queries))
    if diff:
        raise MapSpecError(f"--queries {queries} holds other maps than the index {index} was built from ({diff})")


def retriever(config: EvaluateConfig, manifest: dict) -> RetrieverRecord:
    """The record of the retriever that built the index (its recorded path, or --model), checked by its sha256."""
    from vprlib.index.embed import ModelError, retriever_record

    path = absolute_path(config.model or manifest["model"]["path"])
    record = retriever_record(path)
    if record.sha256 != manifest["model"]["sha256"]:
        raise ModelError(f"the retriever changed since the index was built: {path} has sha256 {record.sha256[:12]}, "
                         f"the index {config.index} was built by {manifest['model']['sha256'][:12]}; reindex or "
                         f"pass the original checkpoint with --model")
    return record


def query_rows(config: EvaluateConfig) -> tuple[pa.Table, int]:
    """The ok rows of the query split (or all) with the columns the metrics and report read (no maps: those stream
    through the pipeline), and how many rows of that split were left out because their maps failed."""
    names = set(table_schema(config.queries).names)
    columns = ["image_id", "status", *(c for c in QUERY_COLUMNS if c in names)]
    wanted = None
    if config.query_split != "all":
        if "split" not in names:
            raise ValueError(f"--queries {config.queries} has no split column: use --query-split all")
        wanted = pc.field("split") == config.query_split
    rows = read_maps(config.queries, columns=columns, filter=wanted)
    ok = rows.filter(pc.equal(rows["status"], "ok")).drop_columns(["status"])
    if ok.num_rows == 0:
        raise ValueError(f"--queries {config.queries}: no ok rows in split {config.query_split!r} to evaluate")
    return ok, rows.num_rows - ok.num_rows


def resolve_mode(config: EvaluateConfig, queries: pa.Table) -> str:
    """landmark (--landmarks), positives (the query rows carry `positives`) or gps; refused when the rows cannot
    say what is right in that mode (gps: no GPS and no metric frame of their own)."""
    if config.landmarks:
        if not {"landmark_id", "landmark_ids"} & set(queries.column_names):
            raise ValueError(f"--landmarks: --queries {config.queries} has no landmark_id or landmark_ids column")
        return "landmark"
    if "positives" in queries.column_names:
        return "positives"
    if ("has_gps" in queries.column_names and not pc.any(queries["has_gps"]).as_py()
            and metric_frame(queries, queries) is None):
        raise ValueError(f"--queries {config.queries} has no GPS (has_gps false) and no metric frame "
                         f"(utm_east/utm_north, east_m/north_m): use --landmarks")
    return "gps"


def gps_frame(config: EvaluateConfig, queries: pa.Table, manifest: dict) -> tuple[str, str]:
    """The columns GPS mode measures between (vprlib.metrics.gps_columns), from the queries and what the index's
    manifest says of each shard's positions; one line when the rows share no frame."""
    try:
        return gps_columns(queries, [s["positions"] for s in manifest["shards"].values()])
    except ValueError as exc:
        raise ValueError(f"--queries {config.queries} against the index {config.index}: {exc}") from None


def ground_truth_rows(config: EvaluateConfig, queries: pa.Table, mode: str, columns) -> list[bool]:
    """Which query rows have ground truth in `mode` (the others are not queries); refused when none has."""
    truth = has_ground_truth(queries, mode, columns)
    if not any(truth):
        raise ValueError(f"--queries {config.queries}: no row of split {config.query_split!r} has ground truth in "
                         f"{mode} mode")
    return truth


def score_queries(config: EvaluateConfig, record: RetrieverRecord, manifest: dict, queries: pa.Table, mode: str,
                  columns) -> pa.Table:
    """The query rows' maps streamed through Ray Data: embedded by the index's retriever on an actor pool, searched
    on the shards' actors (vprlib.index.search.SearchPool), scored against their positives there; one results row
    per query row, in the order of `queries`. Only the results come back to the driver."""
    import ray
    from ray.data import ActorPoolStrategy

    from vprlib.index.embed import Embedder
    from vprlib.train.data import DATA_TASK_CPUS

    cluster = connect(config.ray_address)
    device, gpus = config.place(cluster, spare_cpus=config.search_actors * config.search_cpus + DATA_TASK_CPUS)
    pool = SearchPool(config.index, config.search_actors, config.search_cpus, manifest)
    reranker = None
    if config.rerank:
        from vprlib.index.rerank import RerankPool

        reranker = RerankPool(config.index, config.search_actors, config.search_cpus, manifest,
                              config.database_maps)
    columns_kept = ("rgb",) if record.uses_rgb else ()
    ds = maps_dataset(absolute_path(config.queries), config.query_split if config.query_split != "all" else None,
                      columns=("image_id", *columns_kept), num_cpus=DATA_TASK_CPUS)
    ds = ds.map_batches(prepare_maps, fn_kwargs={"side": record.input_side, "rerank": bool(config.rerank)},
                        num_cpus=DATA_TASK_CPUS)
    ds = ds.map_batches(Embedder, fn_constructor_kwargs={"checkpoint": record.path, "device": device},
                        batch_size=config.batch_size, compute=ActorPoolStrategy(size=config.actors),
                        num_cpus=config.cpus_per_actor, num_gpus=gpus, **io_task_args())
    scorer = QueryScorer(pool, ray.put(queries), config, mode, columns, reranker)
    ds = ds.map_batches(scorer, batch_format="numpy", num_cpus=DATA_TASK_CPUS, **io_task_args())
    results = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    positions = pc.index_in(queries["image_id"], value_set=results["image_id"])
    if positions.null_count:
        missing = queries["image_id"].filter(pc.is_null(positions))
        raise ValueError(f"--queries {config.queries}: {len(missing)} row(s) were not embedded, e.g. "
                         f"{missing[0].as_py()!r}")
    return results.take(positions)


def prepare_maps(batch: dict, side: int, rerank: bool) -> dict:
    """A query batch for the retriever: its maps resized to the retriever's side and, for the re-ranking, its label
    map at the maps' own side cut to the re-ranking's thumbnail (`rerank_seg`, which the embedder passes on)."""
    from vprlib.train.data import resize_maps

    thumbs = {}
    if rerank:
        from vprlib.index.rerank import thumbnails

        thumbs["rerank_seg"] = thumbnails(batch["seg"])
    return {**resize_maps(batch, side), **thumbs}


class QueryScorer:
    """A Ray Data step: a batch of query descriptors searched on the index's actors, the first `config.rerank`
    candidates re-ordered by their maps (vprlib.index.rerank.RerankPool), each query's positives found there, scored
    (vprlib.metrics) into results rows, with the milliseconds per query the search and the re-ranking took (TIMING).
    `queries` (an object ref) holds the query rows' metadata."""

    def __init__(self, pool, queries, config: EvaluateConfig, mode: str, columns, reranker=None):
        self.pool, self.queries, self.k, self.depth, self.rerank = pool, queries, config.k, config.depth, config.rerank
        self.mode, self.radius_m, self.columns, self.reranker = mode, config.radius_m, columns, reranker

    def __call__(self, batch: dict) -> pa.Table:
        import ray

        every = ray.get(self.queries)
        rows = every.take(pc.index_in(pa.array(batch["image_id"].tolist(), pa.string()), value_set=every["image_id"]))
        start = time.perf_counter()
        hits = self.pool.search(np.asarray(batch["vector"], dtype=np.float32), self.depth)
        searched = time.perf_counter()
        found, done = hits, searched
        if self.reranker is not None:
            found, _ = self.reranker(hits, batch["rerank_seg"], self.rerank)
            done = time.perf_counter()
        truth = has_ground_truth(rows, self.mode, self.columns)
        matches = self.pool.positives(rows, self.mode, self.radius_m, self.columns)
        positives = [set(ids or ()) if t else None for ids, t in zip(matches, truth, strict=True)]
        held = self.pool.holds(rows["image_id"].to_pylist())
        keep = np.tile(np.arange(self.k), (len(rows), 1))
        table = results_table(rows, found.take(keep), positives, held, self.columns)
        before = [first_correct(ids, pos) for ids, pos in zip(hits.ids[:, : self.k], positives, strict=True)]
        n = max(len(rows), 1)
        return (table.append_column("search_first_correct_rank", pa.array(before, pa.int32()))
                .append_column("_search_ms", pa.array(np.full(len(rows), (searched - start) * 1e3 / n)))
                .append_column("_rerank_ms", pa.array(np.full(len(rows), (done - searched) * 1e3 / n))))


def first_correct(ids, positives: set | None) -> int | None:
    """The 1-based rank of the first of `ids` (best first; None pads) in `positives`; None when none is."""
    if not positives:
        return None
    return next((r for r, ident in enumerate(ids, start=1) if ident is not None and ident in positives), None)


def warn_overlap(results: pa.Table) -> None:
    """Say when query images are indexed too: each would find itself."""
    shared = int(pc.sum(results["indexed"]).as_py() or 0)
    if shared:
        print(f"evaluate: warning: {shared} query image(s) are in the index too and will find themselves",
              flush=True)


def _floats(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return table[column].to_numpy(zero_copy_only=False).astype(np.float64)


def _hit_floats(hits, column: str) -> np.ndarray:
    values = hits.columns.get(column)
    if values is None:
        return np.full(hits.ids.shape, np.nan)
    return np.where(values == None, np.nan, values).astype(np.float64)  # noqa: E711


def distances_m(queries: pa.Table, hits, columns: tuple[str, str] | None) -> np.ndarray:
    """Metres from each query to its hits (Q, k): between `columns` (a metric frame, or lat/lon by haversine; None
    outside GPS mode: lat/lon where the rows have GPS); NaN for padding and where a query has no position."""
    east, north = columns or ("lat", "lon")
    q_east, q_north = _floats(queries, east)[:, None], _floats(queries, north)[:, None]
    h_east, h_north = _hit_floats(hits, east), _hit_floats(hits, north)
    if (east, north) == ("lat", "lon"):
        dist = haversine_m(q_east, q_north, h_east, h_north)
        if "has_gps" in queries.column_names:
            dist[~np.asarray(queries["has_gps"].fill_null(False).to_pylist(), dtype=bool)] = np.nan
    else:
        dist = np.hypot(q_east - h_east, q_north - h_north)
    return np.where(hits.ids != None, dist, np.nan)  # noqa: E711


def results_table(queries: pa.Table, hits, positives: list, held: list[bool], columns) -> pa.Table:
    """One row per query row: image_id, lat, lon, top_ids, scores, distances_m, correct (null: no ground truth),
    first_correct_rank (1-based; null when none of the top k is right), positives (how many the index holds),
    indexed (the query image is in the index too), and the hits' uri, lat and lon (for the report)."""
    dist = distances_m(queries, hits, columns)
    top_ids, top_scores, top_dist, correct, first, counts = [], [], [], [], [], []
    for i, pos in enumerate(positives):
        valid = hits.ids[i] != None  # noqa: E711
        ids = hits.ids[i][valid].tolist()
        top_ids.append(ids)
        top_scores.append(hits.scores[i][valid].tolist())
        top_dist.append(dist[i][valid].tolist())
        right = None if pos is None else [j in pos for j in ids]
        correct.append(right)
        first.append(right.index(True) + 1 if right and any(right) else None)
        counts.append(None if pos is None else len(pos))
    listed = lambda column, kind: pa.array([  # noqa: E731
        [None if v is None else v for v in hits.columns[column][i][hits.ids[i] != None]] if column in hits.columns  # noqa: E711
        else [None] * len(top_ids[i]) for i in range(len(top_ids))], pa.list_(kind))
    return pa.table({
        "image_id": queries["image_id"], "lat": pa.array(_floats(queries, "lat")),
        "lon": pa.array(_floats(queries, "lon")),
        "top_ids": pa.array(top_ids, pa.list_(pa.string())), "scores": pa.array(top_scores, pa.list_(pa.float32())),
        "distances_m": pa.array(top_dist, pa.list_(pa.float64())), "correct": pa.array(correct, pa.list_(pa.bool_())),
        "first_correct_rank": pa.array(first, pa.int32()), "positives": pa.array(counts, pa.int32()),
        "indexed": pa.array(held, pa.bool_()), "top_uris": listed("uri", pa.string()),
        "top_lat": listed("lat", pa.float64()), "top_lon": listed("lon", pa.float64())})


def predicted_rows(results: pa.Table) -> pa.Table:
    """The indexed rows the results name (image_id, uri, lat, lon), once each: what the report shows of them."""
    flat = pa.table({name: pc.list_flatten(results[column]) for name, column in (
        ("image_id", "top_ids"), ("uri", "top_uris"), ("lat", "top_lat"), ("lon", "top_lon"))})
    _, first = np.unique(np.asarray(flat["image_id"].to_pylist(), dtype=object).astype(str), return_index=True)
    return flat.take(pa.array(np.sort(first)))


def distance_note(queries: pa.Table, columns: tuple[str, str] | None) -> str:
    """How the distances were measured, or that they could not be (no metric frame, no GPS)."""
    if columns and columns != ("lat", "lon"):
        return f"metric frame {columns[0]}/{columns[1]}"
    if "has_gps" in queries.column_names and not pc.any(queries["has_gps"]).as_py():
        return "none: the queries have no GPS"
    return "haversine on lat/lon"


def summarize(config: EvaluateConfig, manifest: dict, mode: str, distances: str, results: pa.Table,
              truth: list[bool], curve: dict, skipped: int, start: float) -> dict:
    """The figures and the settings that produced them; `scored_queries` is M, what Recall@N divides by."""
    queries = sum(truth)
    without_positive = sum(c == 0 for c in results["positives"].to_pylist())
    return {
        **{recall_key(n): curve[n] for n in config.ns},
        "queries": queries, "rows": len(truth), "without_ground_truth": len(truth) - queries,
        "without_positive": without_positive, "exclude_no_positive": config.exclude_no_positive,
        "scored_queries": queries - without_positive if config.exclude_no_positive else queries, "failed_maps": skipped,
        "mode": mode, "radius_m": config.radius_m if mode == "gps" else None,
        "distances": distances,
        "recall_curve": [curve[n] for n in sorted(curve)], "k": config.k, "index": config.index,
        "index_rows": manifest["rows"], "queries_maps": config.queries, "query_split": config.query_split,
        "model": {"path": manifest["model"]["path"], "sha256": manifest["model"]["sha256"],
                  "family": manifest["model"]["family"]},
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - start, "output": config.output}


def write_outputs(output: str, results: pa.Table, summary: dict) -> None:
    fs, root = url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, RESULTS), "wb") as f:
        pq.write_table(results, f, compression="zstd")
    with fs.open(posixpath.join(root, SUMMARY), "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True))


def print_summary(summary: dict) -> None:
    """The summary as a small table on stdout."""
    setting = f"within {summary['radius_m']:g} m" if summary["mode"] == "gps" else "by " + summary["mode"]
    lines = [f"evaluate: {summary['queries']} queries ({summary['query_split']}) against {summary['index_rows']} "
             f"indexed images, right {setting}; {summary['wall_s']:.1f} s"]
    fate = ("left out of Recall@N (--exclude-no-positive)" if summary["exclude_no_positive"] else
            "counted as misses (--exclude-no-positive leaves them out)")
    lines.append(f"  {summary['without_positive']} of the {summary['queries']} queries have no positive in the index "
                 f"({setting}): {fate}")
    rerank = summary["rerank"]
    lines += [f"  {key:<10} {summary[key]:7.2%}" + (f"   (search alone {rerank['search_only'][key]:7.2%})"
                                                    if rerank["k"] else "")
              for key in map(recall_key, recall_ns(summary))]
    if rerank["k"]:
        lines.append(f"  re-ranked the first {rerank['k']} by their maps: {rerank['ms_per_query']:.2f} ms per query "
                     f"beside the search's {rerank['search_ms_per_query']:.2f} ms")
    print("\n".join(lines), flush=True)
