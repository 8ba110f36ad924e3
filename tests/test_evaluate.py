"""The evaluate job on a tiny synthetic city: Recall@N against an independent brute force, its outputs, the landmark
and positives modes, one-line errors, and the HTML report."""

import datetime
import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from jobs import evaluate as evaluate_job
from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.index.search import read_embeddings, read_manifest
from vprlib.maps import decode_depth, decode_seg, read_maps, read_spec, write_part, write_spec
from vprlib.models.cosplace import CosPlace, CosPlaceConfig
from vprlib.models.encodings import EncodingConfig
from vprlib.models.zoo import load_retriever

SIDE = 32
RADIUS = 6.0  # a query's own place (jitter 2 m) but not the next one (10 m along the street)


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> str:
    """The city's ground-truth maps with a landmark per row (two neighbouring places share one)."""
    root = tmp_path_factory.mktemp("city")
    generate_city(CityConfig(places=12, side=SIDE, workers=1), str(root))
    gt = os.path.join(root, GT_MAPS)
    table = read_maps(gt)
    table = table.append_column("landmark_id", pc.divide(table["place_id"], 2).cast(pa.int64()))
    return _write_maps(table, str(root / "maps"), read_spec(gt))


def _write_maps(table: pa.Table, output: str, spec: dict) -> str:
    write_spec(output, spec)  # makes the folder
    write_part(table, output, table.schema)
    return output


@pytest.fixture(scope="module")
def model(maps, tmp_path_factory) -> str:
    """An untrained small CosPlace that says it was trained on the city's maps."""
    torch.manual_seed(0)
    net = CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=32, encoding=EncodingConfig(num_classes=4)))
    path = str(tmp_path_factory.mktemp("model") / "best.pt")
    net.save(path, map_spec=read_spec(maps), input_side=SIDE)
    return path


@pytest.fixture(scope="module")
def index(ray_session, maps, model, tmp_path_factory) -> str:
    from vprlib.index.build import IndexConfig, run_index

    output = str(tmp_path_factory.mktemp("index"))
    run_index(IndexConfig(maps=maps, model=model, output=output, tile_m=40))  # several shards: merged top-k
    assert len(read_manifest(output)["shards"]) > 1
    return output


@pytest.fixture(scope="module")
def gps_run(index, maps, tmp_path_factory) -> tuple[dict, str]:
    from vprlib.index.evaluate import EvaluateConfig, run_evaluate

    output = str(tmp_path_factory.mktemp("eval"))
    summary = run_evaluate(EvaluateConfig(index=index, queries=maps, output=output, recall="1,2,5", radius_m=RADIUS,
                                          report=True, report_queries=7, rerank=0))  # the search's own order
    return summary, output


# ----------------------------------------------------------------------------------------------- brute force
def embed_directly(model: str, rows: pa.Table) -> np.ndarray:
    """Descriptors of maps rows by the retriever in this process: no Ray, no faiss."""
    net = load_retriever(model)
    rows = rows.to_pylist()
    with torch.no_grad():
        return net.embed(torch.from_numpy(np.stack([decode_depth(r) for r in rows]).copy()),
                         torch.from_numpy(np.stack([decode_seg(r) for r in rows]).copy())).numpy()


def brute_force(query_vectors: np.ndarray, database_vectors: np.ndarray, positive) -> list:
    """Per query (None: no ground truth), the 1-based rank of its first positive among ALL database rows ranked by
    cosine similarity (0 when there is none); `positive(i, j)` says whether database row j is right for query i."""
    q = query_vectors / np.linalg.norm(query_vectors, axis=1, keepdims=True)
    db = database_vectors / np.linalg.norm(database_vectors, axis=1, keepdims=True)
    order = np.argsort(-(q @ db.T), axis=1, kind="stable")
    ranks = []
    for i, ranked in enumerate(order):
        right = [positive(i, int(j)) for j in ranked]
        ranks.append(None if right[0] is None else next((r + 1 for r, ok in enumerate(right) if ok), 0))
    return ranks


