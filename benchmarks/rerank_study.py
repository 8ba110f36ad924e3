"""Geometric re-ranking on the demo city: Recall@1/5/10 of the search alone and re-ranked, and what it costs per query.

    python jobs/demo.py --output out --locate 0        # the city, maps and indexes (once)
    python benchmarks/rerank_study.py --demo out [--strategies inpaint,synthetic] [--k 10] [--repeats 3]

For each strategy, in one process and one run: the query captures' maps (`query` split of out/maps-<strategy>) are
embedded by the index's retriever, searched on its index (vprlib.index.search.Index) and their first --k candidates
re-ranked (vprlib.index.rerank.Reranker, which reads the candidates' labels from the maps parts that hold them), all
in batches of --batch-size; each query is right when one of its top N lies within 25 m (as jobs/evaluate.py).

Cost per query: the milliseconds of each stage (the median of --repeats passes over all queries; for the re-ranking
the first pass, which reads every candidate's labels from its maps part, and the median of the later ones, served
from the re-ranker's cache), and the ratio of a query's cost with re-ranking to its cost without: as embedding +
search (what a query whose maps are made costs), cold and warm, and as the search alone (cold).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def study(demo: str, strategy: str, k: int, batch_size: int, repeats: int) -> dict:
    import pyarrow.compute as pc
    import torch

    from vprlib.index.embed import load_model
    from vprlib.index.rerank import Reranker
    from vprlib.index.search import Index
    from vprlib.maps import decode_depth, decode_seg, read_maps
    from vprlib.metrics import GPS_THRESHOLD_M, gps_columns, recall_from_ranks
    from vprlib.train.data import resize_maps

    index = Index(os.path.join(demo, f"index-{strategy}"))
    rows = read_maps(os.path.join(demo, f"maps-{strategy}"),
                     filter=(pc.field("split") == "query") & (pc.field("status") == "ok"))
    listed = rows.select(["depth", "seg", "map_height", "map_width"]).to_pylist()
    depth = np.stack([decode_depth(r) for r in listed])
    seg = np.stack([decode_seg(r) for r in listed])
    model = load_model(index.manifest["model"]["path"]).eval()
    side = index.manifest["model"]["input_side"]
    reranker = Reranker(index.root, index.manifest)
    stages = {"embed": [], "search": [], "rerank": []}
    for _ in range(repeats):
        spent = dict.fromkeys(stages, 0.0)
        before, after = [], []
        for start in range(0, len(seg), batch_size):
            part = slice(start, start + batch_size)
            t0 = time.perf_counter()
            resized = resize_maps({"depth": depth[part], "seg": seg[part]}, side)
            with torch.inference_mode():
                vectors = model.embed(torch.from_numpy(np.array(resized["depth"])),
                                      torch.from_numpy(np.array(resized["seg"]))).float().numpy()
            t1 = time.perf_counter()
            hits = index.search(vectors, k)
            t2 = time.perf_counter()
            reranked, _ = reranker(hits, seg[part], k)
            t3 = time.perf_counter()
            for name, took in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                spent[name] += took
            before.append(hits)
            after.append(reranked)
        for name in stages:
            stages[name].append(spent[name] * 1e3 / len(seg))
    columns = gps_columns(rows, [s["positions"] for s in index.shards.values()])
    found = index.group.positives(rows, "gps", GPS_THRESHOLD_M, columns)
    positives = [set(p or ()) for p in found]

    def recalls(parts) -> dict:
        ids = np.concatenate([h.ids for h in parts])
        first = [next((r + 1 for r, i in enumerate(row) if i in pos), None) for row, pos in zip(ids, positives,
                                                                                                  strict=True)]
        return recall_from_ranks(first, [True] * len(first), [len(p) for p in positives], (1, 5, 10))

    ms = {name: statistics.median(values) for name, values in stages.items()}
    ms["cold"] = stages["rerank"][0]  # the first pass, every candidate's labels read from its maps part
    ms["warm"] = statistics.median(stages["rerank"][1:] or stages["rerank"])  # the cache holds them
    base = ms["embed"] + ms["search"]
    return {"queries": len(seg), "before": recalls(before), "after": recalls(after), "ms": ms,
            "ratio": (base + ms["cold"]) / base, "ratio_warm": (base + ms["warm"]) / base,
            "ratio_search": (ms["search"] + ms["cold"]) / ms["search"]}


ABLATION = ((0, (1.0,)), (0, (0.8, 1.0, 1.25)), (2, (1.0,)), (2, (0.8, 1.0, 1.25)), (2, None), (4, None))
WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def ablation(demo: str, strategy: str, k: int) -> None:
    """Recall@1 of the re-ranked queries for other shifts, zooms and descriptor weights (None: the default zooms)."""
    import pyarrow.compute as pc
    import torch

    from vprlib.index import rerank
    from vprlib.index.embed import load_model
    from vprlib.index.search import Index
    from vprlib.maps import decode_depth, decode_seg, read_maps
    from vprlib.metrics import GPS_THRESHOLD_M, gps_columns
    from vprlib.train.data import resize_maps

    index = Index(os.path.join(demo, f"index-{strategy}"))
    rows = read_maps(os.path.join(demo, f"maps-{strategy}"),
                     filter=(pc.field("split") == "query") & (pc.field("status") == "ok"))
    listed = rows.select(["depth", "seg", "map_height", "map_width"]).to_pylist()
    depth, seg = np.stack([decode_depth(r) for r in listed]), np.stack([decode_seg(r) for r in listed])
    resized = resize_maps({"depth": depth, "seg": seg}, index.manifest["model"]["input_side"])
    with torch.inference_mode():
        vectors = load_model(index.manifest["model"]["path"]).eval().embed(
            torch.from_numpy(np.array(resized["depth"])), torch.from_numpy(np.array(resized["seg"]))).float().numpy()
    hits = index.search(vectors, k)
    columns = gps_columns(rows, [s["positions"] for s in index.shards.values()])
    positives = [set(p or ()) for p in index.group.positives(rows, "gps", GPS_THRESHOLD_M, columns)]
    maps = rerank.CandidateMaps(index.root, manifest=index.manifest)
    thumbs = maps.labels([i for row in hits.ids for i in row if i is not None])
    ignored, queries = rerank.ignored_labels(maps.seg_classes), rerank.thumbnails(seg)
    alone = np.mean([row[0] in pos for row, pos in zip(hits.ids, positives, strict=True)])
    print(f"{strategy}: Recall@1 re-ranked by shifts, zooms and descriptor weight w (search alone {100 * alone:.1f})")
    print(f"{'shifts':>6} {'zooms':<28}" + "".join(f"{'w ' + str(w):>8}" for w in WEIGHTS))
    for shift, zooms in ABLATION:
        zooms = zooms or rerank.ZOOMS
        agree = [rerank.agreement(queries[q], np.stack([thumbs[i] for i in hits.ids[q]]), ignored, shift, zooms)
                 for q in range(len(queries))]
        cells = []
        for weight in WEIGHTS:
            right = [hits.ids[q][rerank.rerank_order(agree[q], hits.scores[q], weight)][0] in positives[q]
                     for q in range(len(queries))]
            cells.append(f"{100 * np.mean(right):>8.1f}")
        print(f"{shift:>6} {', '.join(f'{z:g}' for z in zooms):<28}" + "".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", default="out", help="jobs/demo.py's --output")
    parser.add_argument("--strategies", default="inpaint,synthetic")
    parser.add_argument("--k", type=int, default=10, help="candidates searched and re-ranked per query")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ablation", action="store_true",
                        help="instead: Recall@1 for other shifts, zooms and descriptor weights")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.ablation:
        for strategy in (s.strip() for s in args.strategies.split(",") if s.strip()):
            ablation(args.demo, strategy, args.k)
        return
    print(f"{'strategy':<10} {'queries':>7}  {'Recall@1/5/10 search':>22}  {'re-ranked':>18}  "
          f"{'ms/query embed':>14} {'search':>7} {'rerank':>7} {'(warm)':>7}  {'cost x':>6} {'(warm)':>6} "
          f"{'x search':>8}")
    for strategy in (s.strip() for s in args.strategies.split(",") if s.strip()):
        r = study(args.demo, strategy, args.k, args.batch_size, args.repeats)
        fmt = lambda rec: " ".join(f"{100 * rec[n]:5.1f}" for n in (1, 5, 10))  # noqa: E731
        print(f"{strategy:<10} {r['queries']:>7}  {fmt(r['before']):>22}  {fmt(r['after']):>18}  "
              f"{r['ms']['embed']:>14.2f} {r['ms']['search']:>7.3f} {r['ms']['cold']:>7.2f} {r['ms']['warm']:>7.2f}  "
              f"{r['ratio']:>6.2f} {r['ratio_warm']:>6.2f} {r['ratio_search']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
