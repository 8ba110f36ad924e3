"""Sequences against single frames on the demo city: sequence Recall@1/5/10 (loose and strict) of query walks.

    python jobs/demo.py --output out --locate 0      # the city, each strategy's maps and index (the demo's)
    python benchmarks/sequence_study.py --output out [--strategies inpaint,synthetic] [--lengths 1,3,5]

Renders the demo city's query walks (vprlib.demo.city.walks: two 5-frame walks, 2 m apart, per evaluation place, each
with its own look and dynamic objects), extracts their maps with each strategy's demo models as the demo extracted the
city, and evaluates them on the demo's index of that strategy (the shipped demo retriever) with evaluate --sequences:
the last 1, 3 and 5 frames of each walk, by the path matcher and by the frames' mean descriptor. Prints one table.
Resumes: the walks and their maps are made once.
"""

from __future__ import annotations

import argparse
import os

from vprlib.metrics import DEFAULT_NS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="out", help="the demo's output folder (jobs/demo.py --output)")
    parser.add_argument("--strategies", default="inpaint,synthetic")
    parser.add_argument("--lengths", default="1,3,5")
    parser.add_argument("--methods", default="paths,mean")
    parser.add_argument("--walks-per-place", type=int, default=2)
    args = parser.parse_args()

    from vprlib.demo import city as sc
    from vprlib.demo.city import walks as wk
    from vprlib.extract.config import extract_config
    from vprlib.extract.pipeline import run_extract
    from vprlib.index.embed import retriever_record
    from vprlib.index.sequence_eval import SequenceEvalConfig, run_sequence_evaluate
    from vprlib.models import zoo

    out = os.path.abspath(args.output)
    walks_dir = os.path.join(out, "walks")
    walks = wk.WalkConfig(walks_per_place=args.walks_per_place)
    if not os.path.exists(os.path.join(walks_dir, "manifest.parquet")):
        wk.generate_walks(sc.CityConfig(**sc.DEMO_CITY), walks, walks_dir)
    rows = []
    for strategy in (s.strip() for s in args.strategies.split(",") if s.strip()):
        index = os.path.join(out, f"index-{strategy}")
        if not os.path.exists(os.path.join(index, "index.json")):
            raise SystemExit(f"sequence_study: no index {index}: run jobs/demo.py --output {args.output} first")
        model = str(zoo.demo_retriever(strategy))
        side = retriever_record(model).map_spec["side"]
        maps = os.path.join(out, f"walk-maps-{strategy}")
        run_extract(extract_config(input=os.path.join(walks_dir, "manifest.parquet"), output=maps,
                                   strategy=strategy, models=zoo.DEMO, side=side))
        summary = run_sequence_evaluate(SequenceEvalConfig(
            index=index, queries=maps, output=os.path.join(out, f"eval-sequences-{strategy}"),
            lengths=args.lengths, methods=args.methods))
        for method, by_length in summary["figures"].items():
            for length, fig in by_length.items():
                rows.append((strategy, method, int(length), fig))
    ns = DEFAULT_NS
    print(f"\nsequence_study: demo city walks ({walks.frames} frames, {walks.spacing_m:g} m apart, "
          f"{walks.walks_per_place} per evaluation place), right within 25 m; loose: of any frame, strict: of the last")
    print(f"{'strategy':<10}{'method':<8}{'frames':>7}{'walks':>7}" + "".join(
        f"{p + '@' + str(n):>11}" for p in ("loose", "strict") for n in ns))
    for strategy, method, length, fig in sorted(rows, key=lambda r: (r[0], r[2] > 1, r[1], r[2])):
        if length == 1 and method != rows[0][1]:
            continue  # one frame: both methods are the frame's own retrieval
        name = "single" if length == 1 else method
        print(f"{strategy:<10}{name:<8}{length:>7}{fig['sequences']:>7}" + "".join(
            f"{fig[p][f'recall@{n}']:>11.1%}" for p in ("loose", "strict") for n in ns))


if __name__ == "__main__":
    main()
