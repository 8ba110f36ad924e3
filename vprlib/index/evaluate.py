"""Evaluating an index: Recall@N (paper eq. 10, vprlib.metrics) of a query maps table's rows against the images the
index holds, with per-query results, a summary and, on request, an HTML report (vprlib.index.report).

1. Before any work: the queries' maps must be of the kind the index was built from (their recorded map specs agree),
   and the retriever must be the one that built it (the sha256 of its checkpoint), each refused in one line.
2. The queries (the `query` split's ok rows by default) are embedded by that retriever on a Ray Data actor pool
   (vprlib.index.build.embed) and searched over every shard of the index (exact merge of the shards' top-k).
3. Ground truth is `vprlib.metrics.manifest_positives` between the query rows and the index's rows: GPS mode
   (within --radius-m, in a metric frame when both have one), landmark mode (--landmarks), or the positives-list
   mode when the query rows carry `positives` (GLDv2's retrieval protocol). A row with no ground truth is not a
   query (left out of M, as `recall_at_n` does); a query with no positive in the index stays in M.
4. `results.parquet` holds one row per embedded query row (its top-k ids, scores, distances in metres, which are
   correct, the rank of the first correct one); `summary.json` the recalls and settings; `report.html` the report.
"""

from __future__ import annotations

import datetime
import json
import posixpath
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vprlib.cluster import DEVICES, Need, absolute_path, check_gpus_per_process, connect
from vprlib.data.manifest import url_to_fs
from vprlib.index.search import Index, read_manifest
from vprlib.maps import MapSpecError, read_maps, read_spec, table_schema
from vprlib.metrics import GPS_THRESHOLD_M, haversine_m, manifest_positives, metric_frame, recall_at_n
from vprlib.spec import spec_mismatch

if TYPE_CHECKING:  # the retriever's module imports torch: only where an evaluation runs, not for --help
    from vprlib.index.embed import RetrieverRecord

