"""The embedded synthetic city: ground truth, layout, determinism, manifest and the job's command line."""

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from vprlib.data.manifest import read_manifest
from vprlib.demo import city as sc
from vprlib.maps import decode_depth, decode_seg, read_maps, read_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = sc.CityConfig(places=12, side=32, train_visits=1, workers=1)


@pytest.fixture(scope="module")
def cities(tmp_path_factory):
    """The same small city generated twice, by one process and by two."""
    first, second = tmp_path_factory.mktemp("city1"), tmp_path_factory.mktemp("city2")
    table = sc.generate_city(SMALL, str(first))
    sc.generate_city(dataclasses.replace(SMALL, workers=2), str(second))
    return table, str(first), str(second)


def _file_hashes(root: str) -> dict[str, str]:
    hashes = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def test_same_config_gives_identical_bytes(cities):
    _, first, second = cities
    hashes = _file_hashes(first)
    # rgb + gt per capture of 18 visits, manifest.parquet, summary.json, config.json, the ground-truth maps' parts
    # and spec
    assert len(hashes) == 2 * SMALL.headings * 18 + 3 + math.ceil(18 / sc.VISITS_PER_PART) + 1
    with open(os.path.join(first, "config.json")) as f:
        assert json.load(f)["places"] == SMALL.places
    assert hashes == _file_hashes(second) | {k: v for k, v in hashes.items() if k.startswith(sc.GT_MAPS + "/part-")}
    # the ground-truth maps differ only in where the photos are (absolute uris)
    assert read_maps(os.path.join(first, sc.GT_MAPS)).drop_columns(["uri"]).equals(
        read_maps(os.path.join(second, sc.GT_MAPS)).drop_columns(["uri"]))


def test_ground_truth_maps_table_holds_the_exact_static_maps(cities):
    table, first, _ = cities
    spec = read_spec(os.path.join(first, sc.GT_MAPS))
    assert (spec["strategy"], spec["seg_classes"], spec["depth"], spec["side"]) == (
        "ground-truth", "refined4", "inverse-metres", SMALL.side)
    maps = read_maps(os.path.join(first, sc.GT_MAPS))
    assert sorted(maps["image_id"].to_pylist()) == sorted(table["image_id"].to_pylist())
    assert set(maps["status"].to_pylist()) == {"ok"} and set(maps["strategy"].to_pylist()) == {"ground-truth"}
    for row in maps.to_pylist()[::17]:
        with np.load(os.path.join(first, row["gt_uri"])) as gt:
            metres, labels = gt["depth"], gt["seg"]
        depth = decode_depth(row)
        assert np.allclose(depth[metres > 0], 1.0 / metres[metres > 0]) and (depth[metres == 0] == 0).all()
        assert (decode_seg(row) == np.array([0, 1, 2, 2, 3])[labels]).all()  # road merged into terrain
        assert row["uri"] == os.path.join(first, "rgb", f"{row['image_id']}.png")


def test_static_maps_ignore_dynamic_objects():
    config = sc.CityConfig(places=8, side=48)
    city = sc.build_city(config)
    visit = sc.plan_visits(city)[0]
    camera = sc.Camera(visit.position, heading=90.0)
    first, second = (sc.render(city, camera, visit.appearance,
                               sc.dynamic_objects(config, np.array(visit.position[:2]), np.random.default_rng(s)),
                               side=48) for s in (1, 2))
    assert first["dynamic"].any() and not np.array_equal(first["obs_seg"], second["obs_seg"])
    for key in ("depth", "seg"):
        np.testing.assert_array_equal(first[key], second[key])
    for maps in (first, second):
        static = maps["depth"] > 0
        assert np.all(maps["obs_depth"][static] <= maps["depth"][static] + 1e-4)
        np.testing.assert_array_equal(maps["obs_depth"][~maps["dynamic"]], maps["depth"][~maps["dynamic"]])


