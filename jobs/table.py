"""The paper's Table 1 in kind on the synthetic city: retrain the refiners and every retriever, print Recall@1/5/10.

    python jobs/table.py --output out                   # make table: 75 minutes on a 2-core CPU
    python jobs/table.py --output out --parts study     # make study: the appearance study

Makes the demo's city (or reuses `<output>/city` when `make demo` made it), extracts its maps with the shipped demo
extractors, trains the demo-size refiners, then trains, indexes and evaluates one retriever per row of the table
(the paper's rows, and CosPlace on the ground-truth maps and on raw maps); the table and the study are
vprlib.demo.table. Sizes are the CPU's, not the paper's (--side, epochs, descriptor size): the table is printed with
them. Every step resumes, so a second run only evaluates again. Exit status 2 on bad arguments (one line on stderr).
"""

import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.demo.table import TableConfig, run_study, run_table


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="table.py", description=__doc__.split("\n")[0])
    add_flags(parser, TableConfig)
    try:
        config = TableConfig(**vars(parser.parse_args(argv)))
        config.row_list, config.part_list  # noqa: B018 (checks --rows and --parts)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if "table" in config.part_list:
            run_table(config)
        if "study" in config.part_list:
            run_study(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"table: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