RESULTS, SUMMARY, REPORT = "results.parquet", "summary.json", "report.html"
# Query columns read besides the maps: positions and ground truth for the metrics, the photo for the report.
QUERY_COLUMNS = ("lat", "lon", "has_gps", "utm_east", "utm_north", "utm_zone", "east_m", "north_m", "landmark_id",
                 "landmark_ids", "positives", "uri")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class EvaluateConfig:
    index: str = field(metadata=_help("the index folder (jobs/index.py output)"))
    queries: str = field(metadata=_help("the maps table of the query photos (same kind of maps as the index's)"))
    output: str = field(metadata=_help("folder for results.parquet, summary.json and report.html"))
    recall: str = field(default="1,5,10", metadata=_help("the N of Recall@N, comma-separated"))
    radius_m: float = field(default=GPS_THRESHOLD_M, metadata=_help(
        "GPS mode: a prediction within this many metres of the query is right (paper: 25)"))
    landmarks: bool = field(default=False, metadata=_help(
        "landmark mode: a prediction of the query's landmark (landmark_id or landmark_ids) is right"))
    query_split: str = field(default="query", metadata=_help("rows of --queries evaluated: this split, or all"))
    model: str = field(default="", metadata=_help(
        "the retriever checkpoint when it moved since indexing ('' = the path index.json records); same sha256"))
    report: bool = field(default=False, metadata=_help("also write report.html: sample queries, maps, predictions"))
    report_queries: int = field(default=20, metadata=_help("queries shown in the report (wrong ones first)"))
    report_top: int = field(default=3, metadata=_help("predictions shown per query in the report"))
    seed: int = field(default=0, metadata=_help("seed of the report's sample of queries"))
    batch_size: int = field(default=64, metadata=_help("maps per embedding batch"))
    actors: int = field(default=1, metadata=_help("embedding actors"))
    device: str = field(default="auto", metadata=_help("auto (cuda when the cluster has GPUs), cpu or cuda"))
    gpus_per_actor: float = field(default=1.0, metadata=_help("GPUs per embedding actor on cuda"))
    cpus_per_actor: float = field(default=1.0, metadata=_help("CPUs per embedding actor"))
    ray_address: str = field(default="", metadata=_help("Ray cluster address ('' = connect or start local)"))

    def __post_init__(self):
        parse_ns(self.recall)
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(DEVICES)}")
        if self.radius_m <= 0:
            raise ValueError(f"radius_m must be > 0, got {self.radius_m}")
        if min(self.report_queries, self.report_top, self.batch_size, self.actors) < 1:
            raise ValueError("report_queries, report_top, batch_size and actors must be >= 1")

    @property
    def ns(self) -> tuple[int, ...]:
        return parse_ns(self.recall)

    @property
    def k(self) -> int:
        """Predictions kept per query: enough for the largest N and the report."""
        return max(max(self.ns), self.report_top)


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
    queries, skipped = query_rows(config)
    mode = resolve_mode(config, queries)
    index = Index(config.index)
    warn_overlap(queries, index.rows)
    positives = ground_truth(config, queries, index.rows, mode)
    vectors = embed_queries(config, queries, record)
    scores, rows = index.search(vectors, config.k)
    frame = metric_frame(queries, index.rows)
    results = results_table(queries, index.rows, scores, rows, positives, frame)
    curve = recall_at_n(rows, positives, range(1, config.k + 1))
    summary = summarize(config, manifest, mode, distance_note(queries, frame), positives, curve, skipped, start)
    write_outputs(config.output, results, summary)
    print_summary(summary)
    if config.report:
        from vprlib.index.report import write_report

        path = write_report(config, summary, results, queries, index.rows, manifest["map_spec"])
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
    """The ok rows of the query split (or all) with the columns the metrics and report read, and how many rows of
    that split were left out because their maps failed."""
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
    say what is right in that mode."""
    if config.landmarks:
        if not {"landmark_id", "landmark_ids"} & set(queries.column_names):
            raise ValueError(f"--landmarks: --queries {config.queries} has no landmark_id or landmark_ids column")
        return "landmark"
    if "positives" in queries.column_names:
        return "positives"
    if "has_gps" in queries.column_names and not pc.any(queries["has_gps"]).as_py():
        raise ValueError(f"--queries {config.queries} has no GPS (has_gps false): use --landmarks")
    return "gps"


def warn_overlap(queries: pa.Table, database: pa.Table) -> None:
    """Say when query images are indexed too: each would find itself."""
    shared = int(pc.sum(pc.is_in(queries["image_id"], value_set=database["image_id"])).as_py() or 0)
    if shared:
        print(f"evaluate: warning: {shared} query image(s) are in the index too and will find themselves",
              flush=True)


def ground_truth(config: EvaluateConfig, queries: pa.Table, database: pa.Table, mode: str) -> list:
    """Each query row's positives among the index's rows (None: no ground truth); refused when no row has any."""
    positives = manifest_positives(queries, database, mode=mode, radius_m=config.radius_m)
    if all(p is None for p in positives):
        raise ValueError(f"--queries {config.queries}: no row of split {config.query_split!r} has ground truth in "
                         f"{mode} mode")
    return positives


def embed_queries(config: EvaluateConfig, queries: pa.Table, record: RetrieverRecord) -> np.ndarray:
    """Descriptors (Q, D) of the query rows, in their order, by the index's retriever on a Ray Data actor pool."""
    from vprlib.index.build import embed

    cluster = connect(config.ray_address)
    device = cluster.device(config.device)
    gpus = config.gpus_per_actor if device == "cuda" else 0.0
    check_gpus_per_process(device, gpus, "--gpus-per-actor")
    cluster.check(Need("embedding actors", config.actors, config.cpus_per_actor, gpus, "--actors",
                       "--cpus-per-actor", "--gpus-per-actor", spare_cpus=1))
    found = embed(absolute_path(config.queries), queries["image_id"], record, device, gpus, config.batch_size,
                  config.actors, config.cpus_per_actor)
    ids = queries["image_id"].to_pylist()
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValueError(f"--queries {config.queries}: {len(missing)} row(s) were not embedded, e.g. {missing[0]!r}")
    return np.stack([np.asarray(found[i], dtype=np.float32) for i in ids])


