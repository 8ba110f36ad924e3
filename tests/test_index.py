"""The index and locate jobs on a tiny synthetic city: shards, exact merged search, reindexing what changed, locating
photos, and refusing what does not fit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vprlib.data.synthcity import CityConfig, generate_city
from vprlib.index.build import IndexConfig, run_index
from vprlib.index.embed import ModelError
from vprlib.index.search import Index, read_embeddings, read_manifest
from vprlib.index.shards import build, ivfpq_params
from vprlib.maps import part_files, read_spec
from vprlib.models.cosplace import CosPlace, CosPlaceConfig
from vprlib.models.encodings import EncodingConfig

ROOT = Path(__file__).resolve().parents[1]
SIDE = 32

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def city(tmp_path_factory, ray_session) -> tuple[str, str]:
    """A small city and its `none` maps by the tiny models."""
    from vprlib.extract import extract_config
    from vprlib.extract.pipeline import run_extract

    root = tmp_path_factory.mktemp("city")
    generate_city(CityConfig(places=8, side=SIDE, workers=1), str(root))
    maps = str(root / "maps")
    run_extract(extract_config(str(root), maps, strategy="none", models="tiny", side=SIDE, device="cpu",
                               batch_size=16, rows_per_file=32, cpus_per_actor=0.5, actor_threads=1))
    return str(root), maps


def _retriever(path: Path, maps: str, seed: int = 0) -> str:
    import torch

    torch.manual_seed(seed)
    encoding = EncodingConfig(num_classes=150)
    CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=16, encoding=encoding)).save(
        path, map_spec=read_spec(maps), input_side=SIDE)
    return str(path)


def _config(maps: str, model: str, output: Path, **kwargs) -> IndexConfig:
    return IndexConfig(maps=maps, model=model, output=str(output), shard_by="utm-tile", tile_m=15.0,
                       cpus_per_actor=0.5, **kwargs)


@pytest.fixture(scope="module")
def built(city, tmp_path_factory) -> tuple[Path, dict]:
    """The city's database indexed by a random retriever: the index folder and the job's summary."""
    _, maps = city
    folder = tmp_path_factory.mktemp("built")
    model = _retriever(folder / "model.pt", maps)
    return folder / "index", run_index(_config(maps, model, folder / "index"))


def test_index_shards_and_exact_merged_search(built, tmp_path):
    index_dir, summary = built
    manifest = read_manifest(str(index_dir))
    assert summary["shards"] == len(manifest["shards"]) > 1 and summary["embedded"] == summary["rows"]
    table = read_embeddings(str(index_dir))
    assert set(table["split"].to_pylist()) == {"database"} and table.num_rows == manifest["rows"]
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    index = Index(str(index_dir))
    queries = vectors[::7] + 0.05
    scores, rows = index.search(queries, 5)
    brute = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5]  # the same rows, in shard order
    assert np.array_equal(rows, brute) and np.allclose(scores, np.take_along_axis(queries @ vectors.T, brute, 1),
                                                       atol=1e-5)
    first = table.slice(0, 1).to_pylist()[0]
    near = index.near(first["lat"], first["lon"], 1.0)
    assert first["shard"] in near and len(near) < len(manifest["shards"])


def test_reindex_embeds_and_rebuilds_only_what_changed(city, tmp_path):
    _, maps = city
    copy = tmp_path / "maps"
    shutil.copytree(maps, copy)
    model = _retriever(tmp_path / "model.pt", maps)
    config = _config(str(copy), model, tmp_path / "index")
    run_index(config)
    before = read_manifest(config.output)
    shard_of = dict(zip(*(Index(config.output).rows[c].to_pylist() for c in ("image_id", "shard")), strict=True))
    again = run_index(config)
    assert (again["embedded"], again["shards_built"]) == (0, 0)
    # A part file holding two database rows (how the extraction split rows into parts is up to Ray).
    part, table, database = next((p, t, d) for p in part_files(str(copy)) for t in [pq.read_table(p)]
                                 for d in [[i for i, s in enumerate(t["split"].to_pylist()) if s == "database"]]
                                 if len(d) >= 2)
    changed, removed = table["image_id"][database[0]].as_py(), table["image_id"][database[1]].as_py()
    depth = table["depth"].to_pylist()
    depth[database[0]] = np.zeros(SIDE * SIDE, "<f4").tobytes()
    table = table.set_column(table.column_names.index("depth"), "depth", pa.array(depth, pa.binary()))
    keep = np.ones(table.num_rows, bool)
    keep[database[1]] = False
    pq.write_table(table.filter(pa.array(keep)), part)
    third = run_index(config)
    assert (third["embedded"], third["removed"]) == (1, 1)
    after = read_manifest(config.output)
    touched = {shard_of[changed], shard_of[removed]}
    rebuilt = {s for s in after["shards"] if after["shards"][s]["file"] != before["shards"].get(s, {}).get("file")}
    assert rebuilt == touched and third["shards_built"] == len(touched)
    other = run_index(IndexConfig(**{**config.__dict__, "model": _retriever(tmp_path / "other.pt", maps, seed=1)}))
    assert other["embedded"] == other["rows"]  # another retriever: every row again


def test_index_refuses_other_maps_and_non_checkpoints(city, tmp_path):
    root, maps = city
    model = _retriever(tmp_path / "model.pt", maps)
    with pytest.raises(ModelError, match="other maps than the retriever.*strategy: 'none' != 'ground-truth'"):
        run_index(_config(os.path.join(root, "gt_maps"), model, tmp_path / "gt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a retriever checkpoint"):
        run_index(_config(maps, str(tmp_path / "junk.pt"), tmp_path / "x"))
    with pytest.raises(ValueError, match="no ok rows in split 'nowhere'"):
        run_index(_config(maps, model, tmp_path / "y", split="nowhere"))


def test_ivfpq_for_large_shards_and_flat_for_small_ones():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = ivfpq_params(len(vectors), 32)
    assert params is not None and params.m == 2 and params.nlist == int(4 * np.sqrt(30_000))
    assert ivfpq_params(20_000, 32) is None  # under 39 training points per list
    _, built = build(vectors, "ivfpq")
    assert built["kind"] == "ivfpq"
    assert build(vectors[:500], "ivfpq")[1] == {"kind": "flat", "requested": "ivfpq", "why": "too few vectors to train"}


def _job(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "locate.py"), *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def _in_process(capsys, *argv: str) -> subprocess.CompletedProcess:
    """The job's main in this process (it needs no cluster): what the command prints, without a process start."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("locate_job", ROOT / "jobs" / "locate.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    code = job.main(list(argv))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def test_locate_photos_and_refuse_what_does_not_fit(city, built, tmp_path, capsys):
    root, _ = city
    index = tmp_path / "index"
    shutil.copytree(built[0], index)  # changed below
    query = next(r for r in pq.read_table(os.path.join(root, "manifest.parquet")).to_pylist() if r["split"] == "query")
    photo = os.path.join(root, query["uri"])
    result = _job("--index", str(index), photo, "--top-k", "3", "--json")  # the command, as a user runs it
    assert result.returncode == 0, result.stderr[-2000:]
    located = json.loads(result.stdout)
    assert len(located) == 1 and len(located[0]["places"]) == 3
    best = located[0]["places"][0]
    estimate = located[0]["estimate"]
    assert abs(estimate["lat"] - best["lat"]) < 1e-3 and abs(estimate["lon"] - best["lon"]) < 1e-3
    assert [p["similarity"] for p in located[0]["places"]] == sorted((p["similarity"] for p in located[0]["places"]),
                                                                     reverse=True)
    sure = located[0]["confidence"]
    assert 0 < sure["ratio"] <= 1 and sure["sure"] == (sure["ratio"] <= 0.75) and sure["other_rank"] >= 2
    table = _in_process(capsys, "--index", str(index), photo)
    assert table.returncode == 0 and "estimated at" in table.stdout and "sure (distance ratio" in table.stdout
    from PIL import Image

    Image.new("RGB", (1, 1), (120, 120, 120)).save(tmp_path / "dot.png")
    dot = _job("--index", str(index), str(tmp_path / "dot.png"))
    assert dot.returncode == 2 and dot.stderr == (f"locate: error: {tmp_path / 'dot.png'} is 1x1 pixels: too small to "
                                                  f"show a street (the shorter side must be at least --min-side 32)\n")
    broken = _in_process(capsys, "--index", str(index), str(built[0].parent / "model.pt"))
    assert broken.returncode == 2 and broken.stderr.startswith("locate: error: cannot read the photo")
    manifest = read_manifest(str(index))
    manifest["map_spec"]["models_identity"]["segmenter"] = "other weights"
    (index / "index.json").write_text(json.dumps(manifest))
    changed = _in_process(capsys, "--index", str(index), photo)
    assert changed.returncode == 2 and "the extraction models changed" in changed.stderr