def _reference_hit(kind, p, o, d):
    """Scalar ray/primitive intersection, written apart from the vectorised renderer: nearest t > 0 or inf."""
    if kind == sc.BOX:
        near, far = -math.inf, math.inf
        for i in range(3):
            if d[i] == 0:
                if not p[i] <= o[i] <= p[i + 3]:
                    return math.inf
                continue
            t1, t2 = sorted(((p[i] - o[i]) / d[i], (p[i + 3] - o[i]) / d[i]))
            near, far = max(near, t1), min(far, t2)
        return near if near <= far and near > 0 else math.inf
    if kind == sc.CYLINDER:
        cx, cy, r, z0, z1 = p[:5]
        best = math.inf
        a = d[0] ** 2 + d[1] ** 2
        b = 2 * ((o[0] - cx) * d[0] + (o[1] - cy) * d[1])
        c = (o[0] - cx) ** 2 + (o[1] - cy) ** 2 - r * r
        if b * b - 4 * a * c >= 0:
            t = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
            if t > 0 and z0 <= o[2] + t * d[2] <= z1:
                best = t
        for z in (z0, z1):  # discs
            if d[2] != 0:
                t = (z - o[2]) / d[2]
                if 0 < t < best and (o[0] + t * d[0] - cx) ** 2 + (o[1] + t * d[1] - cy) ** 2 <= r * r:
                    best = t
        return best
    cx, cy, cz, rxy, rz = p[:5]
    q = [(o[0] - cx) / rxy, (o[1] - cy) / rxy, (o[2] - cz) / rz]
    e = [d[0] / rxy, d[1] / rxy, d[2] / rz]
    a, b, c = sum(v * v for v in e), 2 * sum(u * v for u, v in zip(q, e, strict=True)), sum(v * v for v in q) - 1
    if b * b - 4 * a * c < 0:
        return math.inf
    t = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return t if t > 0 else math.inf


def test_rendered_depth_matches_scalar_ray_cast():
    config = sc.CityConfig(places=8, side=40, max_distance=1e4)
    city = sc.build_city(config)
    rng = np.random.default_rng(0)
    checked = 0
    for visit in sc.plan_visits(city)[:3]:
        heading, pitch = float(rng.choice([0.0, 45.0, 225.0])), float(rng.uniform(-10, 10))
        camera = sc.Camera(visit.position, heading, pitch, fov=config.fov)
        maps = sc.render(city, camera, side=config.side)
        h, p = math.radians(heading), math.radians(pitch)
        forward = (math.sin(h) * math.cos(p), math.cos(h) * math.cos(p), math.sin(p))
        right = (math.cos(h), -math.sin(h), 0.0)
        up = (right[1] * forward[2], -right[0] * forward[2], right[0] * forward[1] - right[1] * forward[0])
        for row, col in rng.integers(0, config.side, (25, 2)):
            u = ((col + 0.5) / config.side * 2 - 1) * math.tan(math.radians(config.fov) / 2)
            v = (1 - (row + 0.5) / config.side * 2) * math.tan(math.radians(config.fov) / 2)
            d = [forward[i] + u * right[i] + v * up[i] for i in range(3)]
            hits = [_reference_hit(k, prm, visit.position, d)
                    for k, prm in zip(city.static.kind.tolist(), city.static.params.tolist(), strict=True)]
            ground = -visit.position[2] / d[2] if d[2] < 0 else math.inf
            nearest = min(min(hits), ground)
            expected = 0.0 if nearest > 1000 else nearest  # forward component of d is 1: t is planar depth
            assert maps["depth"][row, col] == pytest.approx(expected, rel=1e-4, abs=1e-4), (row, col)
            if np.isfinite(nearest) and nearest < ground:
                label = sc.LABEL_NAMES[city.static.label[int(np.argmin(hits))]]
                assert maps["seg"][row, col] == sc.LABELS[label][0]
            checked += 1
    assert checked == 75


def test_every_class_appears_and_dynamic_share_is_sensible(cities):
    table, first, _ = cities
    seg, obs, dynamic = np.zeros(256, int), np.zeros(256, int), 0
    for gt_uri in table["gt_uri"].to_pylist():
        with np.load(os.path.join(first, gt_uri), allow_pickle=False) as gt:
            assert set(gt.files) == {"depth", "seg", "obs_seg", "obs_depth", "dynamic"}
            assert gt["depth"].dtype == np.float32 and gt["seg"].dtype == np.uint8 and gt["dynamic"].dtype == bool
            assert np.all((gt["depth"] == 0) == (gt["seg"] == 0))  # sky, and only sky, has no depth
            seg += np.bincount(gt["seg"].ravel(), minlength=256)
            obs += np.bincount(gt["obs_seg"].ravel(), minlength=256)
            dynamic += int(gt["dynamic"].sum())
    assert np.flatnonzero(seg).tolist() == [0, 1, 2, 3, 4]
    # sky, building, road, sidewalk, tree, person, car, bus, truck, bicycle (ADE20K 0-based)
    assert {2, 1, 6, 11, 4, 12, 20, 80, 83, 127} <= set(np.flatnonzero(obs).tolist())
    assert 0.01 <= dynamic / obs.sum() <= 0.3
    with open(os.path.join(first, "summary.json")) as f:
        assert json.load(f)["dynamic_share"] == pytest.approx(dynamic / obs.sum(), abs=1e-4)