def recall_by_definition(ranks: list, n: int) -> float:
    """Paper eq. (10): the share of queries (rows with ground truth) with a positive among their first n."""
    queries = [r for r in ranks if r is not None]
    return sum(0 < r <= n for r in queries) / len(queries)


def _query_rows(maps: str) -> pa.Table:
    return read_maps(maps, filter=pc.field("split") == "query")


def _database(index: str) -> tuple[pa.Table, np.ndarray]:
    table = read_embeddings(index)
    return table, np.stack(table["vector"].to_numpy(zero_copy_only=False))


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_gps_recall_equals_brute_force_over_all_stored_embeddings(gps_run, maps, model, index):
    summary, output = gps_run
    queries = _query_rows(maps)
    database, vectors = _database(index)
    q_xy = list(zip(queries["utm_east"].to_pylist(), queries["utm_north"].to_pylist(), strict=True))
    db_xy = list(zip(database["utm_east"].to_pylist(), database["utm_north"].to_pylist(), strict=True))

    def within(i: int, j: int) -> bool:
        return math.hypot(q_xy[i][0] - db_xy[j][0], q_xy[i][1] - db_xy[j][1]) <= RADIUS

    ranks = brute_force(embed_directly(model, queries), vectors, within)
    for n in (1, 2, 5):
        assert summary[f"recall@{n}"] == recall_by_definition(ranks, n)
    assert 0 < summary["recall@1"] < summary["recall@5"]  # neither trivial
    results = pq.read_table(os.path.join(output, "results.parquet"))
    expected = dict(zip(queries["image_id"].to_pylist(), ranks, strict=True))
    found = dict(zip(results["image_id"].to_pylist(), results["first_correct_rank"].to_pylist(), strict=True))
    assert found == {i: (r if 0 < r <= 5 else None) for i, r in expected.items()}


