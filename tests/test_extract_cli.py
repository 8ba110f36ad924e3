"""jobs/extract.py's command line: --help shows every default; bad input or storage is one line on stderr, exit 2.

These call `main`/`parse_args` in-process and fail before Ray starts (test_extract_job.py runs the job itself)."""

import re
import socket
import time

import pytest

from jobs import extract as extract_job
from vprlib.extract import pipeline

FLAGS = ["--models", "tiny", "--side", "64"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def _closed_port() -> int:
    """A loopback port with nothing listening: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_s3(monkeypatch):
    """S3 settings pointing at a closed loopback port, with one attempt per request (no retry back-off)."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        extract_job.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out.split("options:", 1)[1]
    entries = {m.group(1): " ".join(m.group(2).split()) for m in re.finditer(r"^  (--[\w-]+)(.*?)(?=^  -|^\S|\Z)", text,
                                                                                    re.MULTILINE | re.DOTALL)}
    expected = {"--strategy": "inpaint", "--models": "paper", "--side": "512", "--segmenter-side": "0",
                "--dilation": "0", "--seg-probabilities": "off", "--rgb": "off", "--mode": "fused", "--device": "auto",
                "--precision": "bf16",
                "--batch-size": "32", "--decode-batch-size": "8", "--rows-per-file": "128", "--actors": "1",
                "--gpus-per-actor": "1.0", "--cpus-per-actor": "1.0", "--actor-threads": "2",
                "--concurrent-batches": "off", "--prefetch-batches": "4", "--compile": "off", "--compile-cache": "''",
                "--cudnn-benchmark": "on", "--max-image-pixels": "89478485", "--ray-address": "''",
                "--retry-errors": "off", "--max-failure-fraction": "0.05"}
    assert set(entries) == {*expected, "--input", "--output"}
    for flag, default in expected.items():
        assert entries[flag].endswith(f"(default: {default})"), (flag, entries[flag])
    assert "(default" not in entries["--input"] and "(default" not in entries["--output"]  # required


@pytest.mark.parametrize("side", ["input", "output"])
def test_unreachable_storage_is_one_line(unreachable_s3, tmp_path, capsys, side):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_id,uri,lat,lon\na,a.jpg,1,2\n")
    uri = "s3://bkt/city" if side == "input" else "s3://bkt/maps"
    paths = {"input": str(manifest), "output": str(tmp_path / "out"), side: uri}
    start = time.perf_counter()
    assert extract_job.main(["--input", paths["input"], "--output", paths["output"], *FLAGS]) == 2
    assert time.perf_counter() - start < 30
    line = _one_line_error(capsys)
    assert line.startswith(f"extract: error: cannot reach storage for {uri}: Could not connect to the endpoint URL")


def test_storage_error_outside_ray_is_one_line(monkeypatch, tmp_path, capsys):
    """A storage failure in the job's own steps (writing to a read-only output, say) is one line."""
    def refused(config):
        raise PermissionError(13, "Permission denied", f"{config.output}/_extract_config.json")

    argv = ["--input", str(tmp_path / "manifest.csv"), "--output", str(tmp_path / "out"), *FLAGS]
    monkeypatch.setattr(pipeline, "run_extract", refused)
    assert extract_job.main(argv) == 2
    assert _one_line_error(capsys) == (f"extract: error: storage: [Errno 13] Permission denied: "
                                       f"'{tmp_path}/out/_extract_config.json'")


@pytest.mark.slow
def test_storage_error_inside_ray_keeps_its_traceback(monkeypatch, tmp_path):
    """One that Ray raised (a task of the pipeline) is not turned into a line: the job's rows are error rows, and a
    crash of the pipeline itself keeps Ray's traceback."""
    import ray

    def in_a_task(config):
        @ray.remote
        def read():
            raise PermissionError(13, "Permission denied")

        ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", address="local")
        try:
            return ray.get(read.remote())
        finally:
            ray.shutdown()

    monkeypatch.setattr(pipeline, "run_extract", in_a_task)
    with pytest.raises(PermissionError):
        extract_job.main(["--input", str(tmp_path / "manifest.csv"), "--output", str(tmp_path / "out"), *FLAGS])


def test_manifest_errors_name_the_file(tmp_path, capsys):
    manifest = tmp_path / "photos.txt"
    manifest.write_text("image_id,uri,lat,lon\na,a.jpg,1,2\n")
    assert extract_job.main(["--input", str(manifest), "--output", str(tmp_path / "out"), *FLAGS]) == 2
    assert _one_line_error(capsys) == (f"extract: error: manifest {manifest}: unknown format .txt; "
                                       "expected one of ['.parquet', '.csv']")


def test_unreachable_ray_address_fails_in_seconds():
    """ray.init retries an address that refuses connections for minutes; the job checks it first."""
    from vprlib.cluster import check_ray_address

    with socket.socket() as listener:  # a port that was free: nothing listens once closed
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    with pytest.raises(ValueError, match=f"cannot reach the Ray cluster at --ray-address 127.0.0.1:{port}"):
        check_ray_address(f"127.0.0.1:{port}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        check_ray_address(f"ray://127.0.0.1:{listener.getsockname()[1]}")  # reachable: no error
    for left_to_ray in ("", "auto", "local"):
        check_ray_address(left_to_ray)
