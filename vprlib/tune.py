"""Sweeps over retrievers on Ray Tune: which backbone, learning rate, descriptor size and input encoding pay on a city.

Every trial is one run of the training job (`vprlib.train.run_training`, the same function and loop: a Ray Train
run with its own workers, DDP when `workers_per_trial` > 1) into `OUTPUT/trials/<trial id>/`, reporting each epoch to
Tune through Ray Train's TuneReportCallback. The search space is a grid over the listed choices, times `samples`
draws of the learning rate from a log-uniform range when one is given. ASHA (asynchronous successive halving) stops
trials whose validation Recall@1 trails at its rungs; FIFO runs every trial to the end. Rerunning the same command
resumes an interrupted sweep: finished trials are kept, unfinished ones continue from their last checkpoint.

Output: `results.parquet` (a row per trial: its settings, Recall@1/5/10 at its best epoch, epochs run, stopped early,
wall time, checkpoint), `best_config.json`, and `best.pt`, the best trial's checkpoint (index-job ready).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import signal
import time
from dataclasses import dataclass, field, fields

import pyarrow as pa
import pyarrow.parquet as pq

from vprlib.cli import help_text
from vprlib.models.archs import BACKBONES, MODALITIES
from vprlib.storage import url_to_fs
from vprlib.train.config import TrainConfig, with_options
from vprlib.train.families import retriever_families

SCHEDULERS = ("asha", "fifo")
SCORE = "recall@1"
TRIAL_RETRIES = 2  # times Tune starts a failed trial again



class SweepFailed(RuntimeError):
    """Every trial of the sweep failed: no best trial, no best.pt."""


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: its search space and scheduler; `base` holds every other training setting, shared by all trials."""

    base: TrainConfig
    backbones: tuple[str, ...] = field(default=(), metadata=help_text("CosPlace backbones to try (grid)"))
    lrs: tuple[float, ...] = field(default=(), metadata=help_text("learning rates to try (grid)"))
    lr_range: tuple[float, float] | None = field(default=None, metadata=help_text(
        "low:high: learning rates drawn log-uniformly, --samples of them"))
    descriptor_sizes: tuple[int, ...] = field(default=(), metadata=help_text("CosPlace descriptor sizes (grid)"))
    inputs: tuple[str, ...] = field(default=(), metadata=help_text(f"input maps (grid): {', '.join(MODALITIES)}"))
    samples: int = field(default=1, metadata=help_text("draws from --lr-range (each grid point, that many times)"))
    scheduler: str = field(default="asha", metadata=help_text(
        "asha (stop trials whose Recall@1 trails at the rungs) or fifo (every trial to the end)"))
    grace_period: int = field(default=1, metadata=help_text("asha: epochs every trial runs before it may be stopped"))
    reduction_factor: int = field(default=2, metadata=help_text("asha: 1 in this many trials goes on at each rung"))
    concurrent_trials: int = field(default=0, metadata=help_text("trials at once (0 = as many as the resources allow)"))

    def __post_init__(self):
        family = self.base.family
        retrievers = retriever_families()
        if family not in retrievers:
            raise ValueError(f"sweeps train retrievers: --model {' or '.join(retrievers)}, not {family!r}")
        unknown = [b for b in self.backbones if b not in BACKBONES]
        if unknown:
            raise ValueError(f"unknown backbone(s) {unknown}; known: {', '.join(BACKBONES)}")
        settings = {f.name for f in fields(self.base.options)}
        for flag, name, values in (("--backbones", "backbone", self.backbones),
                                   ("--descriptor-sizes", "descriptor_size", self.descriptor_sizes)):
            if values and name not in settings:
                raise ValueError(f"{family} has no {name.replace('_', ' ')} setting, so {flag} cannot be swept: "
                                 f"sweep --lrs/--inputs")
        bad = [i for i in self.inputs if i not in MODALITIES]
        if bad:
            raise ValueError(f"unknown input(s) {bad}; known: {', '.join(MODALITIES)}")
        if self.lr_range is not None and not 0 < self.lr_range[0] < self.lr_range[1]:
            raise ValueError(f"--lr-range must be low:high with 0 < low < high, got {self.lr_range}")
        if self.lrs and self.lr_range is not None:
            raise ValueError("give --lrs or --lr-range, not both")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; known: {', '.join(SCHEDULERS)}")
        if min(self.samples, self.grace_period, self.reduction_factor - 1) < 1 or self.concurrent_trials < 0:
            raise ValueError("samples and grace_period must be >= 1, reduction_factor >= 2, concurrent_trials >= 0")
        if self.trials() < 2:
            raise ValueError("the search space holds one trial: list at least two choices, or a range with "
                             "--samples 2 or more")

    def grid(self) -> dict[str, tuple]:
        """The listed choices, by training setting."""
        choices = {"backbone": self.backbones, "lr": self.lrs, "descriptor_size": self.descriptor_sizes,
                   "input": self.inputs}
        return {name: values for name, values in choices.items() if values}

    def trials(self) -> int:
        return math.prod(len(v) for v in self.grid().values()) * (self.samples if self.lr_range else 1)


