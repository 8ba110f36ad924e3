"""The method end to end on the synthetic city with the shipped demo models: maps, index, Recall@N, located photos.

    python jobs/demo.py --output out

Makes the city the demo retrievers were trained on, then for each strategy (--strategies) extracts the maps of the
east half's captures with the `demo` models, indexes the database captures with the strategy's shipped demo
retriever, evaluates the query captures (Recall@1/5/10 within 25 m, and an HTML report), and locates a few query
photos as a user would (jobs/locate.py). It says which step it is on. Every step resumes: a second run only
re-evaluates. The run is vprlib.demo.run. Exit status 2 on bad arguments or missing demo weights (one line on
stderr), 130 on Ctrl-C.
"""

import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.demo.run import DemoConfig, run_demo


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="demo.py", description=__doc__.split("\n")[0])
    add_flags(parser, DemoConfig)
    config = DemoConfig(**vars(parser.parse_args(argv)))
    try:
        config.strategy_list  # noqa: B018 (checks --strategies)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run_demo(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
