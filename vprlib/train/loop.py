"""What every training run shares: the Ray Train harness on the driver, and on the workers the bookkeeping (resume,
metrics, checkpoints: `WorkerRun`) and the loop (`epoch_loop`: resume or epoch 0, then train, validate, report each
epoch) every family's training function runs.

The driver (`run_training`) checks the maps before any worker starts (the family's `prepare`), refuses to resume an
output of another architecture, connects to the cluster and starts a `TorchTrainer`: one training function per
family, DDP over `--workers`, the maps as Ray Data shards, a checkpoint each epoch through `ray.train.report`, and a
`FailureConfig` that restarts failed workers from the last checkpoint. Rerunning the command resumes: the workers find
the last checkpoint (Ray's, or `last.pt` in the output) and say so.

The output folder holds `last.pt` (everything needed to continue), `best.pt` (the best model by the family's
validation score), `metrics.parquet` (one row per epoch; epoch 0 is the untrained network), `config.json`,
`model.json` (architecture, input encoding, and the map specification of the training maps) and `_ray/` (Ray's
run directory).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import posixpath
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vprlib.cluster import Need, absolute_path, connect
from vprlib.console import train_logging
from vprlib.storage import url_to_fs
from vprlib.train.config import TrainConfig, check_inputs
from vprlib.train.families import family

LAST, BEST, METRICS, CONFIG, MODEL = "last.pt", "best.pt", "metrics.parquet", "config.json", "model.json"
RAY_DIR = "_ray"


class ResumeError(ValueError):
    """--resume into an output that holds a run of another kind."""


@dataclass
class Prepared:
    """What a family's `prepare` hands the harness: datasets (those in `split` are sharded across workers), plain
    extras for the workers, and the model's record (architecture, encoding, training maps' spec)."""

    datasets: dict
    split: list[str]
    payload: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- the driver
def run_training(config: TrainConfig, callbacks: tuple = ()) -> dict:
    """Train (or resume training) one model; return the summary. `callbacks`: Ray Train callbacks (a sweep's
    TuneReportCallback)."""
    module = family(config.family).trainer  # prepare, train_func, architecture
    check_inputs(config)
    check_resume(config, module.architecture(config))
    cluster = connect(config.ray_address)
    cluster.check_shared(config.output, "--output")  # every worker reads the checkpoints rank 0 writes
    gpus = config.gpus_per_worker
    if gpus < 0:
        gpus = 1.0 if cluster.device("auto") == "cuda" else 0.0
    # One CPU stays free for the Ray Data tasks that feed the workers: without it the job would wait forever.
    cluster.check(Need("training workers", config.workers, config.cpus_per_worker, gpus, "--workers",
                       "--cpus-per-worker", "--gpus-per-worker", spare_cpus=1))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # the workers print a line per epoch instead
    prepared = module.prepare(config)
    _write_json(config.output, CONFIG, config.to_dict())
    _write_json(config.output, MODEL, {"family": config.family, **module.architecture(config), **prepared.model})
    trainer = _trainer(config, module.train_func, prepared, gpus, callbacks)
    start = time.perf_counter()
    trainer.fit()
    summary = summarise(config, time.perf_counter() - start)
    print_summary(summary)
    return summary


def _trainer(config: TrainConfig, train_func, prepared: Prepared, gpus: float, callbacks: tuple = ()):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": config.cpus_per_worker, **({"GPU": gpus} if gpus else {})}
    workers = config.workers if config.min_workers == config.workers else (config.min_workers, config.workers)
    scaling = ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources)
    path, filesystem = ray_storage(posixpath.join(config.output, RAY_DIR))
    run = RunConfig(name="train", storage_path=path, storage_filesystem=filesystem,
                    failure_config=FailureConfig(max_failures=2), checkpoint_config=CheckpointConfig(num_to_keep=2),
                    callbacks=list(callbacks))
    run.logging_config = train_logging()
    return TorchTrainer(train_func, train_loop_config={"config": config.to_dict(), **prepared.payload},
                        scaling_config=scaling, run_config=run, datasets=prepared.datasets,
                        dataset_config=DataConfig(datasets_to_split=prepared.split))


def ray_storage(folder: str):
    """Ray Train's or Tune's storage_path and storage_filesystem for `folder`: a local path as it is (made absolute);
    a URL through its fsspec filesystem, so Ray writes with the job's own storage settings to any fsspec store."""
    folder = absolute_path(folder)
    if "://" not in folder:
        return folder, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = url_to_fs(folder)
    return path, PyFileSystem(FSSpecHandler(fs))


