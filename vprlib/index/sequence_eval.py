"""Evaluating an index on query sequences (evaluate --sequences): sequence Recall@N, loose and strict.

The last L frames of each sequence, for L in --lengths, are located by each sequence method (vprlib.sequences) and
scored as Mereu et al. (2022) score them.

1. The queries are a maps table whose rows carry `sequence_id` and `frame_index` (vprlib.demo.city.walks; the VPR
   format's sequence grouping), checked against the index as `evaluate` checks single photos: the same kind of maps,
   the retriever that built the index.
2. Every frame is embedded by that retriever in this process and searched on the index (vprlib.index.search.Index):
   its top --k hits with their positions. The index stays as it is; a method only reads hits.
3. A sequence of L frames is answered by
   - `paths`: the training-free path matcher (`vprlib.sequences.match_paths`) over the frames' hits;
   - `mean`: the frames' descriptors averaged and normalised, searched as one (late fusion with a uniform
     kernel, no training);
   with L = 1 both are the last frame's own retrieval (the single-frame row).
4. Sequence Recall@N: right when one of the first N predicted places is within --radius-m of any frame of the
   sequence (`loose`) or of its last frame (`strict`), measured in the metric frame GPS mode chooses (UTM, a
   dataset's own grid; lat/lon projected on a local plane about the queries otherwise). A walk shorter than L is left
   out of that length's M, and the summary says how many were.
   `summary.json` holds the figures, `sequences.parquet` one row per sequence, length and method.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vprlib.cli import add_flags, help_text
from vprlib.geo import local_plane
from vprlib.index.evaluate import check_queries, parse_ns, retriever
from vprlib.index.search import Index, read_manifest
from vprlib.maps import decode_batch, read_maps, table_schema
from vprlib.metrics import GPS_THRESHOLD_M, gps_columns
from vprlib.sequences import (
    PROTOCOLS,
    SEQUENCE_COLUMNS,
    PathSearch,
    group_frames,
    local_similarity,
    match_paths,
)

METHODS = ("paths", "mean")  # the path matcher; the frames' mean descriptor
SEQUENCES, SUMMARY = "sequences.parquet", "summary.json"


@dataclass(frozen=True)
class SequenceEvalConfig:
    index: str = field(metadata=help_text("the index folder (jobs/index.py output)"))
    queries: str = field(metadata=help_text(
        "the maps table of the query frames, with sequence_id and frame_index columns (e.g. the city's walks)"))
    output: str = field(metadata=help_text("folder for sequences.parquet and summary.json"))
    lengths: str = field(default="1,3,5", metadata=help_text(
        "sequence lengths evaluated, comma-separated: the last L frames of each sequence (1 = single frame)"))
    methods: str = field(default="paths,mean", metadata=help_text(
        "sequence methods, comma-separated: paths (constant-velocity path matching), mean (mean descriptor)"))
    recall: str = field(default="1,5,10", metadata=help_text("the N of Recall@N, comma-separated"))
    radius_m: float = field(default=GPS_THRESHOLD_M, metadata=help_text(
        "a predicted place within this many metres of a frame (strict: of the last frame) is right"))
    k: int = field(default=50, metadata=help_text("hits per frame the path matcher reads"))
    speeds: str = field(default="0,1,2,3,4", metadata=help_text("path speeds tried, metres per frame"))
    directions: int = field(default=8, metadata=help_text("path directions tried, evenly spaced from north"))
    tolerance_m: float = field(default=7.5, metadata=help_text(
        "a frame's place is looked for within this many metres of where a path puts it"))
    query_split: str = field(default="query", metadata=help_text("rows of --queries evaluated: this split, or all"))
    model: str = field(default="", metadata=help_text(
        "the retriever checkpoint when it moved since indexing ('' = the path index.json records); same sha256"))
    batch_size: int = field(default=64, metadata=help_text("maps per embedding batch"))
    device: str = field(default="cpu", metadata=help_text("cpu or cuda: where the frames are embedded"))

    def __post_init__(self):
        parse_ns(self.recall)
        self.length_list  # noqa: B018 (checks --lengths)
        self.method_list  # noqa: B018
        self.search  # noqa: B018
        if self.radius_m <= 0:
            raise ValueError(f"radius_m must be > 0, got {self.radius_m}")
        if self.k < max(parse_ns(self.recall)):
            raise ValueError(f"k must be >= the largest N of --recall ({max(parse_ns(self.recall))}), got {self.k}")
        if self.device not in ("cpu", "cuda") or self.batch_size < 1:
            raise ValueError(f"device must be cpu or cuda and batch_size >= 1, got {self.device!r}, {self.batch_size}")

    @property
    def length_list(self) -> tuple[int, ...]:
        try:
            lengths = sorted({int(v) for v in self.lengths.split(",") if v.strip()})
        except ValueError:
            raise ValueError(f"lengths must be comma-separated integers such as 1,3,5, got {self.lengths!r}") from None
        if not lengths or lengths[0] < 1:
            raise ValueError(f"lengths must list integers >= 1, got {self.lengths!r}")
        return tuple(lengths)

    @property
    def method_list(self) -> tuple[str, ...]:
        methods = tuple(dict.fromkeys(m.strip() for m in self.methods.split(",") if m.strip()))
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"methods: unknown {unknown or self.methods!r}; known: {', '.join(METHODS)}")
        return methods

    @property
    def search(self) -> PathSearch:
        try:
            speeds = tuple(float(v) for v in self.speeds.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"speeds must be comma-separated metres per frame, got {self.speeds!r}") from None
        return PathSearch(speeds=speeds, directions=self.directions, tolerance_m=self.tolerance_m)


def run_sequence_evaluate(config: SequenceEvalConfig) -> dict:
    """Evaluate the index on the query sequences; write sequences.parquet and summary.json; return the summary."""
    start = time.perf_counter()
    manifest = read_manifest(config.index)
    check_queries(config.queries, manifest, config.index)
    record = retriever(config, manifest)
    record.check_photos(config.queries)
    rows = frame_rows(config)
    columns = gps_columns(rows, [s["positions"] for s in manifest["shards"].values()])
    vectors = embed_frames(config, record, rows)
    index = Index(config.index)
    hits = index.search(vectors, config.k)
    origin = _origin(rows, columns)
    frame_xy = _xy(rows.to_pydict(), columns, origin)
    groups = group_frames(rows["sequence_id"].to_pylist(), rows["frame_index"].to_pylist())
    table, figures = [], {}
    for method in config.method_list:
        for length in config.length_list:
            found = answer(config, method, length, groups, hits, vectors, index, columns, origin)
            chosen = found
            figures.setdefault(method, {})[str(length)] = score(config, chosen, groups, frame_xy, length)
            table += [{"method": method, "length": length, "sequence_id": seq, "top_ids": ids,
                       "first_right_loose": figures[method][str(length)]["first"]["loose"][i],
                       "first_right_strict": figures[method][str(length)]["first"]["strict"][i]}
                      for i, (seq, (ids, _)) in enumerate(chosen.items())]
            figures[method][str(length)].pop("first")
    summary = {"figures": figures, "sequences": len(groups), "frames": rows.num_rows,
               "frames_per_sequence": sorted({len(g) for g in groups.values()}), "radius_m": config.radius_m,
               "distances": f"metric frame {columns[0]}/{columns[1]}" if columns != ("lat", "lon")
               else "lat/lon on a local plane", "k": config.k, "search": {
                   "speeds": list(config.search.speeds), "directions": config.directions,
                   "tolerance_m": config.tolerance_m},
               "index": config.index, "index_rows": manifest["rows"], "queries_maps": config.queries,
               "model": {"path": manifest["model"]["path"], "sha256": manifest["model"]["sha256"]},
               "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "wall_s": time.perf_counter() - start}
    os.makedirs(config.output, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table), os.path.join(config.output, SEQUENCES), compression="zstd")
    with open(os.path.join(config.output, SUMMARY), "w") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True))
    print(format_summary(summary, parse_ns(config.recall)), flush=True)
    return summary


def frame_rows(config: SequenceEvalConfig) -> pa.Table:
    """The ok frames of the query split (or all) with their maps, sequence columns and positions."""
    names = set(table_schema(config.queries).names)
    missing = [c for c in SEQUENCE_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"--queries {config.queries} has no {' or '.join(missing)} column: it holds photos, not "
                         f"sequences (make walks with vprlib.demo.city.walks, or read a VPR folder with sequences)")
    wanted = None
    if config.query_split != "all":
        if "split" not in names:
            raise ValueError(f"--queries {config.queries} has no split column: use --query-split all")
        wanted = pc.field("split") == config.query_split
    keep = ["image_id", "status", "depth", "seg", "map_height", "map_width", *SEQUENCE_COLUMNS,
            *(c for c in ("lat", "lon", "has_gps", "utm_east", "utm_north", "utm_zone", "east_m", "north_m", "rgb")
              if c in names)]
    rows = read_maps(config.queries, columns=keep, filter=wanted)
    rows = rows.filter(pc.equal(rows["status"], "ok"))
    if rows.num_rows == 0:
        raise ValueError(f"--queries {config.queries}: no ok rows in split {config.query_split!r} to evaluate")
    return rows


def embed_frames(config: SequenceEvalConfig, record, rows: pa.Table) -> np.ndarray:
    """(N, D) unit descriptors of the frames, by the index's retriever, in this process."""
    from vprlib.index.embed import Embedder
    from vprlib.train.data import resize_maps

    embedder = Embedder(record.path, device=config.device)
    out = []
    for start in range(0, rows.num_rows, config.batch_size):
        part = rows.slice(start, config.batch_size)
        batch = {c: part[c].to_numpy(zero_copy_only=False) for c in ("depth", "seg", "map_height", "map_width")}
        if record.uses_rgb:
            batch["rgb"] = part["rgb"].to_numpy(zero_copy_only=False)
        maps = decode_batch(batch, ("rgb",) if record.uses_rgb else ())
        out.append(embedder(resize_maps(maps, record.input_side))["vector"])
    return np.concatenate(out).astype(np.float32)


