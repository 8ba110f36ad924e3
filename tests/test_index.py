"""The index and locate jobs on a tiny synthetic city: the folder's layout, exact search in one process and on
actors, a reindex that costs what changed and equals a fresh build, a killed reindex, IVF-PQ with exact re-ranking,
locating photos, and refusing what does not fit."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vprlib.demo.city import CityConfig, generate_city
from vprlib.index.build import IndexConfig, run_index, vector_matrix, write_embeddings
from vprlib.index.embed import ModelError
from vprlib.index.search import EMBEDDINGS, SHARDS, Index, SearchPool, read_embeddings, read_manifest, read_parts
from vprlib.index.shards import build_index, ivfpq_params
from vprlib.maps import part_files, read_spec
from vprlib.models.cosplace import CosPlace, CosPlaceConfig
from vprlib.models.encodings import EncodingConfig

ROOT = Path(__file__).resolve().parents[1]
SIDE = 32

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def city(tmp_path_factory, ray_session) -> tuple[str, str]:
    """A small city and its `none` maps by the tiny models, in part files of at most 16 rows."""
    from vprlib.extract import extract_config
    from vprlib.extract.pipeline import run_extract

    root = tmp_path_factory.mktemp("city")
    generate_city(CityConfig(places=8, side=SIDE, workers=1), str(root))
    maps = str(root / "maps")
    run_extract(extract_config(str(root), maps, strategy="none", models="tiny", side=SIDE, device="cpu",
                               batch_size=16, rows_per_file=16, cpus_per_actor=0.5, actor_threads=1))
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


def _brute_force(vectors: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every score, best first, ties by ascending image_id."""
    scores = queries @ vectors.T
    order = np.lexsort((np.broadcast_to(np.array(ids), scores.shape), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.array(ids, dtype=object)[order]


def test_index_layout_and_exact_merged_search(built, city):
    index_dir, summary = built
    manifest = read_manifest(str(index_dir))
    parts = read_parts(str(index_dir))
    assert parts.num_rows == len(part_files(city[1])) == summary["parts"] == summary["parts_embedded"]
    assert sorted(os.listdir(index_dir / EMBEDDINGS)) == sorted(parts["file"].to_pylist())  # one per maps part
    assert summary["shards"] == len(manifest["shards"]) > 1 and summary["embedded"] == summary["rows"]
    table = read_embeddings(str(index_dir))
    assert set(table["split"].to_pylist()) == {"database"} and table.num_rows == manifest["rows"]
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    ids = table["image_id"].to_pylist()
    queries = vectors[::7] + 0.05
    hits = Index(str(index_dir)).search(queries, 5)
    scores, expected = _brute_force(vectors, ids, queries, 5)
    assert np.array_equal(hits.ids, expected) and np.allclose(hits.scores, scores, atol=1e-5)
    row = {i: r for i, r in zip(ids, table.select(["lat", "shard"]).to_pylist(), strict=True)}
    assert [row[i]["lat"] for i in hits.ids[0]] == list(hits.columns["lat"][0])  # each hit's own columns
    first = table.slice(0, 1).to_pylist()[0]
    near = Index(str(index_dir)).near(first["lat"], first["lon"], 1.0)
    assert first["shard"] in near and len(near) < len(manifest["shards"])


def test_search_on_actors_equals_one_flat_index(built, ray_session):
    index_dir, _ = built
    table = read_embeddings(str(index_dir))
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    ids = table["image_id"].to_pylist()
    queries = np.concatenate([vectors[:3], -vectors[3:5]])  # near some rows, far from all (the bottom of the list)
    pool = SearchPool(str(index_dir), actors=2, cpus=0.25)
    assert len(pool.actors) == 2 and sorted(sum(pool.groups, [])) == sorted(read_manifest(str(index_dir))["shards"])
    hits = pool.search(queries, 8)
    scores, expected = _brute_force(vectors, ids, queries, 8)
    assert np.array_equal(hits.ids, expected) and np.allclose(hits.scores, scores, atol=1e-5)
    one = Index(str(index_dir))
    near = one.near(*table.select(["lat", "lon"]).slice(0, 1).to_pylist()[0].values(), 1.0)
    restricted = pool.search(queries, 8, allowed=[near] * len(queries))
    assert np.array_equal(restricted.ids, one.search(queries, 8, shards=near).ids)
    assert set(restricted.columns["shard"][restricted.ids != None]) <= set(near)  # noqa: E711


def _database_part(maps: str) -> tuple[str, pa.Table, list[int]]:
    """A part file holding at least two database rows (how extraction splits rows into parts is up to Ray)."""
    for part in part_files(maps):
        table = pq.read_table(part)
        rows = [i for i, s in enumerate(table["split"].to_pylist()) if s == "database"]
        if len(rows) >= 2:
            return part, table, rows
    raise AssertionError("no part with two database rows")


def _listing(folder: Path) -> dict[str, int]:
    """Every file under a folder with its inode (a rewritten file gets a new one)."""
    return {str(p.relative_to(folder)): p.stat().st_ino for p in folder.rglob("*") if p.is_file()}


def test_reindex_costs_what_changed_and_equals_a_fresh_build(city, tmp_path):
    _, maps = city
    copy = tmp_path / "maps"
    shutil.copytree(maps, copy)
    model = _retriever(tmp_path / "model.pt", maps)
    config = _config(str(copy), model, tmp_path / "index")
    run_index(config)
    before, old_manifest = _listing(tmp_path / "index"), read_manifest(config.output)
    again = run_index(config)
    assert (again["embedded"], again["parts_embedded"], again["shards_built"]) == (0, 0, 0)
    assert _listing(tmp_path / "index") == before  # nothing rewritten
    parts = part_files(str(copy))
    changed, table, database = _database_part(str(copy))
    depth = table["depth"].to_pylist()
    depth[database[0]] = np.zeros(SIDE * SIDE, "<f4").tobytes()
    pq.write_table(table.set_column(table.column_names.index("depth"), "depth", pa.array(depth, pa.binary())), changed)
    deleted = next(p for p in parts if p != changed)
    gone = pq.read_table(deleted)
    os.remove(deleted)
    # An added part: a copy of the changed part's rows under new ids ("0-..." sorts first), so each repeats another
    # row's descriptor: ties, which the search breaks by ascending image_id.
    added = table.set_column(0, "image_id", pa.array([f"0-{i}" for i in table["image_id"].to_pylist()]))
    pq.write_table(added, copy / "part-0123456789abcdef0123456789abcdef.parquet")
    third = run_index(config)
    assert (third["parts_embedded"], third["parts_removed"]) == (2, 2)  # the added and the changed; changed + deleted
    after, manifest = _listing(tmp_path / "index"), read_manifest(config.output)
    kept = {f"{EMBEDDINGS}/{f}" for f in read_parts(config.output)["file"].to_pylist()} & set(before)
    assert len(kept) == len(parts) - 2 and all(after[f] == before[f] for f in kept)  # not rewritten
    touched = _shards_of(config, table) | _shards_of(config, gone)  # the added part's rows stand where table's do
    rebuilt = {s for s in manifest["shards"] if manifest["shards"][s]["file"] !=
               old_manifest["shards"].get(s, {}).get("file")}
    assert rebuilt <= touched and third["shards_built"] == len(rebuilt) < len(manifest["shards"])
    for name, entry in manifest["shards"].items():
        if name not in rebuilt:
            for suffix in (".faiss", ".parquet"):
                assert after[f"{SHARDS}/{entry['file']}{suffix}"] == before[f"{SHARDS}/{entry['file']}{suffix}"]
    fresh = run_index(_config(str(copy), model, tmp_path / "fresh"))
    assert fresh["rows"] == third["rows"]
    assert read_manifest(config.output)["shards"] == read_manifest(str(tmp_path / "fresh"))["shards"]
    ours, theirs = Index(config.output), Index(str(tmp_path / "fresh"))
    stored = read_embeddings(config.output)
    vectors = np.stack(stored["vector"].to_numpy(zero_copy_only=False))
    queries = vectors[[i.startswith("0-") for i in stored["image_id"].to_pylist()]]  # each has a twin
    hits = ours.search(queries, 10)
    assert np.array_equal(hits.ids, theirs.search(queries, 10).ids)
    twins = hits.ids[np.isclose(hits.scores[:, :1], hits.scores).sum(1) > 1]
    assert len(twins) and all(list(row[:2]) == sorted(row[:2]) for row in twins)  # ties by ascending image_id
    other = run_index(IndexConfig(**{**config.__dict__, "model": _retriever(tmp_path / "other.pt", maps, seed=1)}))
    assert other["embedded"] == other["rows"]  # another retriever: every row again


def _shards_of(config: IndexConfig, table: pa.Table) -> set[str]:
    """The shards a part's database rows fall in."""
    from vprlib.index.shards import shard_keys

    rows = table.filter(pa.compute.equal(table["split"], "database"))
    return set(shard_keys(rows, config.shard_by, config.tile_m))


def test_a_killed_reindex_leaves_the_old_index_and_its_rerun_finishes(city, tmp_path):
    _, maps = city
    model = _retriever(tmp_path / "model.pt", maps)
    output = tmp_path / "index"
    first = run_index(_config(maps, model, output, split="query"))  # the index a user has
    manifest = read_manifest(str(output))
    other = _retriever(tmp_path / "other.pt", maps, seed=1)  # every part to embed again
    job = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "index.py"), "--maps", maps, "--model", other,
                            "--output", str(output), "--tile-m", "15", "--split", "query", "--cpus-per-actor", "0.5",
                            "--ray-address", "local"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    new = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None and not new:
        time.sleep(0.05)
        new = set(os.listdir(output / EMBEDDINGS)) - set(read_parts(str(output))["file"].to_pylist())
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert new, "the job was not killed while embedding"
    assert read_manifest(str(output)) == manifest  # the old index, whole and searchable
    vectors = np.stack(read_embeddings(str(output))["vector"].to_numpy(zero_copy_only=False))
    assert Index(str(output)).search(vectors[:2], 3).ids[0][0] is not None
    rerun = run_index(_config(maps, other, output, split="query"))
    assert rerun["rows"] == first["rows"] and rerun["parts_embedded"] == first["parts_embedded"]
    run_index(_config(maps, other, tmp_path / "fresh", split="query"))
    assert read_manifest(str(output))["shards"] == read_manifest(str(tmp_path / "fresh"))["shards"]
    assert not [f for f in os.listdir(output / EMBEDDINGS) if f.startswith(".tmp-")]


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


def test_a_vector_column_reads_as_the_matrix_of_its_rows():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 5)).astype(np.float32)
    fixed = pa.chunked_array([pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 5) for v in (vectors[:3],
                                                                                                  vectors[3:])])
    plain = pa.chunked_array([pa.array([list(v) for v in vectors[:4]], pa.list_(pa.float32())),
                              pa.array([list(v) for v in vectors[4:]], pa.list_(pa.float32()))])
    for column in (fixed, plain, fixed.combine_chunks()):
        out = vector_matrix(column)
        assert out.dtype == np.float32 and np.array_equal(out, vectors)
    sliced = fixed.combine_chunks().slice(2, 3)  # an offset into the values: rows 2..4, not the first three
    assert np.array_equal(vector_matrix(sliced), vectors[2:5])
    assert vector_matrix(pa.chunked_array([], pa.list_(pa.float32(), 5))).shape[0] == 0


