"""Speed and accuracy of the index: faiss against brute-force numpy, IVF-PQ against exact search, embedding in the
index job against a plain loop, and rebuilding shards with 1 and 2 workers. Prints a RESULT line per figure.

    python benchmarks/index_speed.py                        # 200k vectors of 512 dimensions (this 2-core machine)
    python benchmarks/index_speed.py --vectors 1000000      # a million (2 GB of vectors)

Descriptors are synthetic: unit vectors drawn around `--clusters` centres (places look like their neighbours), the
queries perturbed copies of database vectors, so exact search has a right answer and IVF-PQ's recall means something.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def say(line: str) -> None:
    print(line, flush=True)


def vectors(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    data = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


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

    from vprlib.index.shards import build

    database = vectors(args.vectors, args.dim, args.clusters)
    rng = np.random.default_rng(1)
    picked = rng.integers(0, len(database), args.queries)
    queries = database[picked] + 0.1 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    say(f"index speed: {args.vectors} database vectors of {args.dim} dimensions, {args.queries} queries, "
        f"{faiss.omp_get_max_threads()} faiss threads")
    start = time.perf_counter()
    data, built = build(database, "flat")
    flat = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    say(f"RESULT flat index build: {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    _, exact = flat.search(queries, 10)
    faiss_rate = args.queries / (time.perf_counter() - start)
    start = time.perf_counter()
    numpy_top = brute_force(database, queries, 10)
    numpy_rate = args.queries / (time.perf_counter() - start)
    agree = float(np.mean(numpy_top[:, 0] == exact[:, 0]))
    say(f"RESULT faiss flat: {faiss_rate:.1f} queries/s; numpy brute force: {numpy_rate:.1f} queries/s "
        f"({faiss_rate / numpy_rate:.2f}x); same top-1 on {agree:.1%}")
    start = time.perf_counter()
    data, built = build(database, "ivfpq")
    build_s = time.perf_counter() - start
    ivfpq = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    start = time.perf_counter()
    _, approx = ivfpq.search(queries, 10)
    ivf_rate = args.queries / (time.perf_counter() - start)
    r1 = float(np.mean(approx[:, 0] == exact[:, 0]))
    r10 = float(np.mean([exact[i, 0] in approx[i] for i in range(len(queries))]))
    say(f"RESULT IVF-PQ {built}: build {build_s:.1f} s, {ivf_rate:.1f} queries/s ({ivf_rate / faiss_rate:.1f}x "
        f"flat); Recall@1 {r1:.3f}, Recall@10 {r10:.3f} of the exact nearest neighbour; "
        f"{len(data) / 2**20:.0f} MiB against {args.vectors * args.dim * 4 / 2**20:.0f} MiB flat")
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        gpu = faiss.index_cpu_to_all_gpus(flat)
        start = time.perf_counter()
        gpu.search(queries, 10)
        gpu_rate = args.queries / (time.perf_counter() - start)
        say(f"RESULT faiss GPU flat: {gpu_rate:.1f} queries/s ({gpu_rate / faiss_rate:.1f}x CPU)")


def shard_rebuild(args) -> None:
    """N shards built as Ray tasks on a cluster of 1 CPU, then of 2 (faiss at one thread per task)."""
    import ray

    from vprlib.index.shards import build

    def one(vectors_: np.ndarray) -> int:
        import faiss

        faiss.omp_set_num_threads(1)
        return len(build(vectors_, args.shard_kind)[0])

    shards = [vectors(args.shard_rows, args.dim, 64, seed=s) for s in range(args.shards)]
    for cpus in (1, 2):
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", address="local")
        task = ray.remote(one)
        refs = [ray.put(s) for s in shards]
        start = time.perf_counter()
        ray.get([task.remote(r) for r in refs])
        seconds = time.perf_counter() - start
        ray.shutdown()
        say(f"RESULT rebuilding {args.shards} {args.shard_kind} shards of {args.shard_rows} vectors with {cpus} "
            f"worker(s): {seconds:.1f} s")


def embedding(args) -> None:
    """The index job's embedding (Ray Data actor pool) against a plain loop over the same maps and retriever."""
    import torch

    from vprlib.data.synthcity import GT_MAPS, CityConfig, generate_city
    from vprlib.index.build import IndexConfig, run_index
    from vprlib.maps import decode_depth, decode_seg, read_maps, read_spec
    from vprlib.models.cosplace import CosPlace, CosPlaceConfig
    from vprlib.models.encodings import EncodingConfig

    work = tempfile.mkdtemp(prefix="vprlib-index-bench-")
    generate_city(CityConfig(places=args.places, side=args.side), os.path.join(work, "city"))
    maps = os.path.join(work, "city", GT_MAPS)
    model = CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=128, encoding=EncodingConfig(num_classes=4)))
    path = os.path.join(work, "model.pt")
    model.save(path, map_spec=read_spec(maps), input_side=args.side)
    rows = read_maps(maps).to_pylist()
    torch.set_num_threads(args.threads)
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(rows), 64):
            batch = rows[i : i + 64]
            depth = torch.from_numpy(np.stack([decode_depth(r) for r in batch]))
            seg = torch.from_numpy(np.stack([decode_seg(r) for r in batch]))
            model.embed(depth, seg)
    plain = len(rows) / (time.perf_counter() - start)
    say(f"RESULT plain embedding loop: {len(rows)} maps at {args.side} px, {plain:.1f} maps/s ({args.threads} threads)")
    import ray

    ray.init(num_cpus=args.threads + 1, include_dashboard=False, logging_level="ERROR", address="local")
    start = time.perf_counter()
    summary = run_index(IndexConfig(maps=maps, model=path, output=os.path.join(work, "index"), split="all",
                                    shard_by="none", cpus_per_actor=args.threads))
    job = summary["rows"] / (time.perf_counter() - start)
    ray.shutdown()
    say(f"RESULT index job: {summary['rows']} maps in {time.perf_counter() - start:.1f} s end to end (hashing, "
        f"embedding, one shard) = {job:.1f} maps/s, {job / plain:.2f}x the plain loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=2000, help="places the synthetic descriptors gather around")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-rows", type=int, default=30_000)
    parser.add_argument("--shard-kind", default="ivfpq", choices=("flat", "ivfpq"))
    parser.add_argument("--places", type=int, default=48, help="city size for the embedding figure")
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: search, shards, embedding")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    if "search" not in skip:
        search_speed(args)
    if "shards" not in skip:
        shard_rebuild(args)
    if "embedding" not in skip:
        embedding(args)


if __name__ == "__main__":
    main()