def check_maps(base: TrainConfig) -> None:
    """The sweep's maps, before its search space and before Ray starts: the folders exist and --maps is a maps
    table (every trial would fail on it otherwise, each after starting)."""
    from vprlib.maps import MapSpecError, read_spec
    from vprlib.train.config import check_inputs

    check_inputs(base)
    try:
        read_spec(base.maps)
    except MapSpecError as exc:
        raise ValueError(f"--maps {exc}") from None


def parse_range(text: str) -> tuple[float, float]:
    """'1e-6:1e-3' -> (1e-6, 1e-3); ValueError naming the text otherwise."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        raise ValueError(f"--lr-range must be low:high, e.g. 1e-6:1e-3, got {text!r}") from None


def _search_space(sweep: SweepConfig) -> dict:
    from ray import tune

    space = {name: tune.grid_search(list(values)) for name, values in sweep.grid().items()}
    if sweep.lr_range is not None:
        space["lr"] = tune.loguniform(*sweep.lr_range)
    return space


def trial_name(settings: dict) -> str:
    """A trial's folder name, from its settings (readable, and the same when the sweep resumes)."""
    text = "-".join(f"{k}={settings[k]:.3g}" if isinstance(settings[k], float) else f"{k}={settings[k]}"
                    for k in sorted(settings))
    return "".join(c if c.isalnum() or c in "=-." else "_" for c in text)


def _trial(trial_settings: dict, base: dict, output: str) -> None:
    """One trial: the training job with the trial's settings, reporting each epoch to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from vprlib.train.loop import run_training

    config = with_options(TrainConfig.from_dict(base), **trial_settings)
    trial_output = posixpath.join(output, "trials", trial_name(trial_settings))
    run_training(with_options(config, output=trial_output), callbacks=(TuneReportCallback(),))


def run_sweep(sweep: SweepConfig) -> pa.Table:
    """Run (or resume) the sweep; return the results table (also written as results.parquet)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from vprlib.cluster import connect
    from vprlib.train.loop import ray_storage

    start = time.perf_counter()
    # Tune's newer console output draws its configuration box and an error block per failed trial even when silent;
    # the older one at verbose 0 says nothing, and the job prints its own line per trial (trial_lines).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    cluster = connect(sweep.base.ray_address)
    cluster.check_shared(sweep.base.output, "--output")  # trials write there from any node
    concurrent = sweep.concurrent_trials or concurrent_trials(cluster.resources, sweep.base)
    storage, filesystem = ray_storage(posixpath.join(sweep.base.output, "_tune"))
    trainable = tune.with_resources(tune.with_parameters(_trial, base=sweep.base.to_dict(), output=sweep.base.output),
                                    {"cpu": 0.01})  # the trial only drives its Ray Train run, whose workers hold CPUs
    if tune.Tuner.can_restore(posixpath.join(storage, "sweep"), storage_filesystem=filesystem):
        print("tune: resuming the sweep in this output: finished trials are kept", flush=True)
        tuner = tune.Tuner.restore(posixpath.join(storage, "sweep"), trainable, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=sweep.base.epochs, grace_period=sweep.grace_period,
                                   reduction_factor=sweep.reduction_factor) if sweep.scheduler == "asha"
                     else FIFOScheduler())
        tuner = tune.Tuner(
            trainable, param_space=_search_space(sweep),
            tune_config=tune.TuneConfig(metric=SCORE, mode="max", scheduler=scheduler,
                                        num_samples=sweep.samples if sweep.lr_range else 1,
                                        max_concurrent_trials=concurrent),
            # A trial whose run fails (its node lost with the driver of its Ray Train run) starts again, resuming
            # from its own last.pt.
            run_config=tune.RunConfig(name="sweep", storage_path=storage, storage_filesystem=filesystem, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                      callbacks=[trial_lines(sweep.trials())]))
    with tune_stops_on_ctrl_c() as interrupted:
        grid = tuner.fit()
    if interrupted:
        raise KeyboardInterrupt
    table = results_table(grid, sweep)
    failed = failure_note(table)
    write_results(sweep, table, time.perf_counter() - start, show=not failed.startswith("all"))
    if failed.startswith("all"):
        raise SweepFailed(failed)
    if failed:
        print(f"tune: warning: {failed}", flush=True)
    return table