def check_resume(config: TrainConfig, architecture: dict) -> None:
    """Refuse --resume into an output whose run trained another architecture; with --no-resume, remove the earlier
    run's files (only this job's own) so nothing of it is continued."""
    fs, root = url_to_fs(config.output)
    if fs.exists(root) and not fs.isdir(root):
        raise ResumeError(f"--output {config.output} is a file, not a folder")
    path = posixpath.join(root, MODEL)
    if not fs.exists(path):
        return
    if not config.resume:
        for name in (LAST, BEST, METRICS, CONFIG, MODEL, RAY_DIR):
            if fs.exists(posixpath.join(root, name)):
                fs.rm(posixpath.join(root, name), recursive=True)
        return
    with fs.open(path, "r") as f:
        old = json.load(f)
    expected = {"family": config.family, **architecture}
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in expected.items() if old.get(k) != v]
    if diffs:
        raise ResumeError(f"{config.output} holds a run of another model ({', '.join(diffs)}): --no-resume starts "
                          f"afresh there, or use another --output")


def _write_json(output: str, name: str, value: dict) -> None:
    fs, root = url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, name), "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True, default=str))


def read_metrics(output: str) -> pa.Table:
    fs, root = url_to_fs(output)
    with fs.open(posixpath.join(root, METRICS), "rb") as f:
        return pq.read_table(f)


def summarise(config: TrainConfig, seconds: float) -> dict:
    """The run's figures from metrics.parquet: first and last epoch, the best score and its epoch."""
    rows = read_metrics(config.output).to_pylist()
    record = family(config.family)
    score = record.score
    scored = [r for r in rows if r.get(score) is not None and not math.isnan(r[score])]
    best = max(scored, key=lambda r: r[score] * record.sign) if scored else {}
    return {"family": config.family, "output": config.output, "epochs_run": rows[-1]["epoch"] if rows else 0,
            "score": score, "untrained": rows[0].get(score) if rows else None, "best": best.get(score),
            "best_epoch": best.get("epoch"), "last": rows[-1] if rows else {}, "wall_s": seconds}


def print_summary(summary: dict) -> None:
    score = summary["score"]
    print(f"train: {summary['family']} done, {summary['epochs_run']} epochs in {summary['wall_s']:.1f} s; {score} "
          f"untrained {_fmt(summary['untrained'])}, best {_fmt(summary['best'])} (epoch {summary['best_epoch']}); "
          f"checkpoints in {summary['output']}", flush=True)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