def _floats(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return table[column].to_numpy(zero_copy_only=False).astype(np.float64)


def distances_m(queries: pa.Table, database: pa.Table, rows: np.ndarray, frame: tuple[str, str] | None) -> np.ndarray:
    """Metres from each query to its predictions (Q, k): in the metric frame GPS mode uses, else haversine; NaN for
    padding and for queries without GPS (`has_gps` false, as GLDv2's)."""
    safe = np.maximum(rows, 0)
    if frame is None:
        q_lat, q_lon = _floats(queries, "lat"), _floats(queries, "lon")
        dist = haversine_m(q_lat[:, None], q_lon[:, None], _floats(database, "lat")[safe],
                           _floats(database, "lon")[safe])
    else:
        east, north = frame
        dist = np.hypot(_floats(queries, east)[:, None] - _floats(database, east)[safe],
                        _floats(queries, north)[:, None] - _floats(database, north)[safe])
    if "has_gps" in queries.column_names:
        dist[~np.asarray(queries["has_gps"].fill_null(False).to_pylist(), dtype=bool)] = np.nan
    return np.where(rows >= 0, dist, np.nan)


def results_table(queries: pa.Table, database: pa.Table, scores: np.ndarray, rows: np.ndarray, positives: list,
                  frame: tuple[str, str] | None) -> pa.Table:
    """One row per query row: image_id, lat, lon, top_ids, scores, distances_m, correct (null: no ground truth),
    first_correct_rank (1-based; null when none of the top k is right), positives (how many the index holds)."""
    db_ids = np.asarray(database["image_id"].to_pylist(), dtype=object)
    dist = distances_m(queries, database, rows, frame)
    top_ids, top_scores, top_dist, correct, first, counts = [], [], [], [], [], []
    for i, (row, pos) in enumerate(zip(rows, positives, strict=True)):
        valid = row >= 0
        top_ids.append(db_ids[row[valid]].tolist())
        top_scores.append(scores[i][valid].tolist())
        top_dist.append(dist[i][valid].tolist())
        hits = None if pos is None else np.isin(row[valid], pos)
        correct.append(None if hits is None else hits.tolist())
        first.append(int(np.argmax(hits)) + 1 if hits is not None and hits.any() else None)
        counts.append(None if pos is None else len(pos))
    return pa.table({
        "image_id": queries["image_id"], "lat": pa.array(_floats(queries, "lat")),
        "lon": pa.array(_floats(queries, "lon")),
        "top_ids": pa.array(top_ids, pa.list_(pa.string())), "scores": pa.array(top_scores, pa.list_(pa.float32())),
        "distances_m": pa.array(top_dist, pa.list_(pa.float64())), "correct": pa.array(correct, pa.list_(pa.bool_())),
        "first_correct_rank": pa.array(first, pa.int32()), "positives": pa.array(counts, pa.int32())})


def distance_note(queries: pa.Table, frame: tuple[str, str] | None) -> str:
    """How the distances were measured, or that they could not be (no GPS)."""
    if "has_gps" in queries.column_names and not pc.any(queries["has_gps"]).as_py():
        return "none: the queries have no GPS"
    return f"metric frame {frame[0]}/{frame[1]}" if frame else "haversine on lat/lon"


def summarize(config: EvaluateConfig, manifest: dict, mode: str, distances: str, positives: list, curve: dict,
              skipped: int, start: float) -> dict:
    """The figures and the settings that produced them."""
    queries = sum(p is not None for p in positives)
    return {
        **{f"recall@{n}": curve[n] for n in config.ns},
        "queries": queries, "rows": len(positives), "without_ground_truth": len(positives) - queries,
        "without_positive": sum(p is not None and len(p) == 0 for p in positives), "failed_maps": skipped,
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
    lines += [f"  {key:<10} {summary[key]:7.2%}" for key in summary if key.startswith("recall@")]
    print("\n".join(lines), flush=True)