def test_layout_splits_headings_and_revisits(cities):
    table, _, _ = cities
    rows = table.to_pylist()
    assert {r["split"] for r in rows} == set(sc.SPLIT_ORDER)
    by_visit = {}
    for r in rows:
        by_visit.setdefault(r["visit_id"], []).append(r)
    for views in by_visit.values():
        assert sorted(v["heading"] for v in views) == [45.0 * k for k in range(8)]
        assert len({(v["lat"], v["lon"], v["time_of_day"], v["season"]) for v in views}) == 1
    database = {r["place_id"]: r for r in rows if r["split"] == "database"}
    queries = [r for r in rows if r["split"] == "query"]
    assert queries and all(q["place_id"] in database for q in queries)
    for q in queries:
        db = database[q["place_id"]]
        x, y = sc.geo_to_local(SMALL, np.array([q["lat"], db["lat"]]), np.array([q["lon"], db["lon"]]))
        assert 0 < math.hypot(x[0] - x[1], y[0] - y[1]) <= 2 * SMALL.jitter
        assert (q["time_of_day"], q["season"]) != (db["time_of_day"], db["season"])
        assert q["visit_id"] != db["visit_id"]
    train = [r for r in rows if r["split"] in ("train", "val")]
    tx, ty = sc.geo_to_local(SMALL, np.array([r["lat"] for r in train]), np.array([r["lon"] for r in train]))
    ex, ey = sc.geo_to_local(SMALL, np.array([r["lat"] for r in database.values()]),
                             np.array([r["lon"] for r in database.values()]))
    gaps = np.hypot(tx[:, None] - ex[None], ty[:, None] - ey[None])
    assert gaps.min() > 25.0  # the retrieval threshold: training never sees evaluation places


def test_val_split_with_more_places():
    city = sc.build_city(sc.CityConfig(places=40))
    visits = sc.plan_visits(city)
    counts = {s: sum(v.split == s for v in visits) for s in sc.SPLIT_ORDER}
    assert counts == {"train": 16 * 2, "val": 4 * 2, "database": 20, "query": 20}


def test_local_metres_round_trip_through_latlon():
    x, y = np.meshgrid(np.linspace(-2000, 2000, 9), np.linspace(-1500, 3000, 7))
    geo = sc.local_to_geo(SMALL, x, y)
    back_x, back_y = sc.geo_to_local(SMALL, geo["lat"], geo["lon"])
    assert np.abs(back_x - x).max() < 0.01 and np.abs(back_y - y).max() < 0.01
    assert np.all(geo["utm_zone"] == 30)  # central London (the UTM series itself: tests/test_geo.py)


def test_manifest_validates_and_points_at_files(cities):
    table, first, _ = cities
    manifest = read_manifest(os.path.join(first, "manifest.parquet"))
    assert manifest.num_rows == table.num_rows == 18 * 8
    for column in ("heading", "pitch", "utm_east", "utm_north", "utm_zone", "place_id", "split", "time_of_day",
                   "season", "dynamic_fraction", "gt_uri"):
        assert column in manifest.column_names
    assert all(os.path.exists(uri) for uri in manifest["uri"].to_pylist())
    assert all(os.path.exists(os.path.join(first, g)) for g in manifest["gt_uri"].to_pylist())
    raw = pq.read_table(os.path.join(first, "manifest.parquet"))
    assert raw["uri"][0].as_py() == "rgb/000000.png"
    fractions = raw["dynamic_fraction"].to_numpy()
    assert np.all((fractions >= 0) & (fractions <= 1)) and fractions.max() > 0


def test_large_side_renders():
    config = sc.CityConfig(places=8, side=512)
    city = sc.build_city(config)
    visit = sc.plan_visits(city)[0]
    maps = sc.render(city, sc.Camera(visit.position, 45.0), visit.appearance, side=512)
    assert maps["rgb"].shape == (512, 512, 3) and maps["depth"].shape == (512, 512)
    assert len(np.unique(maps["seg"])) >= 4