def test_an_embeddings_file_costs_about_its_vectors_bytes(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(256, 512)).astype(np.float32)
    table = pa.table({"image_id": [f"{i:09d}" for i in range(256)], "shard": ["a"] * 128 + ["b"] * 128,
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 512)})
    target = str(tmp_path / "part.parquet")
    write_embeddings(table, target)
    assert pq.ParquetFile(target).metadata.num_row_groups == 2  # one per shard
    assert os.path.getsize(target) < 1.05 * vectors.nbytes
    assert np.array_equal(vector_matrix(pq.read_table(target)["vector"]), vectors)


def test_ivfpq_reranks_exactly_and_small_shards_stay_flat():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3000, 32)).astype(np.float32)
    vectors = centres[rng.integers(0, 3000, 60_000)] + 0.3 * rng.normal(size=(60_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    params = ivfpq_params(len(vectors), 32)
    assert params is not None and (params.nlist, params.m, params.nprobe, params.refine) == (256, 4, 128, 16)
    assert ivfpq_params(40_000, 32) is None  # under IVF_MIN_ROWS: flat
    index, built = build_index(vectors, "ivfpq")
    assert built["kind"] == "ivfpq" and built["train"] == 64 * 256  # a sample of the shard
    queries = vectors[:300] + 0.05 * rng.normal(size=(300, 32)).astype(np.float32)
    scores, found = index.search(queries, 10)
    exact = queries @ vectors.T
    assert np.allclose(scores, np.take_along_axis(exact, found, 1), atol=1e-5)  # re-ranked: exact inner products
    assert np.mean(found[:, 0] == exact.argmax(1)) >= 0.99  # the rule's aim: the exact neighbour first
    assert build_index(vectors[:500], "ivfpq")[1] == {"kind": "flat", "requested": "ivfpq",
                                                      "why": "too few vectors for IVF"}


def _job(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "locate.py"), *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_locate_photos_and_refuse_what_does_not_fit(city, built, tmp_path):
    from vprlib.index.locate import LocateConfig, LocateError, format_table, locate

    root, _ = city
    index = tmp_path / "index"
    shutil.copytree(built[0], index)  # changed below
    query = next(r for r in pq.read_table(os.path.join(root, "manifest.parquet")).to_pylist() if r["split"] == "query")
    photo = os.path.join(root, query["uri"])
    result = _job("--index", str(index), photo, "--top-k", "3", "--json", "--rerank", "0")  # the search's order
    assert result.returncode == 0, result.stderr[-2000:]
    located = json.loads(result.stdout)
    assert len(located) == 1 and len(located[0]["places"]) == 3
    best = located[0]["places"][0]
    estimate = located[0]["estimate"]
    assert abs(estimate["lat"] - best["lat"]) < 1e-3 and abs(estimate["lon"] - best["lon"]) < 1e-3
    assert [p["similarity"] for p in located[0]["places"]] == sorted((p["similarity"] for p in located[0]["places"]),
                                                                     reverse=True)
    assert locate(LocateConfig(index=str(index), photos=(photo,), top_k=3, rerank=0)) == located

    sure = located[0]["confidence"]
    assert 0 < sure["ratio"] <= 1 and sure["sure"] == (sure["ratio"] <= 0.75) and sure["other_rank"] >= 2
    table = format_table(located)
    assert "estimated at" in table and "sure (distance ratio" in table
    from PIL import Image

    Image.new("RGB", (1, 1), (120, 120, 120)).save(tmp_path / "dot.png")
    dot = _job("--index", str(index), str(tmp_path / "dot.png"))
    assert dot.returncode == 2 and dot.stderr == (f"locate: error: {tmp_path / 'dot.png'} is 1x1 pixels: too small to "
                                                  f"show a street (the shorter side must be at least --min-side 32)\n")
    with pytest.raises(LocateError, match="cannot read the photo"):
        locate(LocateConfig(index=str(index), photos=(str(built[0].parent / "model.pt"),)))
    manifest = read_manifest(str(index))
    manifest["map_spec"]["models_identity"]["segmenter"] = "other weights"
    (index / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(LocateError, match="the extraction models changed"):
        locate(LocateConfig(index=str(index), photos=(photo,)))


def test_a_walk_as_a_video_is_located_as_the_same_frames_in_a_folder(city, built, tmp_path, capsys):
    """Five query photos of the city as the frames of a walk: written losslessly into a video (ffv1) and as PNG files
    into a folder, `locate --sequence` answers the same for both (resized to the maps' side alike); only the frames'
    names differ."""
    av = pytest.importorskip("av")
    from PIL import Image

    from jobs import locate as locate_job

    root, _ = city
    manifest = pq.read_table(os.path.join(root, "manifest.parquet")).to_pylist()
    photos = [np.asarray(Image.open(os.path.join(root, r["uri"])).convert("RGB").resize((48, 40)))
              for r in manifest if r["split"] == "query"][:5]  # not the maps' side: the frames are resized as photos
    assert len(photos) == 5
    (tmp_path / "walk").mkdir()
    with av.open(str(tmp_path / "walk.mkv"), "w") as out:
        stream = out.add_stream("ffv1", rate=2)
        stream.height, stream.width = photos[0].shape[:2]
        stream.pix_fmt = "bgr0"
        for i, photo in enumerate(photos):
            Image.fromarray(photo).save(tmp_path / "walk" / f"frame{i}.png")
            out.mux(stream.encode(av.VideoFrame.from_ndarray(photo, format="rgb24")))
        out.mux(stream.encode())
    answers = {}
    for walk in ("walk", "walk.mkv"):
        assert locate_job.main(["--index", str(built[0]), "--sequence", str(tmp_path / walk), "--json",
                                "--top-k", "3"]) == 0
        answers[walk] = json.loads(capsys.readouterr().out)
    assert answers["walk"]["frame_files"] == [f"frame{i}.png" for i in range(5)]
    assert answers["walk.mkv"]["frame_files"] == [f"walk.mkv@{i / 2:.2f}s" for i in range(5)]
    same = {k: v for k, v in answers["walk"].items() if k not in ("sequence", "frame_files")}
    assert {k: v for k, v in answers["walk.mkv"].items() if k not in ("sequence", "frame_files")} == same
    assert same["frames"] == 5 and len(same["places"]) == 3


def test_locate_a_batch_on_ray_as_photo_by_photo(city, built, tmp_path, ray_session):
    from vprlib.index.locate import LocateConfig, locate, locate_batch

    root, _ = city
    manifest = pq.read_table(os.path.join(root, "manifest.parquet"))
    photos = manifest.filter(pa.compute.equal(manifest["split"], "query")).slice(0, 6)
    photos = photos.set_column(photos.column_names.index("uri"), "uri", pa.array(
        [os.path.join(root, u) for u in photos["uri"].to_pylist()[:5]] + ["/nowhere/missing.png"]))
    pq.write_table(photos, tmp_path / "photos.parquet")
    output = str(tmp_path / "located.parquet")
    summary = locate_batch(LocateConfig(index=str(built[0]), input=str(tmp_path / "photos.parquet"), output=output,
                                        top_k=3, batch_size=4))
    answers = pq.read_table(output).to_pylist()
    assert (summary["photos"], summary["located"], summary["failed"]) == (6, 5, 1)
    assert [a["image_id"] for a in answers] == photos["image_id"].to_pylist()  # the input's order
    assert answers[-1]["status"] == "error" and "missing.png" in answers[-1]["error"] and not answers[-1]["top_ids"]
    one = locate(LocateConfig(index=str(built[0]), photos=tuple(photos["uri"].to_pylist()[:5]), top_k=3))
    for answer, alone in zip(answers, one, strict=False):
        assert answer["top_ids"] == [p["image_id"] for p in alone["places"]]
        assert answer["similarity"] == pytest.approx([p["similarity"] for p in alone["places"]], abs=1e-4)
        assert (answer["lat"], answer["lon"]) == pytest.approx((alone["estimate"]["lat"], alone["estimate"]["lon"]))
    # With --prior-m, a photo with a prior position asks only the shards near it (the search over those shards is
    # test_search_on_actors_equals_one_flat_index's).
    import ray

    from vprlib.index.locate import BatchLocator

    config = LocateConfig(index=str(built[0]), input="x", output="y", prior_m=5.0)
    index = Index(str(built[0]))
    locator = BatchLocator(SearchPool(str(built[0]), manifest=index.manifest), ray.put(photos), config)
    priors = photos.to_pylist()
    assert locator.allowed([p["image_id"] for p in priors]) == [index.near(p["lat"], p["lon"], 5.0) for p in priors]
    assert any(len(index.near(p["lat"], p["lon"], 5.0)) < len(index.shards) for p in priors)


def test_an_embedding_actor_loads_its_retriever_without_the_extraction_models(tmp_path):
    """Every embedding actor (index, evaluate, locate) starts by loading the retriever: only its family's module is
    imported, not vprlib.models.zoo and the transformers it brings (about a second more at each actor's start)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=16, encoding=EncodingConfig(num_classes=4)))
    path = tmp_path / "model.pt"
    model.save(path, map_spec={"side": 8}, input_side=8)
    code = ("import sys; from vprlib.index.embed import Embedder, retriever_record; "
            f"r = retriever_record({str(path)!r}); e = Embedder({str(path)!r}); "
            "print(r.descriptor_size, sorted(m for m in ('transformers', 'vprlib.models.zoo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["16", "[]"]
