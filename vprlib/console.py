"""What a job prints: its own lines, one progress line per long stage, and of Ray's output only what a user must act on.

Ray's defaults suit someone debugging Ray: when stdout is no terminal Ray Data logs a ten-line progress dump of every
operator every 10 s, and at INFO each dataset's execution plan, start and end; Ray Tune draws a status table per
trial event and a traceback per failed trial (the job reports failures itself, in one line). `quiet_ray()` (called
by `vprlib.cluster.connect` before Ray starts, so every job gets it) keeps Ray Data's own progress bar on a terminal,
one bar per dataset rather than one per operator, and none elsewhere; it lowers Ray Data's console output to warnings
(its log files keep everything), drops the few warnings in `RAY_NOISE`, each with the reason no user acts on it,
and the traceback of a race in Ray Data's file listing that ends a complete listing (`_quiet_listing_race`);
`train_logging()` does the same for a Ray Train run, and `quiet_worker()` in the worker processes, whose output Ray
forwards to the job's console.

`Progress` is the job's own progress line for a long loop: a live tqdm bar on a terminal, one line when the stage
ends everywhere else, so a log file holds one line per stage, not one per refresh.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
import warnings

# (logger, start of the message, why a user need not see it). A filter matches the start of the message only, so
# anything else those loggers say still comes through. A logger given as a .py path is one Ray names by its file
# (relative to the ray package).
RAY_NOISE = (
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled",
     "said at every start of a local Ray; the README says how a client finds the token"),
    ("ray.data.dataset", "Warning: The Ray cluster currently does not have any available CPUs",
     "said when the previous stage's actors still hold the CPUs; vprlib.cluster.check refuses work that can never "
     "start, before it starts"),
    ("ray.data._internal.progress", "Progress bars",
     "that this module turned Ray Data's progress bars off (no terminal) or to one bar per dataset"),
    ("ray.data._internal.progress.utils", "Truncating long operator name",
     "about the bar's label, not the work"),
    ("ray.tune.execution.tune_controller", "Trial task failed for trial",
     "a traceback per failed trial: the sweep names each trial's error in results.parquet and says how many failed"),
    ("ray.tune.tune", "Trials did not complete",
     "the sweep's own summary says which trials failed"),
    ("ray.tune.tune", "Stop signal received",
     "Ctrl-C: the job says it was interrupted, in one line"),
    ("ray.tune.tune", "Experiment has been interrupted",
     "its hint (Tuner.restore) is not how a job resumes: rerunning the command does"),
    ("train/v2/_internal/execution/context.py", "Reporting training result",
     "a line per checkpoint from each training worker; the run prints its own line per epoch"),
    ("ray.train.v2._internal.execution.controller.placement_group_cleaner", "Detected that the Ray Train controller",
     "the clean-up after every finished training run"),
    ("ray.train.v2._internal.execution.preemption", "PreemptionWatcher poll failed",
     "a traceback from Ray Train's watch for preempted nodes when the job's Ray shuts down under it (Ctrl-C)"),
)


class _Drop(logging.Filter):
    """Drops records whose message starts with one of `starts`."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def on_terminal() -> bool:
    """Whether stdout is a terminal (Ray Data decides between its bar and its logged dumps on the same test)."""
    return sys.stdout.isatty()


def quiet_ray() -> None:
    """Configure Ray's console output for this process (idempotent); see the module docstring."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = on_terminal()
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":  # Ray Data's console handler; its file handlers keep INFO
            handler.setLevel(logging.WARNING)
    _drop_noise()


def quiet_worker() -> None:
    """The same in each of the job's Ray worker processes (Ray runs it first there: `worker_process_setup_hook`),
    whose output Ray forwards to the job's console: the noise dropped, Ray Data's console lowered to warnings (it
    reconfigures its logging for every dataset a worker runs, from this variable). RAY_ADDRESS names the worker's own
    cluster: Ray Train's clean-up thread looks its controller up through Ray's state API without an address, which
    fails with a traceback on a machine that runs several Ray instances."""
    import ray

    os.environ["RAY_DATA_LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    _drop_noise()


def _drop_noise() -> None:
    """Filters for RAY_NOISE on its loggers (replacing earlier ones), and Ray's own deprecation warnings off: they
    name Ray's internals, which a user cannot change (a deprecated call of this package's is still shown)."""
    import ray

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
    starts: dict[str, tuple[str, ...]] = {}
    for name, start, _ in RAY_NOISE:
        name = os.path.join(os.path.dirname(ray.__file__), name) if name.endswith(".py") else name
        starts[name] = (*starts.get(name, ()), start)
    for name, prefixes in starts.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _Drop)]:
            logger.removeFilter(old)
        logger.addFilter(_Drop(prefixes))
    if not getattr(threading.excepthook, "quiets_listing_race", False):
        threading.excepthook = _quiet_listing_race(threading.excepthook)


def _quiet_listing_race(previous):
    """A threading.excepthook that passes every thread's error on to `previous` but one: the InterruptedError that
    Ray Data's file listing (its ListFiles tasks) raises in its completion thread when the listing's consumer has
    already taken every file and closed the queue. The listing is complete; only the traceback would be printed."""

    def hook(args) -> None:
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
        if args.exc_type is InterruptedError and any(f.filename.endswith("dynamic_work_queue.py") for f in frames):
            return
        previous(args)

    hook.quiets_listing_race = True
    return hook


def train_logging():
    """Ray Train's logging for a training run: warnings and errors on the console (its controller and workers say
    at INFO how they request resources, start the worker group and report each checkpoint; the run prints its own
    line per epoch). Its log files keep every level."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="WARNING")


class Progress:
    """One line for a stage of `total` units: `with Progress("city", 1536, "captures") as bar: ... bar.update(n)`.

    On a terminal a tqdm bar (count, rate, time left) redrawn in place; elsewhere one line when the stage ends:
    `city: 1536/1536 captures in 3m40s (7.0 captures/s)`."""

    def __init__(self, what: str, total: int, unit: str = "items"):
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self._start = time.perf_counter()
        self._bar = None
        if on_terminal():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=f" {unit}", file=sys.stdout, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            return
        seconds = time.perf_counter() - self._start
        print(f"{self.what}: {self.done}/{self.total} {self.unit} in {duration(seconds)} "
              f"({self.done / max(seconds, 1e-9):.1f} {self.unit}/s)", flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()


def duration(seconds: float) -> str:
    """3.2 s, 47 s, 3m40s, 1h05m."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
