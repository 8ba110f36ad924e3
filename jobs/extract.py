"""Extract depth and segmentation maps from a city's photos with Ray Data (DESIGN.md, "What a user does" 2).

    python jobs/extract.py --input out/city --output out/maps --strategy inpaint --models tiny --side 128
    ray job submit --working-dir . -- python jobs/extract.py --input s3://bucket/city --output s3://bucket/maps

Rerunning the same command after an interruption writes only the missing rows. Exit status: 0 on success,
1 when more rows failed than --max-failure-fraction allows (or the output is incomplete), 2 on bad arguments or
input (a bad manifest, storage that cannot be reached or refuses access: one line on stderr, no traceback).
"""

import argparse
import dataclasses
import sys

from vprlib.cli import OneLineParser, from_ray, on_off
from vprlib.data.manifest import StorageError, check_reachable, one_line, storage_errors
from vprlib.extract.config import ExtractConfig, field_help


def parse_args(argv: list[str] | None = None) -> ExtractConfig:
    parser = OneLineParser(prog="extract.py", description=__doc__.split("\n")[0])
    helps = field_help()
    for field in dataclasses.fields(ExtractConfig):
        flag = "--" + field.name.replace("_", "-")
        required = field.default is dataclasses.MISSING
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=f"{helps[field.name]} (default: {on_off(field.default)})")
            continue
        kind = {"int": int, "float": float}.get(field.type, str)
        default = None if required else field.default
        shown = "''" if default == "" else "%(default)s"
        suffix = "" if required else f" (default: {shown})"
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
        for uri in (config.input, config.output):
            check_reachable(uri)  # an unreachable endpoint or missing credentials, named before Ray starts
        summary = run_extract(config)
    except (ValueError, FileNotFoundError, StorageError) as exc:  # bad manifest, models, storage, cluster size
        print(f"extract: error: {exc}", file=sys.stderr)
        return 2
    except storage_errors() as exc:
        if from_ray(exc):  # the pipeline's own failures (rows are error rows; a crash keeps its traceback)
            raise
        print(f"extract: error: storage: {one_line(exc)}", file=sys.stderr)  # e.g. writing to the output refused
        return 2
    reason = job_failed(summary, config)
    if reason:
        print(f"extract: FAILED: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
