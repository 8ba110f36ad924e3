"""Locate street photos with an index: the photos' maps, the retriever's descriptors, the nearest indexed places.

    python jobs/locate.py --index out/index photo1.jpg photo2.jpg [--top-k 5] [--json]

Runs in this process (no cluster needed), with the index's own extraction models and retriever. Exit status 2 on bad
arguments or input: an unreadable photo, or an index this call cannot use (one line on stderr).
"""

import json
import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.index.locate import LocateConfig


def parse_args(argv: list[str] | None = None) -> LocateConfig:
    parser = OneLineParser(prog="locate.py", description=__doc__.split("\n")[0])
    parser.add_argument("photos", nargs="+", help="photos to locate (paths or s3://)")
    add_flags(parser, LocateConfig, skip=("photos",))
    args = vars(parser.parse_args(argv))
    try:
        return LocateConfig(**{**args, "photos": tuple(args["photos"])})
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from vprlib.index.locate import format_table, locate

    try:
        results = locate(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"locate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if config.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