def answer(config, method: str, length: int, groups: dict, hits, vectors: np.ndarray, index: Index, columns,
           origin) -> dict:
    """{sequence id: (predicted image ids, (k, 2) predicted positions)} for the sequences of at least `length`
    frames, from their last `length` frames."""
    ns_max = max(parse_ns(config.recall))
    found = {}
    if method == "mean" and length > 1:
        chosen = [seq for seq, rows in groups.items() if len(rows) >= length]
        fused = np.stack([vectors[groups[seq][-length:]].mean(0) for seq in chosen])
        fused /= np.maximum(np.linalg.norm(fused, axis=1, keepdims=True), 1e-12)
        merged = index.search(fused.astype(np.float32), ns_max)
        for i, seq in enumerate(chosen):
            found[seq] = _ranked(merged, i, np.arange(ns_max), columns, origin)
        return found
    for seq, rows in groups.items():
        if len(rows) < length:
            continue
        rows = rows[-length:]
        if length == 1:
            found[seq] = _ranked(hits, rows[0], np.arange(ns_max), columns, origin)
            continue
        ids, dense, floor = local_similarity(hits.ids[rows], hits.scores[rows])
        where = _positions_of(hits, rows, ids, columns, origin)
        match = match_paths(dense, where, config.search, floor=floor)
        order = match.order[:ns_max]
        found[seq] = (ids[order].tolist(), where[order])
    return found


