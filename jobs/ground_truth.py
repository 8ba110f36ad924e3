"""HoliCity's ground truth (depth and segmentation of its 3D model) as a maps table: the refiners' targets.

    python jobs/manifest.py holicity --root /data/holicity --output out/holicity.parquet
    python jobs/ground_truth.py --input out/holicity.parquet --output out/holicity-gt [--side 512]
    python jobs/train.py refiner --maps out/maps-none --targets out/holicity-gt --output out/refiners

Each view of the manifest with ground-truth files (`gt_depth_uri`, `gt_seg_uri`) becomes a row of strategy
ground-truth: inverse metres and HoliCity's labels in refined4 (road merged into terrain, "others" ignored), resized
by nearest neighbour to --side. Local or s3://; rerunning resumes. Exit status 2 on bad arguments or input (one line
on stderr), 1 when a row failed (its error is in the table).
"""

import argparse
import sys

from vprlib.cli import OneLineParser, run


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="ground_truth.py", description=__doc__.split("\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--input", required=True, help="a HoliCity manifest (jobs/manifest.py holicity)")
    parser.add_argument("--output", required=True, help="the maps table's folder (local or s3://)")
    parser.add_argument("--side", type=int, default=512, help="maps' side (HoliCity's: 512)")
    parser.add_argument("--ray-address", default="", help="Ray cluster address ('' = connect or start local)")
    args = parser.parse_args(argv)
    if args.side < 1:
        parser.error(f"--side must be >= 1, got {args.side}")
    from vprlib.data.holicity import write_ground_truth
    from vprlib.data.manifest import ManifestError
    from vprlib.maps import MapSpecError

    try:
        counts = write_ground_truth(args.input, args.output, args.side, args.ray_address)
    except (ManifestError, MapSpecError, FileNotFoundError) as exc:
        print(f"ground_truth: error: {exc}", file=sys.stderr)
        return 2
    return 1 if counts.get("error") else 0


if __name__ == "__main__":
    sys.exit(run(main))
