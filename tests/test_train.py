"""The training job on Ray Train, end to end on a tiny dense synthetic city: outputs, resume, workers, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.models.zoo import load_retriever
from vprlib.train.config import train_config
from vprlib.train.cosplace import class_table
from vprlib.train.data import TrainDataError
from vprlib.train.loop import ResumeError, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SIDE = 32
# ResNet-18 with a small head at 32 px: a few seconds an epoch on this CPU.
SMALL = {"backbone": "resnet18", "descriptor_size": 32, "batch_size": 16, "epochs": 2, "min_images_per_class": 8,
         "groups": 2, "iterations_per_epoch": 6}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("dense-city")
    generate_city(CityConfig(places=16, side=SIDE, dense_train=8, workers=1), str(root))
    return str(root)


def _job(*argv: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "train.py"), *argv]


@pytest.fixture(scope="module")
def one_worker(ray_session, city, tmp_path_factory) -> tuple[Path, dict]:
    """A CosPlace run of SMALL on one worker: its output folder and summary (two tests read it)."""
    from vprlib.train import run_training

    output = tmp_path_factory.mktemp("one-worker") / "cosplace"
    return output, run_training(train_config("cosplace", os.path.join(city, GT_MAPS), str(output), **SMALL))


def test_cosplace_writes_checkpoints_metrics_and_its_record(city, one_worker):
    output, summary = one_worker
    metrics = read_metrics(str(output)).to_pylist()
    assert [row["epoch"] for row in metrics] == [0, 1, 2]  # 0: the untrained network
    assert metrics[0]["loss"] is None and all(row["loss"] > 0 for row in metrics[1:])
    assert all(0.0 <= row["recall@1"] <= row["recall@5"] <= row["recall@10"] <= 1.0 for row in metrics)
    assert [row["group"] for row in metrics[1:]] == [0, 1]  # groups trained in turn
    # CosPlace's epoch: iterations_per_epoch batches, passing over its group again as often as that takes
    groups = class_table(train_config("cosplace", os.path.join(city, GT_MAPS), "unused", **SMALL))["group"].to_numpy()
    assert max(np.bincount(groups)) < 6 * 16 and [row["images"] for row in metrics[1:]] == [6 * 16] * 2
    assert summary["untrained"] == metrics[0]["recall@1"] and summary["epochs_run"] == 2
    model = load_retriever(output / "best.pt")
    checkpoint = torch.load(output / "best.pt", weights_only=True)
    assert model.config.backbone == "resnet18" and model.descriptor_size == 32
    assert checkpoint["map_spec"]["strategy"] == "ground-truth" and checkpoint["map_spec"]["side"] == SIDE
    record = json.loads((output / "model.json").read_text())
    assert record["family"] == "cosplace" and record["backbone"] == "resnet18"
    assert record["encoding"]["num_classes"] == 4 and record["map_spec"]["seg_classes"] == "refined4"
    assert json.loads((output / "config.json").read_text())["options"]["descriptor_size"] == 32
    last = torch.load(output / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 3


def test_training_lowers_the_loss_and_beats_the_untrained_network(ray_session, city, tmp_path):
    """The epoch loop trains: a tiny demo segmenter's loss falls from epoch to epoch and its validation mIoU beats
    epoch 0's, the untrained network's (without optimiser steps, neither holds)."""
    from vprlib.train import run_training

    output = tmp_path / "segmenter"
    summary = run_training(train_config("demo-segmenter", city, str(output), arch="tiny", input_size=SIDE, epochs=3,
                                        batch_size=16))
    rows = read_metrics(str(output)).to_pylist()
    losses, scores = [row["loss"] for row in rows[1:]], [row["miou"] for row in rows]
    assert losses[0] > losses[1] > losses[2], losses
    assert scores[-1] > scores[0] + 0.05 and summary["untrained"] == scores[0], scores


def test_bad_input_is_one_line_before_any_worker(ray_session, city, tmp_path):
    from vprlib.train import run_training

    gt = os.path.join(city, GT_MAPS)
    with pytest.raises(TrainDataError, match="split 'nowhere' has no ok rows"):
        run_training(train_config("cosplace", gt, str(tmp_path / "a"), train_split="nowhere", **SMALL))
    with pytest.raises(TrainDataError, match="no class of split 'train' holds --min-images-per-class 50"):
        run_training(train_config("cosplace", gt, str(tmp_path / "b"), **{**SMALL, "min_images_per_class": 50}))
    with pytest.raises(TrainDataError, match="is not a maps table"):
        run_training(train_config("cosplace", city, str(tmp_path / "c"), **SMALL))
    with pytest.raises(TrainDataError, match=r"has no photos \(column rgb\): --input rgb needs .* --rgb"):
        run_training(train_config("cosplace", gt, str(tmp_path / "e"), **{**SMALL, "input": "rgb"}))
    with pytest.raises(ValueError, match="NetVLAD trains on maps here; --input rgb .* is CosPlace's"):
        train_config("netvlad", gt, str(tmp_path / "f"), input="rgb")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.json").write_text(json.dumps({"family": "cosplace", "backbone": "resnet50"}))
    with pytest.raises(ResumeError, match="backbone: 'resnet50' -> 'resnet18'"):
        run_training(train_config("cosplace", gt, str(tmp_path / "d"), **SMALL))


def test_cli_errors_are_one_line(city, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad_flag = subprocess.run(_job("cosplace", "--maps", "m", "--output", "o", "--backbone", "alexnet"),
                              capture_output=True, text=True, env=env)
    assert bad_flag.returncode == 2 and bad_flag.stderr.strip().splitlines() == [
        "train.py: error: unknown backbone 'alexnet'; known: resnet18, resnet50, resnet101, resnet152, vgg16"]
    no_targets = subprocess.run(_job("refiner", "--maps", "m", "--output", "o"), capture_output=True, text=True,
                                env=env)
    assert no_targets.returncode == 2 and "need --targets" in no_targets.stderr


@pytest.mark.long
def test_resume_after_kill(city, tmp_path):
    """A run killed mid-way continues from its last checkpoint when the same command runs again, and says so."""
    output = tmp_path / "killed"
    argv = _job("cosplace", "--maps", os.path.join(city, GT_MAPS), "--output", str(output), "--backbone", "resnet18",
                "--descriptor-size", "32", "--batch-size", "16", "--epochs", "3", "--min-images-per-class", "8",
                "--groups", "2", "--iterations-per-epoch", "0", "--ray-address", "local")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and _epochs(output) < 2:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    done = _epochs(output)
    assert 2 <= done < 4, "the kill did not come mid-way"
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming from epoch {done - 1}" in second.stdout + second.stderr
    assert [row["epoch"] for row in read_metrics(str(output)).to_pylist()] == [0, 1, 2, 3]


def _epochs(output: Path) -> int:
    try:
        return pq.read_table(output / "metrics.parquet").num_rows
    except (FileNotFoundError, OSError):
        return 0


@pytest.mark.long
def test_two_workers_learn_as_one_does(ray_session, city, one_worker, tmp_path):
    """DDP over two workers (half the batch each) gives the model one worker gives, within noise."""
    from vprlib.train import run_training

    config = train_config("cosplace", os.path.join(city, GT_MAPS), str(tmp_path / "w2"), workers=2,
                          cpus_per_worker=0.5, **SMALL)
    run_training(config)
    recalls = [np.array([row["recall@1"] for row in read_metrics(str(output)).to_pylist()])
               for output in (one_worker[0], config.output)]
    assert recalls[0][0] == recalls[1][0]  # the same untrained network
    assert abs(recalls[0][-1] - recalls[1][-1]) <= 0.15, recalls