def _ranked(hits, row: int, order: np.ndarray, columns, origin) -> tuple[list, np.ndarray]:
    ids = hits.ids[row][order]
    values = {c: hits.columns[c][row][order] for c in columns}
    return ids.tolist(), _xy(values, columns, origin)


def _positions_of(hits, rows: list[int], ids: np.ndarray, columns, origin) -> np.ndarray:
    """(D, 2) metric positions of the items `local_similarity` listed, read from the frames' hits."""
    flat_ids = hits.ids[rows].ravel()
    keep = flat_ids != None  # noqa: E711
    values = {c: hits.columns[c][rows].ravel()[keep] for c in columns}
    xy = _xy(values, columns, origin)
    position = dict(zip(flat_ids[keep].astype(str).tolist(), map(tuple, xy), strict=True))
    return np.array([position[i] for i in ids.tolist()], np.float64).reshape(-1, 2)


def _origin(rows: pa.Table, columns) -> tuple[float, float] | None:
    if columns != ("lat", "lon"):
        return None
    return float(pc.mean(rows["lat"]).as_py()), float(pc.mean(rows["lon"]).as_py())


def _xy(values: dict, columns, origin) -> np.ndarray:
    """(n, 2) metres: the metric frame's columns, or lat/lon on the tangent plane at `origin`; NaN where missing."""
    east = np.array([np.nan if v is None else v for v in values[columns[0]]], np.float64)
    north = np.array([np.nan if v is None else v for v in values[columns[1]]], np.float64)
    return np.stack([east, north], axis=1) if origin is None else local_plane(east, north, origin)