# ----------------------------------------------------------------------------------------------- the workers
class WorkerRun:
    """A training function's view of its run: config, rank, device, seeds, resume, reports."""

    def __init__(self, payload: dict):
        import ray.train
        import ray.train.torch

        for name in QUIET_LOGGERS:  # their per-dataset and per-report lines would drown the epoch lines
            logging.getLogger(name).setLevel(logging.WARNING)
        self.payload = payload
        self.config = TrainConfig.from_dict(payload["config"])
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.manual_seed(self.config.seed)
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        self.history: list[dict] = []
        self.best: float | None = None
        self._epoch_start, self._trained_at = time.perf_counter(), None

    @property
    def threads(self) -> int:
        """CPU threads of this worker: the family's `threads` option when set, else the CPUs it reserves."""
        return self.config.options.threads or max(1, int(self.config.cpus_per_worker))

    @property
    def batch_size(self) -> int:
        """Images per step on this worker (the config's batch is for all workers together)."""
        return self.config.batch_size // self.world

    def autocast(self):
        if self.device.type == "cuda" and self.config.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def batches(self, name: str, epoch: int, shuffle: bool = True, steps: int = 0):
        """This worker's shard of a dataset as torch batches on the device, shuffled per epoch. `steps` > 0: exactly
        that many batches, passing over the shard again (shuffled afresh) as often as needed."""
        import ray.train

        shard = ray.train.get_dataset_shard(name)

        def one_pass(seed: int):
            shuffle_args = {"local_shuffle_buffer_size": 4 * self.batch_size, "local_shuffle_seed": seed}
            return shard.iter_torch_batches(batch_size=self.batch_size, device=self.device,
                                            **(shuffle_args if shuffle else {}))

        if steps <= 0:
            return one_pass(self.config.seed + epoch)
        return itertools.islice(self._cycle(one_pass, self.config.seed + epoch), steps)

    @staticmethod
    def _cycle(one_pass, seed: int):
        """Passes of one_pass(seed), one_pass(seed + 1_000_003), ... until the consumer stops (nothing when a pass
        yields no batch)."""
        for n in itertools.count():
            empty = True
            for batch in one_pass(seed + n * 1_000_003):
                empty = False
                yield batch
            if empty:
                return

    def restore(self) -> dict | None:
        """The training state to continue from, None to start afresh: the later of Ray's last checkpoint of this run
        (a restarted worker group, a rerun) and `last.pt` in the output (rank 0 writes it as soon as an epoch is
        done, so it may hold an epoch whose Ray checkpoint a lost node kept from being registered; and a rerun whose
        Ray run directory is gone). Every worker reads the same files, so all ranks continue from one epoch."""
        import ray.train

        found = []
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                state = torch.load(os.path.join(folder, LAST), map_location="cpu", weights_only=True)
            found.append((state, "the run's last checkpoint"))
        state = _load(self.config.output, LAST)  # this run's or one to resume: --no-resume removed any other
        if state is not None:
            found.append((state, posixpath.join(self.config.output, LAST)))
        if not found:
            return None
        state, source = max(found, key=lambda pair: pair[0]["epoch"])  # the first of equals: Ray's
        self.history, self.best = list(state["history"]), state["best"]
        if self.rank == 0:
            say(f"train: resuming from epoch {state['epoch']} ({source})")
        return state

    def share(self, value):
        """`value` as rank 0 has it, on every worker (validation runs on rank 0 only)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def start_epoch(self) -> None:
        self._epoch_start, self._trained_at = time.perf_counter(), None

    def trained(self) -> None:
        """Mark the end of an epoch's training steps: images/s counts the time until here, not validation."""
        self._trained_at = time.perf_counter()

    def report(self, epoch: int, metrics: dict, state: dict, best_checkpoint, score: float | None, images: int = 0,
               lr: float | None = None) -> bool:
        """Record an epoch: its metrics row (printed, appended to metrics.parquet), a Ray checkpoint with `state`
        (copied to last.pt) and, when `score` beats the best so far, `best_checkpoint()` as best.pt. Every worker
        calls it; rank 0 writes. Returns whether this epoch was the best."""
        import ray.train

        seconds = time.perf_counter() - self._epoch_start
        training = (self._trained_at or time.perf_counter()) - self._epoch_start  # unmarked: the whole epoch
        row = {"epoch": epoch, **metrics, "lr": lr, "images": images or None,
               "images_per_s": images / training if images and training else None, "wall_s": seconds}
        sign = family(self.config.family).sign
        improved = score is not None and (self.best is None or score * sign > self.best * sign)
        if improved:
            self.best = score
        self.history.append(row)
        if self.rank != 0:
            ray.train.report(_plain(row))
            return improved
        state = {**state, "epoch": epoch, "history": self.history, "best": self.best}
        # best.pt first, last.pt next: last.pt marks the epoch done (restore continues after it), so a best.pt it
        # counts on is already there; metrics.parquet then shows only done epochs.
        if improved:
            save_file(self.config.output, BEST, best_checkpoint())
        save_file(self.config.output, LAST, state)
        self._write_metrics()
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, os.path.join(folder, LAST))
            ray.train.report(_plain(row), checkpoint=ray.train.Checkpoint.from_directory(folder))
        say("train: " + ", ".join(f"{k} {_cell(v)}" for k, v in row.items()) + (" *" if improved else ""))
        return improved

    def _write_metrics(self) -> None:
        fs, root = url_to_fs(self.config.output)
        keys = list(dict.fromkeys(key for row in self.history for key in row))  # epoch 0 lacks training's keys
        with fs.open(posixpath.join(root, METRICS), "wb") as f:
            pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in self.history]), f)


