"""Extract depth and segmentation maps from a city's photos with Ray Data (DESIGN.md, "What a user does" 2).

    python jobs/extract.py --input out/city --output out/maps --strategy inpaint --models tiny --side 128
    ray job submit --working-dir . -- python jobs/extract.py --input s3://bucket/city --output s3://bucket/maps

Rerunning the same command after an interruption writes only the missing rows. Exit status: 0 on success,
1 when more rows failed than --max-failure-fraction allows (or the output is incomplete), 2 on bad arguments.
"""

import argparse
import dataclasses
import sys

from vprlib.cli import OneLineParser
from vprlib.extract.config import ExtractConfig, field_help


def parse_args(argv: list[str] | None = None) -> ExtractConfig:
    parser = OneLineParser(prog="extract.py", description=__doc__.split("\n")[0])
    helps = field_help()
    for field in dataclasses.fields(ExtractConfig):
        flag = "--" + field.name.replace("_", "-")
        required = field.default is dataclasses.MISSING
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=helps[field.name])
            continue
        kind = {"int": int, "float": float}.get(field.type, str)
        default = None if required else field.default
        suffix = "" if required else " (default: %(default)s)"
        parser.add_argument(flag, type=kind, required=required, default=default, help=helps[field.name] + suffix)
    args = parser.parse_args(argv)
    try:
        return ExtractConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from vprlib.extract.pipeline import job_failed, run_extract

    try:
        summary = run_extract(config)
    except (ValueError, FileNotFoundError) as exc:  # bad manifest, models, output folder or cluster size
        print(f"extract: error: {exc}", file=sys.stderr)
        return 2
    reason = job_failed(summary, config)
    if reason:
        print(f"extract: FAILED: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
