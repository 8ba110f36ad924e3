"""Sweeps on Ray Tune over the training job: a small ASHA sweep end to end, resume, Ctrl-C, and bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import tune as tune_job
from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.models.zoo import load_retriever

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--backbones", "resnet18,alexnet"], "unknown backbone(s) ['alexnet']"),
    (["--lrs", "1e-4"], "the search space holds one trial"),
    (["--lr-range", "1e-3"], "--lr-range must be low:high"),
    (["--lr-range", "1e-3:1e-5", "--samples", "2"], "0 < low < high"),
    (["--model", "netvlad", "--backbones", "resnet18,resnet50"], "netvlad has no backbone setting, so --backbones"),
])
def test_bad_search_spaces_are_one_line(capsys, tmp_path, argv, message):
    from vprlib.maps import write_spec

    write_spec(str(tmp_path), {})  # a maps table as far as the first check goes: the search space is next
    with pytest.raises(SystemExit) as exit_:
        tune_job.parse_args(["--maps", str(tmp_path), "--output", "o", *argv] + ([] if "--model" in argv else
                                                                                 ["--model", "cosplace"]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("dense")
    generate_city(CityConfig(places=24, side=24, dense_train=6, workers=1), str(root))
    return str(root / GT_MAPS)


def _sweep(maps: str, output: Path) -> list[str]:
    """Four trials of at most 2 epochs; validated on the database images (12 places: Recall@1 far from 1, so
    trials differ and ASHA has something to stop)."""
    return [sys.executable, str(ROOT / "jobs" / "tune.py"), "--model", "cosplace", "--maps", maps, "--output",
            str(output), "--backbone", "resnet18", "--lrs", "1e-4,0.3", "--descriptor-sizes", "16,32",
            "--max-epochs", "2", "--batch-size", "8", "--min-images-per-class", "6", "--groups", "2",
            "--iterations-per-epoch", "0",
            "--val-split", "database", "--concurrent-trials", "1", "--ray-address", "local"]


def _alive_training_processes() -> list[str]:
    import psutil

    names = []
    for process in psutil.process_iter(["name", "cmdline"]):
        text = " ".join(process.info["cmdline"] or []) + " " + (process.info["name"] or "")
        if "RayTrainWorker" in text or "TrainController" in text:
            names.append(text.strip()[:80])
    return names


def _started(output: Path) -> int:
    return len(list(output.glob("trials/*/metrics.parquet")))


@pytest.mark.long
def test_sweep_stops_cleanly_on_ctrl_c_resumes_and_asha_stops_trials(city, tmp_path):
    """Ctrl-C once a trial has finished: the job says so in one line and exits 130, and no training process is left.
    The same command then resumes the sweep, keeps the finished trial (not trained again) and runs the rest under
    ASHA, which stops some early; the results table, best config and best checkpoint follow."""
    output = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    said = tmp_path / "said.txt"
    sweep = subprocess.Popen(_sweep(city, output), env=env, stdout=subprocess.DEVNULL, stderr=said.open("w"),
                             start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and sweep.poll() is None and _started(output) < 2:
            time.sleep(1)
        assert _started(output) >= 2, "no second trial before the deadline"
        sweep.send_signal(signal.SIGINT)
        sweep.wait(timeout=180)
    finally:  # a failed test leaves no sweep running into the next tests
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    time.sleep(3)
    assert sweep.returncode == 130 and said.read_text().splitlines()[-1] == "tune: interrupted", said.read_text()
    assert _alive_training_processes() == []
    first = min(output.glob("trials/*/metrics.parquet"), key=lambda p: p.stat().st_mtime)
    stamp = first.stat().st_mtime
    resumed = subprocess.run(_sweep(city, output), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout + resumed.stderr and first.stat().st_mtime == stamp
    results = pq.read_table(output / "results.parquet").to_pylist()
    assert len(results) == 4 and {(r["lr"], r["descriptor_size"]) for r in results} == {
        (1e-4, 16), (1e-4, 32), (0.3, 16), (0.3, 32)}
    assert all(r["error"] is None for r in results) and any(r["stopped_early"] for r in results)
    assert sum(r["epochs_run"] for r in results) < 4 * 2 and "trial-epochs of 8" in resumed.stdout
    best = max(results, key=lambda r: r["recall@1"])
    assert (output / "best_config.json").is_file()
    assert load_retriever(output / "best.pt").descriptor_size == best["descriptor_size"]
    assert _alive_training_processes() == []


def _tune(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "tune.py"), "--model", "cosplace", *argv],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)


@pytest.mark.parametrize("space", [["--backbones", "resnet18,resnet50"], ["--backbones", "resnet18"]])
def test_the_maps_are_checked_first_and_before_ray_starts(tmp_path, space):
    """A --maps that does not exist, or is no maps table, is one line naming it, whatever the search space (even
    one the sweep would refuse), before Ray starts."""
    for maps, message in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "is not a maps table")):
        done = _tune("--maps", str(maps), "--output", str(tmp_path / "sweep"), *space)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith(f"tune.py: error: --maps {maps} {message}"), done.stderr
    assert not (tmp_path / "sweep").exists()


def test_failure_note_counts_the_failed_trials():
    import pyarrow as pa

    from vprlib.tune import failure_note

    def table(errors):
        return pa.table({"trial": [f"t{i}" for i in range(len(errors))], "error": pa.array(errors, pa.string())})

    assert failure_note(table([None, None])) == ""
    assert failure_note(table([None, "TrainDataError: x", "ValueError: y"])).startswith(
        "2 of 3 trials failed (their errors: results.parquet); the first: TrainDataError: x")
    assert failure_note(table(["TrainDataError: x", "TrainDataError: x"])).startswith("all 2 trials failed")


def test_root_error_names_what_the_training_raised_under_ray_s_wrappers():
    from ray.exceptions import RayTaskError

    from vprlib.train.data import TrainDataError
    from vprlib.tune import root_error

    cause = TrainDataError("--maps m: split 'train' has no ok rows")
    wrapped = RayTaskError("_trial", "Traceback (most recent call last): ...", cause)
    try:
        raise RuntimeError("Training failed") from wrapped
    except RuntimeError as exc:
        assert root_error(exc) == "TrainDataError: --maps m: split 'train' has no ok rows"


def _small_sweep(city: str, output: Path, *space: str, min_images: int = 6) -> list[str]:
    return ["--maps", city, "--output", str(output), "--backbone", "resnet18", *space, "--max-epochs", "1",
            "--batch-size", "8", "--min-images-per-class", str(min_images), "--groups", "2", "--iterations-per-epoch",
            "0",
            "--descriptor-size", "16", "--val-split", "database", "--concurrent-trials", "1", "--ray-address", "local"]


@pytest.mark.slow
def test_a_sweep_whose_trials_all_fail_exits_1_in_one_line(city, tmp_path):
    """Every trial refuses the maps (too few images per class for CosPlace): exit status 1, one line naming the
    first trial's error, no traceback, no best.pt (and none named)."""
    output = tmp_path / "sweep"
    done = _tune(*_small_sweep(city, output, "--lrs", "1e-4,1e-3", min_images=500), timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        "tune: FAILED: all 2 trials failed (their errors: results.parquet); the first: TrainDataError: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "best.pt" not in done.stdout + done.stderr
    assert not (output / "best.pt").exists()
    assert [r["error"].split(":")[0] for r in pq.read_table(output / "results.parquet").to_pylist()] == [
        "TrainDataError", "TrainDataError"]


@pytest.mark.long
def test_a_sweep_where_some_trials_fail_says_how_many(city, tmp_path):
    """One trial trains; the other asks for the photos, which ground-truth maps lack: exit status 0, best.pt of the
    trial that trained, and a line saying 1 of 2 trials failed, with its error."""
    output = tmp_path / "sweep"
    done = _tune(*_small_sweep(city, output, "--inputs", "depth+seg,rgb"), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("tune: warning: 1 of 2 trials failed (their errors: results.parquet); the first: TrainDataError: "
            in done.stdout), done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert load_retriever(output / "best.pt").config.encoding.modalities == "depth+seg"
