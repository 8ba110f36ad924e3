"""Train the refiners, CosPlace or NetVLAD on maps tables with Ray Train.

    python jobs/train.py refiner --maps out/maps-none --targets out/city/gt_maps --output out/refiners
    python jobs/train.py cosplace --maps out/city/gt_maps --output out/cosplace --backbone resnet18
    python jobs/train.py netvlad --maps out/maps --output out/netvlad
    ray job submit --working-dir . -- python jobs/train.py cosplace --maps s3://bucket/maps --output s3://bucket/cp

Rerunning the same command after an interruption resumes from the last checkpoint. Exit status: 0 on success, 2 on
bad arguments or input (one line on stderr).
"""

import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.train.config import TrainConfig, check_inputs, train_config
from vprlib.train.families import FAMILIES


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="train.py", description=__doc__.split("\n")[0])
    families = parser.add_subparsers(dest="family", required=True, metavar="{" + ",".join(FAMILIES) + "}")
    for name, family in FAMILIES.items():
        doc = family.options.__doc__
        sub = families.add_parser(name, help=doc.split("\n")[0], description=doc)
        sub.error = parser.error  # one line for a bad flag of a family too
        add_flags(sub, TrainConfig, skip=("family",) if family.targets else ("family", "targets"))
        add_flags(sub.add_argument_group(f"{name} options"), family.options)
        sub.set_defaults(**family.defaults)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    try:
        return train_config(args.pop("family"), args.pop("maps"), args.pop("output"), **args)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        check_inputs(config)  # a mistyped folder in one line, before torch and Ray load
    except ValueError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)  # as the parser words a bad flag
        return 2
    from vprlib.train.loop import run_training

    try:
        run_training(config)
    except (ValueError, FileNotFoundError) as exc:  # maps of the wrong kind, too small a city, another architecture
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
