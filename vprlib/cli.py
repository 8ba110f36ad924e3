"""Command-line helpers shared by the thin jobs in jobs/."""

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives one line on stderr (exit status 2), not the whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def on_off(value: bool) -> str:
    """How --help shows an on/off flag's default."""
    return "on" if value else "off"


def from_ray(exc: BaseException) -> bool:
    """Whether `exc` was raised inside Ray (ray.init, a task or the Ray Data pipeline, whose errors are reported as
    rows or with Ray's own traceback) rather than by the job's own checks."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").split(".")[0] == "ray":
            return True
        tb = tb.tb_next
    return False
