"""Command-line helpers shared by the thin jobs in jobs/: one-line errors, flags made from config dataclasses, and
what Ctrl-C does (`run`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line on stderr (exit status 2), not the whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def help_text(text: str) -> dict:
    """A config field's metadata carrying its --help line (`field(default=1, metadata=help_text("..."))`)."""
    return {"help": text}


def on_off(value: bool) -> str:
    """How --help shows an on/off flag's default."""
    return "on" if value else "off"


_KINDS = {"int": int, "float": float, "str": str}


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_class: type,
              skip: tuple[str, ...] = ()) -> list[str]:
    """A flag per scalar field of a config dataclass (`--batch-size` for batch_size), its help text from the field's
    metadata and its default shown; bool fields become --x/--no-x. Returns the field names added."""
    names = []
    for field in dataclasses.fields(config_class):
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        if field.name in skip or kind not in (*_KINDS, "bool"):
            continue
        flag = "--" + field.name.replace("_", "-")
        helptext = field.metadata.get("help", "")
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=f"{helptext} (default: {on_off(field.default)})")
        elif required:
            parser.add_argument(flag, type=_KINDS[kind], required=True, help=helptext)
        else:
            shown = "''" if field.default == "" else "%(default)s"
            parser.add_argument(flag, type=_KINDS[kind], default=field.default, help=f"{helptext} (default: {shown})")
        names.append(field.name)
    return names


def from_ray(exc: BaseException) -> bool:
    """Whether `exc` was raised inside Ray (ray.init, a task or the Ray Data pipeline, whose errors are reported as
    rows or with Ray's own traceback) rather than by the job's own checks."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "ray":
            return True
        tb = tb.tb_next
    return False


def run(main) -> int:
    """Run a job's `main()` and return its exit status: Ctrl-C, wherever it lands (Ray starting, a stage running,
    Ray shutting down), is one line on stderr and status 130, not a traceback. A second Ctrl-C is ignored while the
    job's Ray shuts down (at exit), so it cannot interrupt the clean-up either."""
    name = os.path.basename(sys.argv[0]).removesuffix(".py")
    try:
        return main()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"{name}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