@dataclass
class Trained:
    """One epoch's training, as a family's `train` hands it to the report: its figures (the loss and the family's
    own), the images trained on (all workers together) and the learning rate it trained at."""

    figures: dict
    images: int = 0
    lr: float | None = None


def saved_state(**parts) -> tuple[Callable[[], dict], Callable[[dict], None]]:
    """`epoch_loop`'s snapshot and load for named parts that have state_dict and load_state_dict (a model, an
    optimiser, a scheduler): the snapshot holds each part's state under its name."""
    def snapshot() -> dict:
        return {name: part.state_dict() for name, part in parts.items()}

    def load(state: dict) -> None:
        for name, part in parts.items():
            part.load_state_dict(state[name])

    return snapshot, load


def epoch_loop(run: WorkerRun, *, snapshot: Callable[[], dict], load: Callable[[dict], None],
               best: Callable[[], dict], validate: Callable[[int], dict], train: Callable[[int], Trained],
               record: Callable[[int, Trained, dict], tuple[dict, float | None, float | None]] | None = None,
               stop: Callable[[int], bool] | None = None, fresh: Callable[[], None] | None = None) -> None:
    """The loop every family's workers run: continue after the last checkpoint's epoch, or on a fresh run report
    epoch 0, the untrained network; then train, validate and report each epoch up to `config.epochs`.

    - snapshot() -> everything needed to continue (last.pt, the Ray checkpoint); load(state) puts it back.
    - best() -> what best.pt holds, asked for when the epoch's score is the best so far.
    - validate(epoch) -> the validation metrics; it runs on rank 0 only, and every worker gets its result.
    - train(epoch) -> the epoch's `Trained`.
    - record(epoch, trained, metrics) -> (row, score, lr): the family's own bookkeeping once validated; by default
      the row is the training figures and the metrics, the score the family's metric, the lr the epoch's.
    - stop(epoch) -> True to end the run before training `epoch` (early stopping).
    - fresh() -> None: on a fresh run, before epoch 0."""
    config = run.config
    score_name = family(config.family).score

    def report(epoch: int, trained: Trained) -> None:
        metrics = run.share(validate(epoch) if run.rank == 0 else None)
        if record is None:
            row, score, lr = {**trained.figures, **metrics}, metrics[score_name], trained.lr
        else:
            row, score, lr = record(epoch, trained, metrics)
        run.report(epoch, row, snapshot(), best, score, images=trained.images, lr=lr)

    state = run.restore()
    if state is not None:
        load(state)
    else:
        if fresh is not None:
            fresh()
        run.start_epoch()
        report(0, Trained({"loss": None}, lr=config.lr))
    for epoch in range((state or {"epoch": 0})["epoch"] + 1, config.epochs + 1):
        if stop is not None and stop(epoch):
            break
        run.start_epoch()
        trained = train(epoch)
        run.trained()
        report(epoch, trained)


QUIET_LOGGERS = ("ray.data", "ray.train", "ray.train.v2._internal.execution.context")


def say(line: str) -> None:
    """One line on the worker's stdout, which Ray forwards to the driver. (Ray Train turns `print` into a log record
    that it also echoes, so a printed line would show twice.)"""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _plain(row: dict) -> dict:
    return {k: (float("nan") if v is None else v) for k, v in row.items()}


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def save_file(output: str, name: str, value) -> None:
    """torch.save to the output (local or s3://), whole or not at all: a temporary name, then a rename."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    fs, root = url_to_fs(output)
    fs.makedirs(root, exist_ok=True)
    final = posixpath.join(root, name)
    # A local or mounted folder renames atomically; an object store makes an object visible only once whole.
    temp = posixpath.join(root, f".tmp-{name}") if "file" in fs.protocol else final
    with fs.open(temp, "wb") as f:
        f.write(buffer.getvalue())
    if temp != final:
        fs.mv(temp, final)


def _load(output: str, name: str):
    fs, root = url_to_fs(output)
    path = posixpath.join(root, name)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
