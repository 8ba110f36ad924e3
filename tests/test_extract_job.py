"""The extraction job on Ray Data, end to end on a tiny synthetic city: strategies, bad input, resume, S3, CLI."""

import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vprlib.data.manifest import read_manifest, write_manifest
from vprlib.demo.city import CityConfig, generate_city
from vprlib.extract import decode_depth, decode_seg, read_maps
from vprlib.extract.config import extract_config
from vprlib.maps import read_spec
from vprlib.models import zoo

ROOT = Path(__file__).resolve().parents[1]
SIDE = 32
FAST = {"models": "tiny", "side": SIDE, "device": "cpu", "batch_size": 8, "rows_per_file": 16,
        "cpus_per_actor": 0.25, "actor_threads": 1}
BAD = ("zero-byte", "truncated", "not-image", "missing")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    """A 32-row synthetic city at 32 px plus 4 bad files and 2 odd-format photos: 38 rows."""
    root = tmp_path_factory.mktemp("city")
    manifest = generate_city(CityConfig(places=4, side=SIDE, workers=1), str(root))
    manifest = manifest.slice(0, 32)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(jpeg, "JPEG")
    files = {"zero-byte": b"", "truncated": jpeg.getvalue()[:200], "not-image": b"%PDF-1.4 hello"}
    for name, data in files.items():
        (root / f"{name}.jpg").write_bytes(data)
    Image.new("LA", (5, 3), (90, 128)).save(root / "gray-alpha.png")
    Image.new("CMYK", (40, 30), (0, 0, 0, 0)).save(root / "cmyk.jpg")
    extra = [*BAD, "gray-alpha", "cmyk"]
    uris = [f"{n}.jpg" if n not in ("gray-alpha",) else f"{n}.png" for n in extra]
    rows = pa.table({"image_id": extra, "uri": [str(root / u) for u in uris], "lat": [51.5] * 6, "lon": [-0.1] * 6})
    full = pa.concat_tables([manifest.select(["image_id", "uri", "lat", "lon", "split"]),
                             rows.append_column("split", pa.array(["query"] * 6))])
    full = full.set_column(1, "uri", pa.array([str(root / u) if not u.startswith("/") else u
                                               for u in full["uri"].to_pylist()]))
    write_manifest(full, str(root / "manifest.parquet"))
    return str(root)


def _check_output(output: str, manifest_path: str, strategy: str, side: int = SIDE) -> pa.Table:
    ids = read_manifest(manifest_path)["image_id"].to_pylist()
    table = read_maps(output)
    assert sorted(table["image_id"].to_pylist()) == sorted(ids)  # one row per input id, no duplicates
    rows = {r["image_id"]: r for r in table.to_pylist()}
    for name in BAD:
        assert rows[name]["status"] == "error" and rows[name]["error"], name
    assert "missing file" in rows["missing"]["error"] and "empty file" in rows["zero-byte"]["error"]
    assert "not an image" in rows["not-image"]["error"] and "truncated" in rows["truncated"]["error"]
    good = [r for r in rows.values() if r["image_id"] not in BAD]
    assert all(r["status"] == "ok" and r["error"] == "" for r in good)
    for row in good[:5]:
        depth, seg = decode_depth(row), decode_seg(row)
        assert depth.shape == seg.shape == (side, side) and np.isfinite(depth).all()
        assert row["strategy"] == strategy and "tiny" in row["models"]
        assert seg.max() < (4 if strategy == "synthetic" else 150)
    return table


# Subprocess tests first: no in-process Ray cluster competes with theirs for the 2 CPUs.
def _job(city: str, output: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", city, "--output", output,
            "--strategy", "inpaint", "--models", "tiny", "--side", str(SIDE), "--device", "cpu", "--batch-size", "4",
            "--decode-batch-size", "2", "--rows-per-file", "4", "--ray-address", "local", "--cpus-per-actor", "0.5"]


