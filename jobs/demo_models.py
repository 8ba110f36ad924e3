"""Train every model of the `demo` preset on synthetic cities and install it into vprlib/models/demo/.

    python jobs/demo_models.py [--work out/demo-models] [--side 64]     # make demo-models: about an hour on 2 cores

The extractors (small SegFormer, DPT-Hybrid, Big-LaMa generator) on city A, the two refiners and one CosPlace per
strategy on city B, seeded throughout; the recipe is vprlib.demo.models. Every step resumes. The shipped retrievers
were trained on maps of the installed extractors: retraining any extractor means running the later steps again.
Exit status 2 on bad arguments or input (one line on stderr), 130 on Ctrl-C.
"""

import sys

from vprlib.cli import OneLineParser, run
from vprlib.demo.models import SIDE, make_demo_models


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="demo_models.py", description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="out/demo-models", help="folder for the cities, maps and training runs "
                        "(default %(default)s)")
    parser.add_argument("--side", type=int, default=SIDE, help="maps' side of the refiners and retrievers "
                        "(default %(default)s)")
    parser.add_argument("--ray-address", default="", help="Ray cluster address ('' = connect or start local)")
    args = parser.parse_args(argv)
    if args.side < 8:
        parser.error(f"--side must be >= 8, got {args.side}")
    try:
        make_demo_models(args.work, side=args.side, ray_address=args.ray_address)
    except (ValueError, FileNotFoundError) as exc:
        print(f"demo_models: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
