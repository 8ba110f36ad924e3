"""Locate street photos with an index: the photos' maps, the retriever's descriptors, the nearest indexed places.

    python jobs/locate.py --index out/index photo1.jpg photo2.jpg [--top-k 5] [--json]
    python jobs/locate.py --index out/index --input out/photos.parquet --output out/located.parquet [--prior-m 500]
    python jobs/locate.py --index out/index --sequence out/walk/  # a walk's frames: one position, the last frame's
    python jobs/locate.py --index out/index --sequence walk.mp4 [--frames 5] [--seconds 3]  # a video of a walk

Photos named on the command line are located in this process (no cluster needed); a batch (--input: a manifest or a
folder of photos) streams through Ray into one Parquet file of answers. Both use the index's own extraction models
and retriever, and re-rank the first 10 places by their maps (--rerank K, 0 = off). Exit status 2 on bad arguments
or input: an unreadable photo, or an index this call cannot use (one line on stderr); in a batch an unreadable photo
is a row with its error.
"""

import json
import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.index.locate import LocateConfig


def parse_args(argv: list[str] | None = None) -> LocateConfig:
    parser = OneLineParser(prog="locate.py", description=__doc__.split("\n")[0])
    parser.add_argument("photos", nargs="*", help="photos to locate (paths or s3://)")
    add_flags(parser, LocateConfig, skip=("photos",))
    args = vars(parser.parse_args(argv))
    try:
        return LocateConfig(**{**args, "photos": tuple(args["photos"])})
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    if "--sequence" in (sys.argv[1:] if argv is None else argv):  # a walk's frames: vprlib.index.locate_sequence
        from vprlib.index.locate_sequence import main as sequence_main

        return sequence_main(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    from vprlib.index.locate import format_table, locate, locate_batch

    try:
        if config.input:
            locate_batch(config)
            return 0
        results = locate(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"locate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2) if config.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
