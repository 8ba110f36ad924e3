"""Which IVF-PQ settings an index shard should use: lists, code bytes, lists probed and candidates re-ranked, against
exact search, on synthetic place descriptors. Prints one RESULT line per setting and the rule's choice.

    python benchmarks/ivfpq_study.py                       # 1,000,000 x 512-d (about 2 GB), this 2-core machine
    python benchmarks/ivfpq_study.py --vectors 200000      # quicker

The descriptors imitate a city's: `--per-place` images per place, each the place's vector plus view noise, the
places spread on a `--latent`-dimensional subspace of the descriptor space (CNN descriptors are far from isotropic,
which is what product quantisation exploits). Queries are new views of database places. For every setting:
- speed: queries/s against faiss flat search on the same machine, in the same run (the ratio is the figure);
- exact top-1: how often its first result is flat search's first result (the exact nearest neighbour);
- place Recall@1: how often its first result is of the query's place, against flat's (what Recall@1 measures).
Every IVF-PQ index here wraps `IndexRefineFlat`: candidates from the codes, re-ranked exactly from the vectors.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

OFF_SUBSPACE = 0.3  # view noise off the places' subspace (norm)


def say(line: str) -> None:
    print(line, flush=True)


def places(n: int, dim: int, per_place: int, latent: int, noise: float, seed: int = 0):
    """`n` unit descriptors of n/per_place places, their place ids, and a generator of query views."""
    rng = np.random.default_rng(seed)
    count = max(1, n // per_place)
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T.astype(np.float32)  # latent x dim, orthonormal rows
    centres = rng.normal(size=(count, latent)).astype(np.float32) @ basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def views(place: np.ndarray, generator) -> np.ndarray:
        """A view moves along the subspace (another heading, another light) and a little off it."""
        along = generator.normal(size=(len(place), latent)).astype(np.float32) @ basis / np.sqrt(latent)
        off = generator.normal(size=(len(place), dim)).astype(np.float32) / np.sqrt(dim)
        out = centres[place] + noise * along + OFF_SUBSPACE * off
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    ids = rng.integers(0, count, n)
    database = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        database[start:start + 100_000] = views(ids[start:start + 100_000], rng)
    return database, ids, views


def timed_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    _, found = index.search(queries, k)
    return found, len(queries) / (time.perf_counter() - start)


def main() -> None:
    import faiss

    from vprlib.index.shards import build_index, configure, ivfpq_params

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--per-place", type=int, default=20, help="database images per place")
    parser.add_argument("--latent", type=int, default=64, help="dimension of the subspace the places span")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="view noise along the places' subspace (norm, against unit place vectors)")
    parser.add_argument("--nlist", default="1024,4096", help="lists to try")
    parser.add_argument("--m", default="32,64", help="code bytes to try")
    parser.add_argument("--nprobe", default="16,32,64,128", help="lists probed to try")
    parser.add_argument("--refine", default="2,4,8,16", help="candidates per result re-ranked exactly to try")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    database, place_of, views = places(args.vectors, args.dim, args.per_place, args.latent, args.noise)
    rng = np.random.default_rng(1)
    query_place = place_of[rng.integers(0, len(database), args.queries)]
    queries = views(query_place, rng)
    say(f"study: {args.vectors} descriptors of {args.dim} dimensions ({args.vectors // args.per_place} places of "
        f"~{args.per_place}, latent {args.latent}, noise {args.noise}), {args.queries} queries, k {args.k}, "
        f"{faiss.omp_get_max_threads()} faiss threads")
    flat, _ = build_index(database, "flat")
    exact, flat_rate = timed_search(flat, queries, args.k)
    flat_place = float(np.mean(place_of[exact[:, 0]] == query_place))
    say(f"RESULT flat: {flat_rate:.1f} queries/s, place Recall@1 {flat_place:.3f}")
    del flat
    rule = ivfpq_params(args.vectors, args.dim)
    say(f"rule for {args.vectors} vectors: {rule}")
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    for nlist, m in itertools.product(ints(args.nlist), ints(args.m)):
        start = time.perf_counter()
        index, built = build_index(database, "ivfpq", {"nlist": nlist, "m": m})
        build_s = time.perf_counter() - start
        say(f"RESULT build nlist {nlist} m {m} (trained on {built['train']}): {build_s:.1f} s")
        for nprobe, refine in itertools.product(ints(args.nprobe), ints(args.refine)):
            if nprobe > nlist:
                continue
            configure(index, {**built, "nprobe": nprobe, "refine": refine})
            found, rate = timed_search(index, queries, args.k)
            top1 = float(np.mean(found[:, 0] == exact[:, 0]))
            place = float(np.mean(place_of[np.maximum(found[:, 0], 0)] == query_place))
            chosen = " <- rule" if rule and (nlist, m, nprobe, refine) == (rule.nlist, rule.m, rule.nprobe,
                                                                            rule.refine) else ""
            say(f"RESULT nlist {nlist} m {m} nprobe {nprobe} refine {refine}: {rate:.0f} queries/s "
                f"({rate / flat_rate:.1f}x flat), exact top-1 {top1:.3f}, place Recall@1 {place:.3f} "
                f"(flat {flat_place:.3f}){chosen}")
        del index


if __name__ == "__main__":
    main()