@pytest.mark.slow
def test_results_and_summary_say_what_was_found_and_how(gps_run, maps, index):
    summary, output = gps_run
    results = pq.read_table(os.path.join(output, "results.parquet"))
    assert results.column_names == ["image_id", "lat", "lon", "top_ids", "scores", "distances_m", "correct",
                                    "first_correct_rank", "positives", "indexed", "top_uris", "top_lat", "top_lon",
                                    "search_first_correct_rank"]
    assert results["search_first_correct_rank"].to_pylist() == results["first_correct_rank"].to_pylist()
    assert not any(results["indexed"].to_pylist())
    queries = _query_rows(maps)
    assert sorted(results["image_id"].to_pylist()) == sorted(queries["image_id"].to_pylist())
    database, _ = _database(index)
    xy = {i: (e, n) for i, e, n in zip(*(database[c].to_pylist() for c in ("image_id", "utm_east", "utm_north")),
                                       strict=True)}
    q_xy = {i: (e, n) for i, e, n in zip(*(queries[c].to_pylist() for c in ("image_id", "utm_east", "utm_north")),
                                         strict=True)}
    lat, uri = (dict(zip(database["image_id"].to_pylist(), database[c].to_pylist(), strict=True)) for c in ("lat",
                                                                                                           "uri"))
    for row in results.to_pylist():
        assert len(row["top_ids"]) == len(row["scores"]) == len(row["distances_m"]) == len(row["correct"]) == 5
        assert row["scores"] == sorted(row["scores"], reverse=True)
        metres = [math.dist(q_xy[row["image_id"]], xy[j]) for j in row["top_ids"]]
        assert row["distances_m"] == pytest.approx(metres, abs=1e-6)
        assert row["correct"] == [m <= RADIUS for m in metres]
        hits = [r for r, ok in enumerate(row["correct"], start=1) if ok]
        assert row["first_correct_rank"] == (hits[0] if hits else None)
        assert row["positives"] == sum(math.dist(q_xy[row["image_id"]], p) <= RADIUS for p in xy.values())
        assert row["top_lat"] == [lat[j] for j in row["top_ids"]] and row["top_uris"] == [uri[j] for j in
                                                                                            row["top_ids"]]
    on_disk = json.loads(Path(output, "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    manifest = read_manifest(index)
    assert on_disk["queries"] == queries.num_rows == 48 and on_disk["without_ground_truth"] == 0
    assert on_disk["mode"] == "gps" and on_disk["radius_m"] == RADIUS and on_disk["index"] == index
    assert on_disk["model"]["sha256"] == manifest["model"]["sha256"] and on_disk["k"] == 5
    assert on_disk["distances"] == "metric frame utm_east/utm_north"
    assert datetime.datetime.fromisoformat(on_disk["time"]).tzinfo is not None
    curve = on_disk["recall_curve"]
    assert len(curve) == 5 and curve == sorted(curve) and [curve[n - 1] for n in (1, 2, 5)] == [
        on_disk[f"recall@{n}"] for n in (1, 2, 5)]


@pytest.mark.slow
def test_reranking_reorders_the_search_top_k_by_the_maps(gps_run, index, maps, tmp_path, capsys):
    """--rerank 5 on Ray actors: each query's top 5 are the search's (gps_run, --rerank 0), reordered, at least one
    of them differently; the search's own figures are kept beside the re-ranked ones."""
    from vprlib.index.evaluate import run_evaluate

    before, searched = gps_run
    output = str(tmp_path / "reranked")
    config = evaluate_job.parse_args(["--index", index, "--queries", maps, "--output", output, "--recall", "1,2,5",
                                      "--radius-m", str(RADIUS), "--rerank", "5"])
    summary = run_evaluate(config)
    old = {r["image_id"]: r for r in pq.read_table(os.path.join(searched, "results.parquet")).to_pylist()}
    new = pq.read_table(os.path.join(output, "results.parquet")).to_pylist()
    assert all(sorted(r["top_ids"]) == sorted(old[r["image_id"]]["top_ids"]) for r in new)
    assert any(r["top_ids"] != old[r["image_id"]]["top_ids"] for r in new)
    assert all(r["search_first_correct_rank"] == old[r["image_id"]]["first_correct_rank"] for r in new)
    assert summary["rerank"]["search_only"] == {k: before[k] for k in ("recall@1", "recall@2", "recall@5")}
    assert summary["recall@5"] == before["recall@5"]  # the same five, in another order
    assert summary["rerank"]["k"] == 5 and summary["rerank"]["ms_per_query"] > 0
    assert summary["rerank"]["search_ms_per_query"] > 0 and before["rerank"]["ms_per_query"] == 0
    assert "re-ranked the first 5 by their maps" in capsys.readouterr().out


def _handmade_queries(maps: str, output: str) -> pa.Table:
    """The city's query rows as a landmark dataset without GPS (GLDv2-like): `positives` lists (one row without,
    one naming an id the index lacks), one row without a landmark, `has_gps` false, one photo missing."""
    rows = _query_rows(maps)
    n = rows.num_rows
    places = rows["place_id"].to_pylist()
    headings = rows["heading"].to_pylist()
    db = read_maps(maps, columns=["image_id", "place_id", "heading"], filter=pc.field("split") == "database")
    positives = [[i for i, p, h in zip(*(db[c].to_pylist() for c in ("image_id", "place_id", "heading")), strict=True)
                  if p == place or h == heading] for place, heading in zip(places, headings, strict=True)]
    positives[0] = None
    positives[1] = [*positives[1], "not-indexed"]
    landmarks = rows["landmark_id"].to_pylist()
    landmarks[2] = None
    uris = rows["uri"].to_pylist()
    uris[3] = "/nowhere/missing.png"
    for name, values, kind in (("positives", positives, pa.list_(pa.string())), ("landmark_id", landmarks, pa.int64()),
                               ("uri", uris, pa.string()), ("has_gps", [False] * n, pa.bool_()),
                               ("lat", [0.0] * n, pa.float64()), ("lon", [0.0] * n, pa.float64())):
        if name in rows.column_names:
            rows = rows.drop_columns([name])
        rows = rows.append_column(name, pa.array(values, kind))
    rows = rows.drop_columns(["utm_east", "utm_north", "utm_zone"])
    _write_maps(rows, output, read_spec(maps))
    return rows


@pytest.mark.slow
def test_landmark_and_positives_modes_equal_brute_force(index, maps, model, tmp_path):
    from vprlib.index import evaluate

    queries = _handmade_queries(maps, str(tmp_path / "queries"))
    vectors = embed_directly(model, queries)
    database, stored = _database(index)
    db_ids, db_landmarks = database["image_id"].to_pylist(), database["landmark_id"].to_pylist()
    landmarks, positives = queries["landmark_id"].to_pylist(), queries["positives"].to_pylist()

    def same_landmark(i: int, j: int) -> bool | None:
        return None if landmarks[i] is None else landmarks[i] == db_landmarks[j]

    def listed(i: int, j: int) -> bool | None:
        return None if positives[i] is None else db_ids[j] in positives[i]

    for flags, mode, positive in ((dict(landmarks=True), "landmark", same_landmark), ({}, "positives", listed)):
        output = str(tmp_path / mode)
        summary = evaluate.run_evaluate(evaluate.EvaluateConfig(index=index, queries=str(tmp_path / "queries"),
                                                                output=output, report=True, report_queries=48,
                                                                rerank=0, **flags))
        ranks = brute_force(vectors, stored, positive)
        assert summary["mode"] == mode and summary["queries"] == 47 and summary["without_ground_truth"] == 1
        assert [summary[f"recall@{n}"] for n in (1, 5, 10)] == [recall_by_definition(ranks, n) for n in (1, 5, 10)]
        assert summary["radius_m"] is None and summary["distances"] == "none: the queries have no GPS"
        results = pq.read_table(os.path.join(output, "results.parquet")).to_pylist()
        assert all(math.isnan(d) for row in results for d in row["distances_m"])
        assert [r["correct"] is None for r in results] == [rank is None for rank in ranks]
        page = Path(output, "report.html").read_text(encoding="utf-8")
        assert page.count('class="placeholder"') == 1 and "missing file" in page and "no GPS" in page


def _fake_index(root, spec: dict, model: dict) -> str:
    root.mkdir()
    (root / "index.json").write_text(json.dumps({"map_spec": spec, "model": model, "rows": 1, "parts": "",
                                                 "shards": {}}))
    return str(root)


def test_bad_input_is_one_line_before_any_work(maps, model, tmp_path, capsys):
    from vprlib.index.embed import retriever_record

    spec = read_spec(maps)
    other = tmp_path / "other-maps"
    write_spec(str(other), {**spec, "side": 64, "strategy": "synthetic"})
    record = retriever_record(model).identity()
    index = _fake_index(tmp_path / "index", spec, record)
    cases = [
        (["--queries", str(other)], ["holds other maps than the index", "side: 32 != 64",
                                     "strategy: 'ground-truth' != 'synthetic'"]),
        (["--queries", maps, "--model", model, "--index", _fake_index(tmp_path / "changed", spec,
                                                                        {**record, "sha256": "0" * 64})],
         ["the retriever changed since the index was built"]),
        (["--queries", maps, "--landmarks", "--radius-m", "10"], ["not allowed with"]),
        (["--queries", maps, "--recall", "1,five"], ["comma-separated integers"]),
        (["--queries", maps, "--rerank", "-1"], ["rerank must be >= 0"]),
        (["--queries", maps, "--database-maps", str(tmp_path / "moved")], [
            f"re-ranking reads the maps table the index was built from, {tmp_path / 'moved'}, which is not there"]),
    ]
    for argv, words in cases:
        args = ["--index", index, "--output", str(tmp_path / "out"), *argv]
        try:
            code = evaluate_job.main(args)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


class _Page(HTMLParser):
    """What the report's markup holds: query sections, figures' classes, every URL-valued attribute, tags."""

    def __init__(self):
        super().__init__()
        self.sections, self.urls, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.urls += [value for name, value in attrs.items() if name in ("src", "href", "srcset", "data", "action")]
        classes = (attrs.get("class") or "").split()
        if tag == "section" and "query" in classes:
            self.sections.append({"id": attrs["data-image-id"], "right": attrs["data-right"], "preds": []})
        if tag == "figure" and "pred" in classes:
            self.sections[-1]["preds"].append(("correct" in classes, "wrong" in classes, attrs["data-correct"]))


@pytest.mark.slow
def test_report_is_one_self_contained_page_framed_by_the_results(gps_run):
    summary, output = gps_run
    assert sorted(os.listdir(output)) == ["report.html", "results.parquet", "summary.json"]
    text = Path(output, "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert len(page.sections) == 7
    assert page.urls and all(url.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
                             for url in page.urls)
    assert not {"script", "link", "iframe", "object"} & set(page.tags) and "url(" not in text
    results = {r["image_id"]: r for r in pq.read_table(os.path.join(output, "results.parquet")).to_pylist()}
    for section in page.sections:
        correct = results[section["id"]]["correct"][:3]
        assert [p[0] for p in section["preds"]] == correct and [p[1] for p in section["preds"]] == [
            not c for c in correct]
        assert [p[2] for p in section["preds"]] == [str(c).lower() for c in correct]
        assert section["right"] == str(results[section["id"]]["first_correct_rank"] == 1).lower()
    rights = [s["right"] for s in page.sections]
    assert rights == sorted(rights) and "false" in rights and "true" in rights  # a mix: the wrong ones first
    assert "figure.pred.correct { border-color: #1f9d55; }" in text and "figure.pred.wrong { border-color: #d7263d; }" \
        in text
    assert page.tags.count("svg") == 2 and page.tags.count("polyline") == 1  # the Recall@N curve and the map
    assert text.count('<line class="match"') == len(page.sections)
    points = text.split('<polyline points="')[1].split('"')[0].split()
    assert len(points) == summary["k"]
    assert f"Recall@1 {summary['recall@1']:.1%}" in text


def _utm_within(queries: pa.Table, database: pa.Table, radius_m: float):
    """The reference's ground truth, written out: database row j is right for query i when it lies within
    `radius_m` on the UTM grid (easting/northing read from the names; no zone, no lat/lon)."""
    q = list(zip(queries["utm_east"].to_pylist(), queries["utm_north"].to_pylist(), strict=True))
    db = list(zip(database["utm_east"].to_pylist(), database["utm_north"].to_pylist(), strict=True))
    return lambda i, j: math.hypot(q[i][0] - db[j][0], q[i][1] - db[j][1]) <= radius_m


@pytest.fixture(scope="module")
def nordland(ray_session, maps, model, tmp_path_factory) -> tuple[str, str]:
    """The city as Nordland's names describe it (`@0@<northing>@@@@@...`): easting 0, the northing along the
    street, no UTM zone, no lat/lon (0, 0 and has_gps false, as the VPR reader gives them); its maps and index."""
    from vprlib.index.build import IndexConfig, run_index

    table = read_maps(maps)
    north = table["utm_north"].to_numpy() - pc.min(table["utm_north"]).as_py()
    for name, values in (("utm_east", pa.array(np.zeros(table.num_rows))), ("utm_north", pa.array(north)),
                         ("utm_zone", pa.nulls(table.num_rows, pa.int32())),
                         ("lat", pa.array(np.zeros(table.num_rows))), ("lon", pa.array(np.zeros(table.num_rows))),
                         ("has_gps", pa.array([False] * table.num_rows))):
        table = table.drop_columns([name]) if name in table.column_names else table
        table = table.append_column(name, values)
    root = tmp_path_factory.mktemp("nordland")
    nordland_maps = _write_maps(table, str(root / "maps"), read_spec(maps))
    run_index(IndexConfig(maps=nordland_maps, model=model, output=str(root / "index")))
    return nordland_maps, str(root / "index")


@pytest.mark.slow
def test_nordland_names_are_scored_along_the_track(nordland, model, tmp_path):
    from vprlib.index.evaluate import EvaluateConfig, run_evaluate

    maps, index = nordland
    queries = _query_rows(maps)
    vectors = embed_directly(model, queries)
    database, stored = _database(index)
    assert database["utm_zone"].null_count == database.num_rows and set(database["lat"].to_pylist()) == {0.0}
    output = str(tmp_path / "eval")
    summary = run_evaluate(EvaluateConfig(index=index, queries=maps, output=output, recall="1,2,5", radius_m=RADIUS,
                                          rerank=0))
    ranks = brute_force(vectors, stored, _utm_within(queries, database, RADIUS))
    assert summary["mode"] == "gps" and summary["distances"] == "metric frame utm_east/utm_north"
    assert summary["queries"] == 48 and summary["without_positive"] == 0
    assert [summary[f"recall@{n}"] for n in (1, 2, 5)] == [recall_by_definition(ranks, n) for n in (1, 2, 5)]
    assert 0 < summary["recall@1"] < summary["recall@5"]
    results = pq.read_table(os.path.join(output, "results.parquet"))
    found = dict(zip(results["image_id"].to_pylist(), results["first_correct_rank"].to_pylist(), strict=True))
    assert found == {i: (r if 0 < r <= 5 else None) for i, r in zip(queries["image_id"].to_pylist(), ranks,
                                                                      strict=True)}
    assert not any(math.isnan(d) for row in results["distances_m"].to_pylist() for d in row)  # metres on the track


@pytest.mark.slow
def test_queries_without_a_positive_are_counted_and_excluded_on_request(index, maps, model, tmp_path, capsys):
    radius = 2.0  # some queries' own place lies farther than this from its database captures
    queries = _query_rows(maps)
    vectors = embed_directly(model, queries)
    database, stored = _database(index)
    within = _utm_within(queries, database, radius)
    no_positive = sum(not any(within(i, j) for j in range(database.num_rows)) for i in range(queries.num_rows))
    assert 0 < no_positive < queries.num_rows
    ranks = brute_force(vectors, stored, within)
    with_positive = [r for i, r in enumerate(ranks) if any(within(i, j) for j in range(database.num_rows))]
    assert sum(0 < r <= 10 for r in ranks) > 0  # some hits, so dividing by fewer queries shows
    from vprlib.index.evaluate import run_evaluate

    for flags, scored in (([], queries.num_rows), (["--exclude-no-positive"], queries.num_rows - no_positive)):
        output = str(tmp_path / f"eval{len(flags)}")
        config = evaluate_job.parse_args(["--index", index, "--queries", maps, "--output", output, "--radius-m",
                                          str(radius), "--rerank", "0", *flags])
        assert config.exclude_no_positive == bool(flags)
        summary = run_evaluate(config)
        # the reference divides by every query; excluding divides by those with a positive within the radius
        kept = with_positive if flags else ranks
        assert [summary[f"recall@{n}"] for n in (1, 5, 10)] == [sum(0 < r <= n for r in kept) / scored
                                                                 for n in (1, 5, 10)]
        on_disk = json.loads(Path(output, "summary.json").read_text())
        assert on_disk["without_positive"] == no_positive and on_disk["scored_queries"] == scored
        assert on_disk["exclude_no_positive"] == bool(flags) and on_disk["queries"] == queries.num_rows
        fate = "left out of Recall@N" if flags else "counted as misses"
        line = f"{no_positive} of the {queries.num_rows} queries have no positive in the index (within 2 m): {fate}"
        assert line in capsys.readouterr().out


@pytest.mark.slow
def test_mixed_utm_frames_are_refused_in_one_line_before_any_work(index, maps, tmp_path, monkeypatch, capsys):
    from vprlib.index import evaluate

    # a query set whose first 8 rows name no UTM zone and carry no lat/lon, beside rows of the index's zone
    queries = _query_rows(maps)
    bare = np.arange(queries.num_rows) < 8
    for name, values in (("utm_zone", pa.array(np.where(bare, None, queries["utm_zone"].to_numpy()), pa.int32())),
                         ("lat", pa.array(np.where(bare, 0.0, queries["lat"].to_numpy()))),
                         ("lon", pa.array(np.where(bare, 0.0, queries["lon"].to_numpy()))),
                         ("has_gps", pa.array(~bare))):
        queries = queries.drop_columns([name]) if name in queries.column_names else queries
        queries = queries.append_column(name, values)
    _write_maps(queries, str(tmp_path / "queries"), read_spec(maps))
    monkeypatch.setattr(evaluate, "score_queries", lambda *args: pytest.fail("embedded despite the refusal"))
    code = evaluate_job.main(["--index", index, "--queries", str(tmp_path / "queries"), "--output",
                              str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "8 query and 0 database row(s) have UTM coordinates and no zone: they share no metric frame" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- the report's sample
def _results(first_ranks: list, distances: list) -> pa.Table:
    """A results table as the evaluation writes it, for queries whose first right rank (None: none in the top 3)
    and first prediction's distance are given; query i stands at longitude -0.1 + i / 10,000."""
    n = len(first_ranks)
    correct = [[rank == r for r in (1, 2, 3)] for rank in first_ranks]
    return pa.table({"image_id": [f"q{i}" for i in range(n)], "lat": [51.5] * n,
                     "lon": [-0.1 + i / 1e4 for i in range(n)],
                     "top_ids": [[f"d{i}", "x", "y"] for i in range(n)], "scores": [[0.9, 0.8, 0.7]] * n,
                     "distances_m": [[d, 50.0, 60.0] for d in distances], "correct": correct,
                     "first_correct_rank": pa.array(first_ranks, pa.int32()), "positives": [1] * n})


def test_the_sample_is_a_mix_of_the_worst_near_misses_and_right_ones():
    from vprlib.index.report import pick_sample

    ranks = [None, None, None, None, 2, 3, 2, 1, 1, 1, 1, 1]
    distances = [40.0, 300.0, 90.0, 150.0, 30.0, 30.0, 30.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    picked = pick_sample(_results(ranks, distances), 9, seed=0)
    groups = [g for g, _ in picked]
    assert groups == ["worst"] * 3 + ["near"] * 3 + ["right"] * 3
    assert [i for g, i in picked if g == "worst"] == [1, 3, 2]  # the farthest first predictions of the four
    assert {i for g, i in picked if g == "right"} <= {7, 8, 9, 10, 11}
    few_near = pick_sample(_results([None, 2, 1, 1, 1, 1], [9.0, 9.0, 1.0, 1.0, 1.0, 1.0]), 5, seed=0)
    assert [g for g, _ in few_near] == ["worst", "near", "right", "right", "right"]  # the others fill the shares


def test_the_map_joins_each_shown_query_to_its_first_prediction():
    from vprlib.index.report import Prediction, QueryView, positions_svg

    database = pa.table({"image_id": ["d0", "d1", "d2"], "lat": [51.5, 51.5005, 51.5], "lon": [-0.1, -0.1, -0.099],
                         "utm_zone": pa.array([30, 30, 30], pa.int32())})
    views = [QueryView(f"q{i}", None, np.zeros((2, 2)), np.zeros((2, 2), np.uint8), 1 if ok else None, 1,
                       [Prediction(1, f"d{i}", None, 0.9, 5.0, ok)]) for i, ok in enumerate((True, False))]
    svg = positions_svg(views, [(51.5, -0.1001), (51.5004, -0.1)], database)
    page = _Page()
    page.feed(svg)
    assert page.tags.count("svg") == 1 and svg.count('class="indexed"') == 3
    assert svg.count('<line class="match"') == 2 and 'data-query="q0"' in svg and 'stroke="#1f9d55"' in svg
    assert 'stroke="#d7263d"' in svg and ">1</text>" in svg and ">2</text>" in svg and " m</text></svg>" in svg
    assert positions_svg(views, [(float("nan"), float("nan"))] * 2, database) == ""  # no GPS: no map
