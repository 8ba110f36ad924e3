"""Generate the embedded synthetic city (docs/DESIGN.md, "Layouts") in the manifest layout.

    python jobs/synthcity.py --output DIR [--places N] [--side 128] [--seed 0] [--dense-train 0] [--workers 0]
        [--static-rgb]

Writes DIR/rgb/*.png, DIR/gt/*.npz, DIR/manifest.parquet, DIR/summary.json and the resolved DIR/config.json.
"""

import dataclasses
import json
import os
import sys
import time

from vprlib.cli import OneLineParser, run
from vprlib.demo.city import CityConfig, generate_city, resolve_workers


def parse_args(argv=None) -> tuple[str, CityConfig]:
    defaults = CityConfig()
    parser = OneLineParser(prog="synthcity.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder to write the city into")
    parser.add_argument("--places", type=int, default=defaults.places,
                        help=f"camera places; half train/val, half database/query (default {defaults.places}: "
                        "1,536 captures of 8 headings)")
    parser.add_argument("--side", type=int, default=defaults.side, help="image side in pixels (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of everything (default %(default)s)")
    parser.add_argument("--dense-train", type=int, default=defaults.dense_train,
                        help="visits per train place, spread over their CosPlace class (a 10 m cell, 30 degree "
                        "heading bins), so that CosPlace's grouping keeps classes of that many images; 0 = "
                        f"{defaults.train_visits} visits like the other places (default %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="processes, 0 = one per CPU")
    parser.add_argument("--static-rgb", action="store_true",
                        help="also write rgb_static/<id>.png, each capture without its dynamic objects (the demo "
                        "inpainter's targets: jobs/train_demo.py); the other outputs are unchanged")
    args = parser.parse_args(argv)
    try:
        config = CityConfig(places=args.places, side=args.side, seed=args.seed, dense_train=args.dense_train,
                            workers=args.workers, static_rgb=args.static_rgb)
    except ValueError as exc:
        parser.error(str(exc))
    return args.output, dataclasses.replace(config, workers=resolve_workers(config))


def main(argv=None) -> None:
    output, config = parse_args(argv)
    start = time.perf_counter()
    table = generate_city(config, output)
    seconds = time.perf_counter() - start
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    print(f"synthetic city in {output}: {summary['captures']} captures of {summary['places']} places "
          f"{summary['splits']} at {config.side}x{config.side}")
    print(f"static classes {summary['static_class_shares']}")
    print(f"observed classes {summary['observed_class_shares']}")
    print(f"dynamic pixels {summary['dynamic_share']:.1%}; {table.num_rows / seconds:.1f} images/s, "
          f"{seconds:.1f} s with {config.workers} worker(s)")


if __name__ == "__main__":
    sys.exit(run(main))
