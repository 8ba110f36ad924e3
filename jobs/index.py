"""Index a city's maps with a trained retriever: faiss shards built in parallel, rebuilt only where maps changed.

    python jobs/index.py --maps out/maps --model out/cosplace/best.pt --output out/index
    python jobs/index.py --maps s3://bucket/maps --model s3://bucket/cp/best.pt --output s3://bucket/index --kind ivfpq

Running it again after maps were added, changed or removed, or with another --model, re-embeds only what changed and
rebuilds only the shards whose content changed. Exit status 2 on bad arguments or input (one line on stderr).
"""

import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.index.build import IndexConfig


def parse_args(argv: list[str] | None = None) -> IndexConfig:
    parser = OneLineParser(prog="index.py", description=__doc__.split("\n")[0])
    add_flags(parser, IndexConfig)
    try:
        return IndexConfig(**vars(parser.parse_args(argv)))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from vprlib.index.build import run_index

    try:
        run_index(config)
    except (ValueError, FileNotFoundError) as exc:  # another kind of maps, no rows, not a checkpoint
        print(f"index: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
