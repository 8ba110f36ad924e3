"""The index at city scale, in one run: faiss against numpy, IVF-PQ with exact re-ranking against flat search, and the
index job on a synthetic city of a million maps (a full build, a reindex with nothing, 1% and 10% changed), with the
peak memory of the driver and of one worker. Prints a RESULT line per figure.

    python benchmarks/index_speed.py                                   # a million vectors, cities of 100k and 1M
    python benchmarks/index_speed.py --vectors 200000 --cities 20000   # quicker

Search figures use synthetic place descriptors (benchmarks/ivfpq_study.py: places of ~20 views on a subspace), the
queries new views of database places, so exact search has a right answer and place Recall@1 means something. The job
figures use a maps table of `--side`-pixel ground-truth maps (random depth and labels: what the descriptors say does
not matter there, only how much work each step does), 128 rows per part file as extraction writes them, each part a
stretch of one street (rows in capture order), and a CosPlace ResNet-18 with 512-d descriptors. A reindex changes
whole part files, in place: a contiguous block of parts (a district captured again).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time

import numpy as np
import psutil

PART_ROWS = 128  # rows per maps part, extraction's default
SPACING_M = 10.0  # metres between capture points; 8 headings per point


def say(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------------------------- search
def brute_force(database: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """numpy: one matrix product per chunk of queries, then the top k by argpartition."""
    out = []
    for i in range(0, len(queries), chunk):
        scores = queries[i : i + chunk] @ database.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out)


def search_speed(args) -> None:
    import faiss
    from ivfpq_study import places

    from vprlib.index.shards import build_index

    database, place_of, views = places(args.vectors, args.dim, 20, 64, 1.0)
    rng = np.random.default_rng(1)
    query_place = place_of[rng.integers(0, len(database), args.queries)]
    queries = views(query_place, rng)
    say(f"index speed: {args.vectors} database vectors of {args.dim} dimensions, {args.queries} queries, "
        f"{faiss.omp_get_max_threads()} faiss threads")
    flat, _ = build_index(database, "flat")
    start = time.perf_counter()
    _, exact = flat.search(queries, 10)
    flat_rate = args.queries / (time.perf_counter() - start)
    start = time.perf_counter()
    numpy_top = brute_force(database, queries, 10)
    numpy_rate = args.queries / (time.perf_counter() - start)
    say(f"RESULT faiss flat: {flat_rate:.1f} queries/s; numpy brute force: {numpy_rate:.1f} queries/s "
        f"({flat_rate / numpy_rate:.2f}x); same top-1 on {np.mean(numpy_top[:, 0] == exact[:, 0]):.1%}")
    flat_place = float(np.mean(place_of[exact[:, 0]] == query_place))
    del flat
    start = time.perf_counter()
    index, built = build_index(database, "ivfpq")
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    scores, found = index.search(queries, 10)
    rate = args.queries / (time.perf_counter() - start)
    top1 = float(np.mean(found[:, 0] == exact[:, 0]))
    place = float(np.mean(place_of[np.maximum(found[:, 0], 0)] == query_place))
    say(f"RESULT IVF-PQ with exact re-ranking {built}: build {build_s:.1f} s; {rate:.1f} queries/s "
        f"({rate / flat_rate:.1f}x flat); exact top-1 {top1:.3f}; place Recall@1 {place:.3f} against flat's "
        f"{flat_place:.3f}; codes {args.vectors * built['m'] * built['nbits'] / 8 / 2**20:.0f} MiB in memory, vectors "
        f"{args.vectors * args.dim * 4 / 2**20:.0f} MiB memory-mapped")
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        gpu = faiss.index_cpu_to_all_gpus(build_index(database, "flat")[0])
        start = time.perf_counter()
        gpu.search(queries, 10)
        gpu_rate = args.queries / (time.perf_counter() - start)
        say(f"RESULT faiss GPU flat: {gpu_rate:.1f} queries/s ({gpu_rate / flat_rate:.1f}x CPU)")


# ----------------------------------------------------------------------------------------------- a synthetic city
def write_parts(task: tuple) -> None:
    """Worker process: maps parts `first`..`last` of a city of `rows` rows (part p, version v: its random maps)."""
    output, spec, side, first, last, version = task
    import pyarrow as pa

    from vprlib.demo.city import CityConfig, local_to_geo
    from vprlib.maps import MAP_FIELDS, encode_depth, encode_seg, output_schema, write_part
    from vprlib.spec import MapSpec

    width = int(os.environ["CITY_WIDTH"])
    manifest = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("lat", pa.float64()),
                          ("lon", pa.float64()), ("heading", pa.float64()), ("utm_east", pa.float64()),
                          ("utm_north", pa.float64()), ("utm_zone", pa.int64()), ("split", pa.string())])
    schema = output_schema(manifest, MapSpec.from_record(spec))
    for part in range(first, last):
        rng = np.random.default_rng([part, version])
        rows = np.arange(part * PART_ROWS, (part + 1) * PART_ROWS)
        point = rows // 8
        geo = local_to_geo(CityConfig(), (point % width) * SPACING_M, (point // width) * SPACING_M)
        n = len(rows)
        columns = {"image_id": [f"{r:09d}" for r in rows], "uri": [""] * n, "lat": geo["lat"], "lon": geo["lon"],
                   "heading": (rows % 8) * 45.0, "utm_east": geo["utm_east"], "utm_north": geo["utm_north"],
                   "utm_zone": geo["utm_zone"].astype(np.int64), "split": ["database"] * n, "status": ["ok"] * n,
                   "error": [""] * n,
                   "depth": [encode_depth(rng.random((side, side), np.float32)) for _ in rows],
                   "seg": [encode_seg(rng.integers(0, 4, (side, side), np.uint8)) for _ in rows],
                   "map_height": np.full(n, side, np.int32), "map_width": np.full(n, side, np.int32),
                   "seg_classes": ["refined4"] * n, "dynamic_fraction": np.zeros(n, np.float32),
                   "strategy": ["ground-truth"] * n, "models": ["{}"] * n}
        assert set(columns) == set(manifest.names) | {f.name for f in MAP_FIELDS}
        write_part(pa.table(columns), output, schema, name=f"part-{part:032x}.parquet")


def make_city(folder: str, rows: int, side: int, parts: range | None = None, version: int = 0) -> None:
    """A maps table of `rows` rows (or only `parts` of it, written again as `version`), in worker processes."""
    from vprlib.maps import write_spec
    from vprlib.spec import MapSpec

    spec = MapSpec(strategy="ground-truth", models="synthcity", side=side).record({})
    write_spec(folder, spec)
    parts = parts if parts is not None else range(rows // PART_ROWS)
    chunks = np.array_split(np.array(parts), max(1, min(len(parts), 64)))
    os.environ["CITY_WIDTH"] = str(int(np.sqrt(rows / 8)))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(write_parts, [(folder, spec, side, int(c[0]), int(c[-1]) + 1, version) for c in chunks if len(c)])


# ----------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Samples, every 50 ms, the resident memory of this process (the driver) and of every Ray worker process on
    this machine (actors and tasks: `ray::` processes), keeping each one's peak."""

    def __init__(self):
        self.driver = 0
        self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            self.driver = max(self.driver, me.memory_info().rss)
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    if (proc.info["cmdline"] or [""])[0].startswith("ray::"):
                        self.worker = max(self.worker, proc.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            time.sleep(0.05)


def timed_index(config) -> tuple[dict, float, PeakMemory]:
    from vprlib.index.build import run_index

    with PeakMemory() as peak:
        start = time.perf_counter()
        summary = run_index(config)
        seconds = time.perf_counter() - start
    return summary, seconds, peak


def city_job(args, rows: int, work: str) -> None:
    """Build, then reindex with nothing, 1% and 10% of the parts changed; every figure against the full build."""
    import dataclasses

    import torch

    from vprlib.index.build import IndexConfig
    from vprlib.maps import read_spec
    from vprlib.models.cosplace import CosPlace, CosPlaceConfig
    from vprlib.models.encodings import EncodingConfig

    maps, output = os.path.join(work, f"maps-{rows}"), os.path.join(work, f"index-{rows}")
    start = time.perf_counter()
    make_city(maps, rows, args.side)
    say(f"city: {rows} maps of {args.side} px in {rows // PART_ROWS} parts, written in "
        f"{time.perf_counter() - start:.0f} s")
    torch.manual_seed(0)
    model = os.path.join(work, "model.pt")
    CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=args.dim, encoding=EncodingConfig(num_classes=4))
             ).save(model, map_spec=read_spec(maps), input_side=args.side)
    config = IndexConfig(maps=maps, model=model, output=output, tile_m=args.tile_m, actors=2, batch_size=256,
                         cpus_per_actor=1.0)
    full, full_s, peak = timed_index(config)
    say(f"RESULT city {rows}: full build {full_s:.1f} s ({full['shards']} shards, {rows / full_s:.0f} maps/s); "
        f"peak memory: driver {peak.driver / 2**20:.0f} MiB, one worker {peak.worker / 2**20:.0f} MiB "
        f"(vectors {rows * args.dim * 4 / 2**20:.0f} MiB)")
    for share in (0.0, 0.01, 0.10):
        parts = rows // PART_ROWS
        changed = range(parts // 3, parts // 3 + round(share * parts))
        if len(changed):
            make_city(maps, rows, args.side, parts=changed, version=1 + int(share * 100))
        summary, seconds, peak = timed_index(dataclasses.replace(config))
        say(f"RESULT city {rows}: reindex with {share:.0%} of the parts changed ({summary['parts_embedded']} "
            f"parts, {summary['shards_built']} shards built): {seconds:.1f} s = {seconds / full_s:.1%} of the full "
            f"build; peak memory: driver {peak.driver / 2**20:.0f} MiB, one worker {peak.worker / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000, help="database vectors of the search figures")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--cities", default="100000,1000000", help="rows of the cities the index job builds")
    parser.add_argument("--side", type=int, default=8, help="pixels of the cities' maps")
    parser.add_argument("--tile-m", type=float, default=1000.0, help="the index job's UTM tiles")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: search, job")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    if "search" not in skip:
        search_speed(args)
    if "job" not in skip:
        import ray

        ray.init(include_dashboard=False, logging_level="ERROR", address="local")
        with tempfile.TemporaryDirectory(prefix="vprlib-index-bench-") as work:
            for rows in (int(r) for r in args.cities.split(",") if r):
                city_job(args, rows, work)
        ray.shutdown()


if __name__ == "__main__":
    main()
