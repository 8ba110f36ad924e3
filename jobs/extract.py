"""Extract depth and segmentation maps from a city's photos with Ray Data.

    python jobs/extract.py --input out/city --output out/maps --strategy inpaint --models tiny --side 128
    ray job submit --working-dir . -- python jobs/extract.py --input s3://bucket/city --output s3://bucket/maps

Rerunning the same command after an interruption writes only the missing rows. Exit status: 0 on success,
1 when more rows failed than --max-failure-fraction allows (or the output is incomplete), 2 on bad arguments or
input (a bad manifest, storage that cannot be reached or refuses access: one line on stderr, no traceback).
"""

import sys

from vprlib.cli import OneLineParser, add_flags, from_ray, run
from vprlib.data.manifest import StorageError, check_reachable, one_line, storage_errors
from vprlib.extract.config import ExtractConfig, RunOptions, extract_config
from vprlib.spec import MapSpec


def parse_args(argv: list[str] | None = None) -> ExtractConfig:
    parser = OneLineParser(prog="extract.py", description=__doc__.split("\n")[0])
    add_flags(parser, ExtractConfig)
    add_flags(parser.add_argument_group("the maps (recorded with them; a rerun must match)"), MapSpec)
    add_flags(parser.add_argument_group("how the job runs (speed and resources only)"), RunOptions)
    args = vars(parser.parse_args(argv))
    try:
        return extract_config(**args)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from vprlib.extract.output import job_failed
    from vprlib.extract.pipeline import run_extract

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
    sys.exit(run(main))