def trial_lines(total: int):
    """A Tune callback that prints a line per trial as it ends (Tune's own status tables are off): its settings and
    its last Recall@1, or its error. Made here rather than at import, so that reading a sweep's flags needs no Ray."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def __init__(self):
            self.ended = 0

        def say(self, trial, how: str) -> None:
            self.ended += 1
            settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in trial.config.items())
            print(f"tune: trial {self.ended} of {total} ({settings}) {how}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            score = result.get(SCORE)
            self.say(trial, f"ended after epoch {result.get('epoch', 0)}"
                     + (f", Recall@1 {score:.3f}" if isinstance(score, float) else ""))

        def on_trial_error(self, iteration, trials, trial, **info):
            error = trial.get_pickled_error()
            self.say(trial, "failed" + (f": {root_error(error)}" if error is not None else ""))

    return TrialLines()


@contextlib.contextmanager
def tune_stops_on_ctrl_c():
    """While the sweep runs, Ctrl-C asks Tune to stop it as Tune's own handler would (SIGUSR1, which Tune always
    handles: trials stopped, the sweep's state saved for the rerun that resumes it) and is remembered, so that the
    job can say it was interrupted rather than report a finished sweep; a second Ctrl-C interrupts at once."""
    interrupted = []

    def first_ctrl_c(signum, frame):
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGUSR1)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune's own would swallow it
    previous = signal.signal(signal.SIGINT, first_ctrl_c)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def failure_note(table: pa.Table) -> str:
    """'' when no trial failed; else how many did, and the first one's error (the rest are in results.parquet)."""
    errors = [e for e in table["error"].to_pylist() if e] if table.num_rows else []
    if not errors:
        return ""
    share = f"all {table.num_rows}" if len(errors) == table.num_rows else f"{len(errors)} of {table.num_rows}"
    return f"{share} trials failed (their errors: results.parquet); the first: {errors[0]}"


def root_error(error: BaseException) -> str:
    """A failed trial's error in one line: the exception the training raised, not the Ray layers wrapped around it
    (a trial's error is Ray Tune's, holding Ray Train's, holding the task's)."""
    from vprlib.data.manifest import one_line

    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = getattr(error, "cause", None) or error.__cause__
    for candidate in reversed(seen):
        if type(candidate).__module__.split(".")[0] != "ray":
            return f"{type(candidate).__name__}: {one_line(candidate)}"[:300]
    return one_line(seen[-1]).split(" Traceback ")[0][:300]


def concurrent_trials(resources: dict, base: TrainConfig) -> int:
    """Trials that fit at once: each holds its workers' CPUs (and GPUs), and one CPU stays free for the Ray Data
    tasks that feed them (without it, trials wait on each other's CPUs forever)."""
    gpus = base.gpus_per_worker if base.gpus_per_worker > 0 else 0.0
    fits = (resources.get("CPU", 1) - 1) / max(base.workers * base.cpus_per_worker, 1e-9)
    if gpus:
        fits = min(fits, resources.get("GPU", 0) / (base.workers * gpus))
    return max(1, int(fits))