def score(config: SequenceEvalConfig, found: dict, groups: dict, frame_xy: np.ndarray, length: int) -> dict:
    """Sequence Recall@N loose and strict of the answered sequences, with each one's first right rank."""
    from vprlib.sequences import sequence_recall

    ns = parse_ns(config.recall)
    seqs = list(found)
    out = {"sequences": len(seqs), "left_out": len(groups) - len(seqs), "first": {}}
    if not seqs:
        return {**out, **{p: {} for p in PROTOCOLS}}
    k = max(ns)
    pred = np.full((len(seqs), k, 2), np.nan)
    for i, seq in enumerate(seqs):
        xy = found[seq][1][:k]
        pred[i, : len(xy)] = xy
    frames = np.stack([frame_xy[groups[seq][-length:]] for seq in seqs])
    for protocol in PROTOCOLS:
        recall, first = sequence_recall(pred, frames, ns, config.radius_m, protocol)
        out[protocol] = {f"recall@{n}": recall[n] for n in ns}
        out["first"][protocol] = [int(f) or None for f in first]
    return out


def format_summary(summary: dict, ns) -> str:
    """The figures as one table: method, frames, loose and strict Recall@N."""
    head = f"{'method':<8}{'frames':>7}{'sequences':>10}" + "".join(
        f"{p[:6] + '@' + str(n):>11}" for p in PROTOCOLS for n in ns)
    lines = [f"evaluate --sequences: {summary['sequences']} sequences ({summary['frames']} frames) against "
             f"{summary['index_rows']} indexed images, right within {summary['radius_m']:g} m (loose: of any frame, "
             f"strict: of the last); {summary['wall_s']:.1f} s", head]
    for method, by_length in summary["figures"].items():
        for length, fig in by_length.items():
            lines.append(f"{method:<8}{length:>7}{fig['sequences']:>10}" + "".join(
                f"{fig[p].get(f'recall@{n}', float('nan')):>11.1%}" for p in PROTOCOLS for n in ns))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`jobs/evaluate.py --sequences ...`: the flags of SequenceEvalConfig."""
    from vprlib.cli import OneLineParser

    parser = OneLineParser(prog="evaluate.py --sequences", description=__doc__.split("\n")[0])
    parser.add_argument("--sequences", action="store_true", help=argparse.SUPPRESS)
    add_flags(parser, SequenceEvalConfig)
    args = vars(parser.parse_args(argv))
    args.pop("sequences")
    try:
        config = SequenceEvalConfig(**args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run_sequence_evaluate(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0
