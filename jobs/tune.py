"""Sweep retrievers on Ray Tune: backbones, learning rates, descriptor sizes and input maps, under ASHA.

    python jobs/tune.py --maps out/city/gt_maps --output out/sweep --model cosplace --backbones resnet18,resnet50 \\
        --lrs 1e-5,1e-4 --max-epochs 8
    python jobs/tune.py --maps out/maps --output out/sweep-nv --model netvlad --lr-range 1e-5:1e-3 --samples 4

Every other flag of jobs/train.py (--side, --batch-size, --min-images-per-class, ...) is passed to every trial.
Rerunning the same command resumes an interrupted sweep. Exit status 2 on bad arguments or input, 1 when every trial
failed (one line each, naming the first trial's error); a sweep where some trials failed says how many.
"""

import argparse
import sys

from vprlib.cli import OneLineParser, add_flags, run
from vprlib.train.config import TrainConfig, train_config
from vprlib.train.families import family as family_record
from vprlib.train.families import retriever_families
from vprlib.tune import SweepConfig, SweepFailed, check_maps, parse_range


def _listed(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {kind.__name__}: {text!r}") from None
    return parse


def build_parser(family: str) -> OneLineParser:
    parser = OneLineParser(prog="tune.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, choices=retriever_families(), help="the retriever family")
    sweep = parser.add_argument_group("the search space and scheduler")
    sweep.add_argument("--backbones", type=_listed(str), default=(), help="CosPlace backbones, e.g. resnet18,resnet50")
    sweep.add_argument("--lrs", type=_listed(float), default=(), help="learning rates, e.g. 1e-5,1e-4")
    sweep.add_argument("--lr-range", type=str, default="", help="low:high, learning rates drawn log-uniformly")
    sweep.add_argument("--descriptor-sizes", type=_listed(int), default=(), help="CosPlace descriptor sizes")
    sweep.add_argument("--inputs", type=_listed(str), default=(), help="input maps, e.g. depth+seg,depth,seg")
    sweep.add_argument("--max-epochs", type=int, default=0, help="epochs of a trial run to the end (0 = --epochs)")
    add_flags(sweep, SweepConfig, skip=("base", "backbones", "lrs", "lr_range", "descriptor_sizes", "inputs"))
    sweep.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers of each trial (DDP)")
    add_flags(parser.add_argument_group("training, shared by every trial (jobs/train.py's flags)"), TrainConfig,
              skip=("family", "targets", "workers"))
    record = family_record(family)
    add_flags(parser.add_argument_group(f"{family} options, shared by every trial"), record.options)
    parser.set_defaults(**record.defaults)
    return parser


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--model", choices=retriever_families(), default=retriever_families()[0])
    known, _ = first.parse_known_args(argv)
    parser = build_parser(known.model)
    args = vars(parser.parse_args(argv))
    space = {k: args.pop(k) for k in ("backbones", "lrs", "descriptor_sizes", "inputs")}
    sweep = {k: args.pop(k) for k in ("samples", "scheduler", "grace_period", "reduction_factor",
                                      "concurrent_trials")}
    family, max_epochs, workers = args.pop("model"), args.pop("max_epochs"), args.pop("workers_per_trial")
    lr_range = args.pop("lr_range")
    try:
        if max_epochs:
            args["epochs"] = max_epochs
        base = train_config(family, args.pop("maps"), args.pop("output"), workers=workers, **args)
        check_maps(base)  # the maps first: a mistyped --maps before the search space
        return SweepConfig(base=base, lr_range=parse_range(lr_range) if lr_range else None, **space, **sweep)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    sweep = parse_args(argv)
    from vprlib.tune import run_sweep

    try:
        run_sweep(sweep)
    except (ValueError, FileNotFoundError) as exc:
        print(f"tune: error: {exc}", file=sys.stderr)
        return 2
    except SweepFailed as exc:  # every trial failed: nothing to choose from
        print(f"tune: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
