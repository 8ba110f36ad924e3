"""What the jobs print: --help and bad flags without Ray, torch or transformers; Ctrl-C as one line and status 130;
a stage's progress as one line off a terminal; Ray's noise dropped and its other warnings kept; a job's console made of
its own lines."""

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vprlib.console import Progress, _quiet_listing_race, quiet_ray

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p.name for p in (ROOT / "jobs").glob("*.py"))
HEAVY = ("ray", "torch", "transformers")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def heavy_imports(stderr: str) -> set[str]:
    """Top-level packages among HEAVY that `python -X importtime` says were imported."""
    names = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    return {name for name in names if name in HEAVY}


def _job(name: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "jobs" / name), *argv], capture_output=True,
                          text=True, env=ENV, timeout=120)


@pytest.mark.parametrize("job", JOBS)
def test_help_and_bad_flags_import_no_ray_torch_or_transformers(job):
    shown = _job(job, "--help")
    assert shown.returncode == 0 and "usage:" in shown.stdout, shown.stderr[-2000:]
    bad = _job(job, "--no-such-flag")
    errors = [line for line in bad.stderr.splitlines() if not line.startswith("import time:")]
    assert bad.returncode == 2 and len(errors) == 1 and errors[0].startswith(f"{job}: error: "), bad.stderr[-2000:]
    assert heavy_imports(shown.stderr) == set() and heavy_imports(bad.stderr) == set()


def test_progress_off_a_terminal_is_one_line_when_the_stage_ends(capsys):
    with Progress("city", 6, "captures") as progress:
        for _ in range(3):
            progress.update(2)
            assert capsys.readouterr().out == ""  # nothing while it runs
    line = capsys.readouterr().out
    assert re.fullmatch(r"city: 6/6 captures in \d+\.\d s \(\d+\.\d captures/s\)\n", line), line


def test_ray_noise_is_dropped_and_other_warnings_kept():
    quiet_ray()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logging.getLogger("ray.data").addHandler(handler)
    try:
        logger = logging.getLogger("ray.data.dataset")
        logger.warning("Warning: The Ray cluster currently does not have any available CPUs. The Dataset job ...")
        logger.warning("a warning a user must read")
    finally:
        logging.getLogger("ray.data").removeHandler(handler)
    assert seen == ["a warning a user must read"]


def test_only_the_listing_race_of_ray_data_loses_its_traceback(tmp_path, monkeypatch):
    """The InterruptedError Ray Data's file listing raises in a thread once the listing is complete is dropped; the
    same error from elsewhere, and any other error, still reaches the hook."""
    (tmp_path / "dynamic_work_queue.py").write_text("def put():\n    raise InterruptedError()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import dynamic_work_queue

    def elsewhere():
        raise InterruptedError("not the listing's")

    def broken():
        raise ValueError("a real error")

    seen = []
    monkeypatch.setattr(threading, "excepthook", _quiet_listing_race(lambda args: seen.append(str(args.exc_value))))
    for target in (dynamic_work_queue.put, elsewhere, broken):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    assert seen == ["not the listing's", "a real error"]


def _interrupted(argv: list[str], after: str, delay: float = 0.0) -> tuple[int, str]:
    """Start a job in its own process group, wait for `after` in its output (or `delay` seconds), then Ctrl-C it as
    a terminal does (SIGINT to the whole group); its exit status and its whole output."""
    job = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                           start_new_session=True)
    try:
        lines = []
        if after:
            for line in job.stdout:
                lines.append(line)
                if after in line:
                    break
        time.sleep(delay)
        os.killpg(job.pid, signal.SIGINT)
        rest, _ = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    return job.returncode, "".join(lines) + rest


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    from vprlib.demo.city import CityConfig, generate_city

    root = tmp_path_factory.mktemp("city")
    generate_city(CityConfig(places=4, side=24, workers=1), str(root))
    return str(root)


def _extract(city: str, output: Path) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", city, "--output", str(output),
            "--strategy", "none", "--models", "tiny", "--side", "24", "--batch-size", "8", "--ray-address", "local"]


@pytest.mark.slow
@pytest.mark.parametrize(("when", "after", "delay"), [("while Ray starts", "", 1.5),
                                                      ("while the maps are made", "to do", 1.0)])
def test_ctrl_c_is_one_line_and_status_130(city, tmp_path, when, after, delay):
    status, output = _interrupted(_extract(city, tmp_path / "maps"), after, delay)
    last = output.strip().splitlines()[-1]
    assert status == 130 and last == "extract: interrupted" and "Traceback" not in output, output[-3000:]


def test_ctrl_c_stops_the_city_s_rendering_processes_in_one_line(tmp_path):
    argv = [sys.executable, str(ROOT / "jobs" / "synthcity.py"), "--output", str(tmp_path / "city"), "--workers",
            "2"]
    status, output = _interrupted(argv, "", 3.0)
    assert status == 130 and output == "synthcity: interrupted\n", output[-3000:]


@pytest.mark.slow
def test_a_job_s_console_holds_its_own_lines_only(city, tmp_path):
    """No Ray Data progress dump, execution plan or INFO line, no warning a user cannot act on, no traceback: the
    extraction of a small city says what it will do and what it did."""
    done = subprocess.run(_extract(city, tmp_path / "maps"), capture_output=True, text=True, env=ENV, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    ours = [line for line in lines if re.match(r"(\x1b\[36m\(.*\)\x1b\[0m )?extract: ", line)]
    # Ray's C++ core writes one error line about actor restarts straight to stderr, past Python's logging.
    core = [line for line in lines if "core_worker.cc" in line and "max_restarts" in line]
    others = [line for line in lines if line not in ours and line not in core]
    assert others == [] and len(core) <= 1 and 2 <= len(ours) <= 4 and "Traceback" not in output, output[-3000:]
