"""Train the demo extractors (a small SegFormer, DPT and Big-LaMa generator) on a synthetic city with Ray Train,
export them as safetensors, and measure them on the city's held-out captures.

    python jobs/synthcity.py --output out/city --static-rgb
    python jobs/train_demo.py --city out/city --output out/demo-train [--install]
    python jobs/train_demo.py --city out/city --output out/demo-train --evaluate-only [--models demo]

OUTPUT/segmenter, OUTPUT/depth, OUTPUT/inpainter hold the training runs (rerunning resumes them), OUTPUT/weights
the exported weights (a --models folder; --install copies them into vprlib/models/demo/, the `demo` preset) and
OUTPUT/evaluation.json the figures. Exit status: 0 on success, 2 on bad arguments or input (one line on stderr).
"""

import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.demo.extractors.job import DemoConfig, train_demo


def parse_args(argv: list[str] | None = None) -> DemoConfig:
    parser = OneLineParser(prog="train_demo.py", description=__doc__.split("\n\n")[0])
    add_flags(parser, DemoConfig)
    config = DemoConfig(**vars(parser.parse_args(argv)))
    try:
        config.role_list  # noqa: B018 (checks --roles)
    except ValueError as exc:
        parser.error(str(exc))
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        train_demo(config)
    except (ValueError, FileNotFoundError) as exc:  # not a city, no rgb_static/, another architecture in --output
        print(f"train_demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
