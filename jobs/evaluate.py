"""Evaluate an index on query photos' maps: Recall@N (GPS, landmark or positives), per-query results, HTML report.

    python jobs/evaluate.py --index out/index --queries out/maps --output out/eval --report
    python jobs/evaluate.py --index out/gld-index --queries out/gld-maps --output out/gld-eval --landmarks

Queries are the `query` rows of --queries (--query-split). Right within --radius-m metres (GPS mode, default; in a
metric frame when every row has one, lat/lon otherwise), of the same landmark (--landmarks), or listed in the rows'
`positives` (chosen when the queries carry them). A query with no positive in the index is a miss, as the VPR
community counts it; --exclude-no-positive leaves it out of Recall@N, and the summary says how many such queries
there are either way. Each query's first 10 candidates are re-ranked by how well their maps agree with its maps
(--rerank K, 0 = off; the summary keeps the search's own recalls beside). Writes results.parquet and summary.json
(and report.html with --report) in --output. Exit status 2 on bad arguments or input (one line on stderr).

    python jobs/evaluate.py --sequences --index out/index --queries out/walk-maps --output out/eval-seq

--sequences evaluates query sequences instead (rows with sequence_id and frame_index): sequence Recall@N of the last
--lengths frames, loose and strict, by path matching and by the mean descriptor (vprlib/index/sequence_eval.py).
"""

import dataclasses
import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.index.evaluate import EvaluateConfig

EXCLUSIVE = ("radius_m", "landmarks")  # GPS mode or landmark mode


def parse_args(argv: list[str] | None = None) -> EvaluateConfig:
    parser = OneLineParser(prog="evaluate.py", description=__doc__.split("\n")[0])
    add_flags(parser, EvaluateConfig, skip=EXCLUSIVE)
    others = tuple(f.name for f in dataclasses.fields(EvaluateConfig) if f.name not in EXCLUSIVE)
    add_flags(parser.add_mutually_exclusive_group(), EvaluateConfig, skip=others)
    try:
        return EvaluateConfig(**vars(parser.parse_args(argv)))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    if "--sequences" in (sys.argv[1:] if argv is None else argv):  # query sequences: vprlib.index.sequence_eval
        from vprlib.index.sequence_eval import main as sequences_main

        return sequences_main(argv)
    config = parse_args(argv)
    from vprlib.index.evaluate import run_evaluate

    try:
        run_evaluate(config)
    except (ValueError, FileNotFoundError) as exc:  # other maps, another retriever, no rows, not an index
        print(f"evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