@pytest.mark.long
def test_resume_after_kill(city, tmp_path):
    output = tmp_path / "maps"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}
    first = subprocess.Popen(_job(city, str(output)), env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and len(list(output.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    written_before = {p.name for p in output.glob("part-*.parquet")}
    assert written_before, "the first run wrote nothing before the kill"
    second = subprocess.run(_job(city, str(output)), env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 1, second.stderr[-2000:]  # 4 of 38 rows are bad files: above 5%
    done = int(second.stdout.split(" already written")[0].rsplit(", ", 1)[1])
    assert 0 < done < 38, second.stdout  # the kill came part-way and the rerun skipped what was written
    assert written_before <= {p.name for p in output.glob("part-*.parquet")}
    _check_output(str(output), os.path.join(city, "manifest.parquet"), "inpaint")


def test_cli_errors_are_one_line():
    bad_flag = subprocess.run([sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", "a", "--output", "b",
                               "--side", "big"], capture_output=True, text=True, env={**os.environ,
                                                                                       "PYTHONPATH": str(ROOT)})
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.strip().splitlines()) == 1 and "--side" in bad_flag.stderr
    bad_input = subprocess.run([sys.executable, str(ROOT / "jobs" / "extract.py"), "--input", "/no/such/place",
                                "--output", "/tmp/x"], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad_input.returncode == 2, bad_input.stderr
    assert bad_input.stderr.strip().splitlines()[-1] == "extract: error: input not found: /no/such/place"
    assert "Traceback" not in bad_input.stderr


@pytest.mark.parametrize(("strategy", "mode"), [("inpaint", "fused"), ("synthetic", "pools"), ("none", "fused")])
def test_job_end_to_end(ray_session, city, tmp_path, strategy, mode):
    from vprlib.extract.pipeline import run_extract

    config = extract_config(input=city, output=str(tmp_path / "maps"), strategy=strategy, mode=mode, **FAST)
    summary = run_extract(config)
    assert summary["rows_ok"] == 34 and summary["rows_failed"] == 4 and summary["rows_missing"] == 0
    table = _check_output(config.output, os.path.join(city, "manifest.parquet"), strategy)
    assert table.num_rows == 38 and (tmp_path / "maps" / "_extract_config.json").is_file()
    spec = read_spec(config.output)
    assert (spec["strategy"], spec["side"], spec["seg_classes"]) == (strategy, SIDE, config.spec.seg_classes)
    assert spec["models_identity"] == zoo.identity("tiny", config.spec.plan.models)


def test_failure_fraction_sets_exit_code_and_rerun_is_a_no_op(ray_session, city, tmp_path):
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        import extract as job
    finally:
        sys.path.pop(0)
    args = ["--input", city, "--output", str(tmp_path / "maps"), "--strategy", "none"]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    assert job.main([*args, "--max-failure-fraction", "0.05"]) == 1  # 4 of 38 rows failed: 10.5%
    parts = sorted(os.listdir(tmp_path / "maps"))
    assert job.main([*args, "--max-failure-fraction", "0.2"]) == 0
    assert sorted(os.listdir(tmp_path / "maps")) == parts  # nothing left to do, nothing rewritten


@pytest.mark.long
def test_compiled_job_matches_eager_and_fills_the_compile_cache(ray_session, city, tmp_path):
    """--compile in the Ray actors (every model torch.compiled; on this CPU too): the maps eager gives, and the
    compiled graphs land in --compile-cache, where the next job's actors find them (benchmarks/RESULTS.md)."""
    from vprlib.extract.pipeline import run_extract

    manifest = tmp_path / "eight.parquet"
    write_manifest(read_manifest(os.path.join(city, "manifest.parquet")).slice(0, 8), str(manifest))
    options = {**FAST, "input": str(manifest), "strategy": "none"}
    eager = run_extract(extract_config(output=str(tmp_path / "eager"), **options))
    cache = tmp_path / "cache"
    compiled = run_extract(extract_config(output=str(tmp_path / "compiled"), compile=True, compile_cache=str(cache),
                                         **options))
    assert eager["rows_ok"] == compiled["rows_ok"] == 8
    assert any((cache / "fxgraph").rglob("*")), "no compiled graph in the cache folder"
    rows = {r["image_id"]: r for r in read_maps(str(tmp_path / "eager")).to_pylist()}
    for row in read_maps(str(tmp_path / "compiled")).to_pylist():
        np.testing.assert_allclose(decode_depth(row), decode_depth(rows[row["image_id"]]), atol=1e-3)
        assert (decode_seg(row) == decode_seg(rows[row["image_id"]])).mean() > 0.99


def test_s3_input_and_output(ray_session, city, s3_bucket):
    import s3fs

    from vprlib.extract.pipeline import run_extract

    fs = s3fs.S3FileSystem()
    manifest = read_manifest(os.path.join(city, "manifest.parquet")).slice(0, 10)
    uris = []
    for uri in manifest["uri"].to_pylist():
        key = f"{s3_bucket}/city/rgb/{os.path.basename(uri)}"
        fs.put_file(uri, key)
        uris.append(key)
    uris[-1] = f"{s3_bucket}/city/rgb/no-such-key.png"
    manifest = manifest.set_column(1, "uri", pa.array(uris))
    write_manifest(manifest, f"{s3_bucket}/city/manifest.parquet")
    config = extract_config(input=f"{s3_bucket}/city", output=f"{s3_bucket}/maps", strategy="none", **FAST)
    summary = run_extract(config)
    assert summary["rows_ok"] == 9 and summary["rows_failed"] == 1
    table = read_maps(f"{s3_bucket}/maps")
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert len(rows) == 10 and "missing file" in rows[manifest["image_id"][9].as_py()]["error"]
    assert fs.exists(f"{s3_bucket}/maps/_extract_config.json")


def test_manifest_columns_keep_their_types_and_reruns_repair_the_output(ray_session, city, tmp_path):
    """Any Arrow column of the manifest comes out as it went in (all-null, list, nullable float32, timestamp). A rerun
    with --retry-errors redoes a row that failed; one after two runs wrote at once keeps one row per id; other
    tools' files in the output folder are left alone."""
    import shutil
    import uuid

    from vprlib.cluster import ResourceError
    from vprlib.extract.pipeline import run_extract

    base = read_manifest(os.path.join(city, "manifest.parquet")).slice(0, 7)
    photo = Path(base["uri"][6].as_py())
    late = tmp_path / "late.png"
    base = base.set_column(1, "uri", pa.array(base["uri"].to_pylist()[:6] + [str(late)]))  # missing at first
    n = base.num_rows
    odd = {"note": pa.nulls(n), "tags": pa.array([["a", "b"]] * (n - 1) + [None], pa.list_(pa.string())),
           "weight": pa.array([0.5] * (n - 1) + [None], pa.float32()),
           "taken": pa.array([1_700_000_000_000_000] * n, pa.timestamp("us"))}
    manifest = base
    for name, column in odd.items():
        manifest = manifest.append_column(name, column)
    pq.write_table(manifest, tmp_path / "odd.parquet")
    config = extract_config(input=str(tmp_path / "odd.parquet"), output=str(tmp_path / "maps"), strategy="none",
                           **FAST)
    first = run_extract(config)
    assert (first["rows_ok"], first["rows_failed"]) == (6, 1)
    table = read_maps(config.output)
    for name, column in odd.items():
        assert table.schema.field(name).type == column.type, name
    rows = {r["image_id"]: r for r in table.to_pylist()}
    last = manifest["image_id"][n - 1].as_py()
    assert rows[last]["tags"] is None and rows[last]["weight"] is None and rows[last]["note"] is None
    assert rows[manifest["image_id"][0].as_py()]["tags"] == ["a", "b"]

    output = Path(config.output)
    part = sorted(output.glob("part-*.parquet"))[0]
    shutil.copy(part, output / f"part-{uuid.uuid4().hex}.parquet")  # as if a second run had written it too
    foreign = output / "part-00000-from-another-tool.snappy.parquet"
    foreign.write_bytes(b"not ours")
    shutil.copy(photo, late)
    second = run_extract(dataclasses.replace(config, retry_errors=True))
    assert (second["rows_ok"], second["rows_failed"], second["duplicate_ids"]) == (7, 0, 0)
    assert second["rows_this_run"] == 1 and foreign.read_bytes() == b"not ours"
    assert sorted(read_maps(config.output)["image_id"].to_pylist()) == sorted(manifest["image_id"].to_pylist())

    with pytest.raises(ResourceError, match="cannot add more"):  # the job's own local Ray never gets a GPU
        run_extract(dataclasses.replace(config, run=dataclasses.replace(config.run, device="cuda"),
                                        output=str(tmp_path / "gpu")))


def test_an_empty_manifest_gives_an_empty_table_with_the_schema(ray_session, city, tmp_path):
    from vprlib.extract.pipeline import run_extract

    empty = read_manifest(os.path.join(city, "manifest.parquet")).slice(0, 0)
    write_manifest(empty, str(tmp_path / "empty.parquet"))
    summary = run_extract(extract_config(input=str(tmp_path / "empty.parquet"), output=str(tmp_path / "maps"),
                                        strategy="none", **FAST))
    assert summary["input_rows"] == summary["rows_this_run"] == 0
    table = read_maps(str(tmp_path / "maps"))
    assert table.num_rows == 0 and {"image_id", "split", "status", "depth", "seg"} <= set(table.column_names)