def results_table(grid, sweep: SweepConfig) -> pa.Table:
    """A row per trial, from each trial's own metrics.parquet (the training job's record)."""
    from vprlib.train.loop import read_metrics

    rows = []
    for result in grid:
        settings = dict(result.config)
        trial_id = trial_name(settings)
        output = posixpath.join(sweep.base.output, "trials", trial_id)
        try:
            epochs = read_metrics(output).to_pylist()
        except (FileNotFoundError, OSError):
            epochs = []
        scored = [e for e in epochs if e.get(SCORE) is not None and not math.isnan(e[SCORE])]
        best = max(scored, key=lambda e: e[SCORE]) if scored else {}
        last = epochs[-1]["epoch"] if epochs else 0
        effective = with_options(sweep.base, **settings)
        values = {"lr": effective.lr, **{k: getattr(effective.options, k, None) for k in ("backbone", "descriptor_size",
                                                                                         "input")}}
        rows.append({"trial": trial_id, **values,
                     **{f"recall@{n}": best.get(f"recall@{n}") for n in (1, 5, 10)},
                     "best_epoch": best.get("epoch"), "epochs_run": last,
                     "stopped_early": result.error is None and last < sweep.base.epochs,
                     "error": None if result.error is None else root_error(result.error),
                     "wall_s": float(sum(e.get("wall_s") or 0 for e in epochs)),
                     "checkpoint": posixpath.join(output, "best.pt")})
    return pa.Table.from_pylist(rows)


def write_results(sweep: SweepConfig, table: pa.Table, seconds: float, show: bool = True) -> None:
    """results.parquet, best_config.json and best.pt (a copy of the best trial's checkpoint); a printed table
    (`show`: not when every trial failed, which the job says in one line)."""
    fs, root = url_to_fs(sweep.base.output)
    with fs.open(posixpath.join(root, "results.parquet"), "wb") as f:
        pq.write_table(table, f)
    if not show:
        return
    rows = sorted(table.to_pylist(), key=lambda r: -(r[SCORE] if r[SCORE] is not None else -1))
    print(format_results(rows, sweep, seconds), flush=True)
    output = sweep.base.output
    if not rows or rows[0][SCORE] is None:
        print(f"tune: trials in {posixpath.join(output, 'trials')}; no trial scored, so no best.pt", flush=True)
        return
    print(f"tune: trials in {posixpath.join(output, 'trials')}; best: {posixpath.join(output, 'best.pt')}", flush=True)
    best = rows[0]
    config = with_options(sweep.base, **{k: best[k] for k in ("backbone", "lr", "descriptor_size", "input")
                                         if best[k] is not None})
    with fs.open(posixpath.join(root, "best_config.json"), "w") as f:
        f.write(json.dumps({**config.to_dict(), "trial": best["trial"], SCORE: best[SCORE]}, indent=2,
                           default=str))
    fs.copy(url_to_fs(best["checkpoint"])[1], posixpath.join(root, "best.pt"))


def format_results(rows: list[dict], sweep: SweepConfig, seconds: float) -> str:
    epochs = sum(r["epochs_run"] for r in rows)
    full = len(rows) * sweep.base.epochs
    lines = [f"tune: {len(rows)} trials, {epochs} trial-epochs of {full} had every trial run to the end "
             f"({sweep.scheduler}); {seconds:.0f} s"]
    lines.append(f"{'backbone':<10} {'lr':>9} {'size':>5} {'input':<9} {'R@1':>6} {'R@5':>6} "
                 f"{'R@10':>6} {'epochs':>6} stopped")
    for r in rows:
        lines.append(f"{str(r['backbone'] or '-'):<10} {_num(r['lr']):>9} "
                     f"{str(r['descriptor_size'] or '-'):>5} {str(r['input'] or '-'):<9} {_num(r['recall@1']):>6} "
                     f"{_num(r['recall@5']):>6} {_num(r['recall@10']):>6} {r['epochs_run']:>6} "
                     f"{'early' if r['stopped_early'] else ('error' if r['error'] else 'no')}")
    return "\n".join(lines)


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if value < 0.01 else f"{value:.3f}"