def _job(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "jobs", "synthcity.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("args", [["--output", "x", "--bogus", "1"], ["--output", "x", "--places", "many"],
                                  ["--places", "4"], ["--output", "x", "--places", "1"]])
def test_job_bad_flags_give_one_line_and_exit_2(args):
    result = _job(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr
    assert result.stdout == ""


def test_an_invalid_value_says_the_rule():
    with pytest.raises(ValueError, match=r"places \(must be >= 2: .*got 1\)"):
        sc.CityConfig(places=1)
    with pytest.raises(ValueError, match=r"train_visits \(must be in \[1, 16\].*; fov \(must be in \[10, 150\]"):
        sc.CityConfig(train_visits=20, fov=5)


def test_job_writes_city_config_and_summary(tmp_path):
    result = _job("--output", str(tmp_path), "--places", "4", "--side", "16", "--seed", "3", "--workers", "1")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["places"] == 4 and config["side"] == 16 and config["seed"] == 3
    assert "64 captures of 4 places" in result.stdout and "images/s" in result.stdout
    assert read_manifest(str(tmp_path / "manifest.parquet")).num_rows == 64


def test_dense_train_split_gives_cosplace_classes_of_its_visits(tmp_path):
    """--dense-train: every train place's visits stay in one 10 m cell and each heading in one 30 degree bin, so
    each CosPlace class (cell x bin) holds at least as many images as there are visits; other splits are as before."""
    from vprlib.models.cosplace import cosplace_groups

    config = sc.CityConfig(places=8, side=16, dense_train=12, workers=1)
    table = sc.generate_city(config, str(tmp_path))
    train = table.filter(pc.equal(table["split"], "train"))
    places = len(set(train["place_id"].to_pylist()))
    assert train.num_rows == places * 12 * config.headings
    classes, _ = cosplace_groups(train["utm_east"].to_numpy(), train["utm_north"].to_numpy(),
                                 train["heading"].to_numpy())
    assert np.bincount(classes).min() >= 12
    assert len(set(train["heading"].to_pylist())) > config.headings  # jittered within their bins
    plain = sc.generate_city(dataclasses.replace(config, dense_train=0), str(tmp_path / "plain"))
    others = [pc.invert(pc.equal(t["split"], "train")) for t in (table, plain)]
    assert table.filter(others[0]).num_rows == plain.filter(others[1]).num_rows


def test_same_look_queries_repeat_the_database_look_and_change_nothing_else():
    """The appearance study's city: with same_look_queries=1, each evaluation place's first query visit has the
    database visit's time of day and season, the other query visit another; the plan's other draws are unchanged."""
    base = sc.plan_visits(sc.build_city(sc.CityConfig(places=12, query_visits=2)))
    study = sc.plan_visits(sc.build_city(sc.CityConfig(places=12, query_visits=2, same_look_queries=1)))
    assert [(v.place_id, v.split, v.position) for v in base] == [(v.place_id, v.split, v.position) for v in study]
    looks = {}
    for visit in study:
        looks.setdefault(visit.place_id, []).append((visit.split, visit.appearance))
    evaluated = [v for v in looks.values() if v[0][0] == "database"]
    assert evaluated and all(q1 == db and q2 != db for (_, db), (_, q1), (_, q2) in evaluated)
    assert all(v.appearance == b.appearance for v, b in zip(study, base, strict=True) if v.split != "query")


def test_demo_city_is_made_once_and_reused(tmp_path, monkeypatch, capsys):
    """make demo, make table and make demo-models share the demo city: made when absent or of another config,
    reused otherwise, also when written before a field (at its default) existed."""
    import json

    from vprlib.demo.city import write  # where demo_city reads its config

    monkeypatch.setattr(write, "DEMO_CITY", {"places": 4, "side": 16, "train_visits": 1, "workers": 1})
    city = tmp_path / "city"
    sc.demo_city(str(city))
    assert "making the synthetic city" in capsys.readouterr().out
    config = json.loads((city / "config.json").read_text())
    del config["same_look_queries"]  # as a city made before that field existed
    (city / "config.json").write_text(json.dumps(config))
    sc.demo_city(str(city))
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(write, "DEMO_CITY", {"places": 4, "side": 16, "train_visits": 1, "workers": 1, "seed": 1})
    sc.demo_city(str(city))
    assert "making the synthetic city" in capsys.readouterr().out
    assert json.loads((city / "config.json").read_text())["seed"] == 1
