"""Recall@N (paper eq. (10)) on hand-computed cases: GPS, landmark and positives-list ground truth."""

import math

import numpy as np
import pyarrow as pa
import pytest

from vprlib.data.manifest import read_manifest, write_manifest
from vprlib.metrics import (
    gps_positives,
    haversine_m,
    id_positives,
    landmark_positives,
    manifest_positives,
    metric_positives,
    recall_at_n,
    recall_key,
    recall_ns,
)


def test_haversine_known_distances():
    assert haversine_m(0.0, 0.0, 0.0, 0.0) == 0.0
    # one degree of latitude on the mean-radius sphere: pi * R / 180
    assert haversine_m(10.0, 20.0, 11.0, 20.0) == pytest.approx(np.pi * 6_371_008.8 / 180, rel=1e-12)
    # broadcasting: one point against three
    d = haversine_m(51.5, -0.1, np.array([51.5, 51.5, 51.6]), np.array([-0.1, -0.1, -0.1]))
    assert d.shape == (3,) and d[0] == 0.0 and d[2] == pytest.approx(11_119.5, rel=1e-4)


def test_recall_hand_computed():
    # 4 queries, database indices 0..5, K = 3 predictions each
    predictions = np.array([[0, 1, 2], [3, 4, 5], [1, 0, 5], [2, 2, 2]])
    positives = [np.array([0]), np.array([5]), np.array([5, 4]), np.array([], dtype=int)]
    # q0 right at rank 1; q1 at rank 3; q2 at rank 3; q3 has no positive: a miss in M = 4
    assert recall_at_n(predictions, positives, ns=(1, 2, 3)) == {1: 0.25, 2: 0.25, 3: 0.75}
    # excluding the query without positives: M = 3
    got = recall_at_n(predictions, positives, ns=(1, 3), exclude_no_positive=True)
    assert got == {1: pytest.approx(1 / 3), 3: 1.0}


def test_recall_default_ns_and_padding():
    predictions = np.tile(np.arange(10), (2, 1))
    predictions[1, :] = -1  # faiss pads with -1 when it has fewer results; never a hit
    positives = [np.array([7]), np.array([-1])]
    assert recall_at_n(predictions, positives) == {1: 0.0, 5: 0.0, 10: 0.5}


def test_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="every N"):
        recall_at_n(np.zeros((2, 3), int), [np.array([0])] * 2, ns=(5,))
    with pytest.raises(ValueError, match="positive lists"):
        recall_at_n(np.zeros((2, 3), int), [np.array([0])], ns=(1,))
    with pytest.raises(ValueError, match="2-D integer"):
        recall_at_n(np.zeros((2, 3)), [np.array([0])] * 2, ns=(1,))
    assert recall_at_n(np.zeros((0, 3), int), [], ns=(1,)) == {1: 0.0}


def test_gps_positives_25m_threshold():
    lat0, lon0 = 51.5, -0.1
    metres_per_deg_lat = np.pi * 6_371_008.8 / 180
    db = np.array([[lat0 + d / metres_per_deg_lat, lon0] for d in (0.0, 10.0, 24.9, 25.1, 300.0)])
    queries = np.array([[lat0, lon0], [lat0 + 300.0 / metres_per_deg_lat, lon0], [0.0, 0.0]])
    positives = gps_positives(queries, db)
    assert [p.tolist() for p in positives] == [[0, 1, 2], [4], []]
    assert [p.tolist() for p in gps_positives(queries, db, radius_m=5.0, chunk=1)] == [[0], [4], []]


def test_metric_positives_inclusive_radius():
    db = np.array([[500000.0, 5700000.0], [500025.0, 5700000.0], [500015.0, 5700020.0], [500000.0, 5700025.1]])
    positives = metric_positives([[500000.0, 5700000.0]], db)
    assert positives[0].tolist() == [0, 1, 2]  # 25 m and 25 m (3-4-5) count, 25.1 m does not


def test_landmark_positives_and_recall():
    db_ids = [7, 3, 7, 9]
    positives = landmark_positives([7, 9, 4, None], db_ids)
    assert [None if p is None else p.tolist() for p in positives] == [[0, 2], [3], [], None]
    predictions = np.array([[1, 2], [3, 0], [0, 1], [0, 1]])
    # the row with no landmark is not a query: M = 3; the query of landmark 4 (none in the database) is a miss
    assert recall_at_n(predictions, positives, ns=(1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
    assert recall_at_n(predictions, positives, ns=(1, 2), exclude_no_positive=True) == {1: 0.5, 2: 1.0}


def test_landmark_sets_take_the_union():
    # a query showing landmarks 7 and 9 is right on an image of either; database rows may list several too
    positives = landmark_positives([[7, 9], (3,), [], {np.nan}, np.array([5])], [7, [3, 5], 9, None, [8]])
    assert [None if p is None else p.tolist() for p in positives] == [[0, 2], [1], None, None, [1]]


def test_recall_leaves_out_rows_that_are_not_queries():
    predictions = np.array([[0, 1], [1, 0], [0, 1]])
    positives = [np.array([0]), None, np.array([1])]
    assert recall_at_n(predictions, positives, ns=(1, 2)) == {1: 0.5, 2: 1.0}
    assert recall_at_n(predictions[1:2], [None], ns=(1,)) == {1: 0.0}


def test_bad_point_shapes():
    with pytest.raises(ValueError, match="shape"):
        gps_positives([1.0, 2.0], [[1.0, 2.0]])


def test_manifest_positives_picks_the_frame():
    # lat/lon put everything at one spot; UTM says the database row is 1 km away: which one was used shows
    queries = pa.table({"lat": [45.0], "lon": [7.0], "utm_east": [0.0], "utm_north": [0.0], "utm_zone": ["32T"]})
    db = pa.table({"lat": [45.0], "lon": [7.0], "utm_east": [1000.0], "utm_north": [0.0], "utm_zone": ["32T"]})
    assert manifest_positives(queries, db)[0].tolist() == []  # metric frame, one zone
    other_zone = db.set_column(4, "utm_zone", pa.array(["33T"]))
    assert manifest_positives(queries, other_zone)[0].tolist() == [0]  # zones differ: haversine on lat/lon
    assert manifest_positives(queries.drop_columns(["utm_east"]), db)[0].tolist() == [0]
    holicity = pa.table({"lat": [45.0], "lon": [7.0], "east_m": [20.0], "north_m": [0.0]})
    assert manifest_positives(holicity, holicity.set_column(2, "east_m", pa.array([40.0])))[0].tolist() == [0]


def test_manifest_positives_landmark_mode():
    queries = pa.table({"landmark_id": [1, 2, None]})
    db = pa.table({"landmark_id": [2, 1, 1]})
    got = manifest_positives(queries, db, mode="landmark")
    assert [None if p is None else p.tolist() for p in got] == [[1, 2], [0], None]
    with pytest.raises(ValueError, match="known: \\['gps', 'landmark', 'positives'\\]"):
        manifest_positives(queries, db, mode="street")
    with pytest.raises(ValueError, match="the database have no landmark_ids or landmark_id column"):
        manifest_positives(queries, pa.table({"x": [1]}), mode="landmark")


def test_manifest_positives_landmark_lists(tmp_path):
    # list<int64> landmark ids survive a Parquet manifest and take precedence over a scalar landmark_id
    common = {"uri": ["/a.jpg", "/b.jpg", "/c.jpg"], "lat": [0.0] * 3, "lon": [0.0] * 3}
    table = pa.table({"image_id": ["q", "d1", "d2"], **common, "landmark_id": [1, 1, 2],
                      "landmark_ids": pa.array([[1, 2], [5], [2]], pa.list_(pa.int64()))})
    write_manifest(table, str(tmp_path / "m.parquet"))
    back = read_manifest(str(tmp_path / "m.parquet"))
    assert back["landmark_ids"].type == pa.list_(pa.int64())
    got = manifest_positives(back.slice(0, 1), back.slice(1), mode="landmark")
    assert [p.tolist() for p in got] == [[1]]  # d2 via landmark 2; d1's scalar landmark_id 1 is not used


def test_manifest_positives_lists_are_chosen_automatically(tmp_path):
    # positives are database image ids; lat/lon would make every row a GPS match, so the mode chosen shows
    common = {"uri": ["/q1.jpg", "/q2.jpg", "/q3.jpg", "/d1.jpg", "/d2.jpg"], "lat": [0.0] * 5, "lon": [0.0] * 5}
    table = pa.table({"image_id": ["q1", "q2", "q3", "d1", "d2"], **common,
                      "positives": pa.array([["d2", "gone"], ["d1", "d2"], None, None, None], pa.list_(pa.string())),
                      "split": ["query", "query", "query", "database", "database"]})
    write_manifest(table, str(tmp_path / "m.parquet"))
    back = read_manifest(str(tmp_path / "m.parquet"))
    assert back["positives"].type == pa.list_(pa.string())
    queries, database = back.slice(0, 3), back.slice(3)
    got = manifest_positives(queries, database)
    assert [None if p is None else p.tolist() for p in got] == [[1], [0, 1], None]  # "gone" is not in the database
    assert recall_at_n(np.array([[0, 1], [0, 1], [0, 1]]), got, ns=(1, 2)) == {1: 0.5, 2: 1.0}  # q3: no query
    assert [p.tolist() for p in manifest_positives(queries, database, mode="gps")] == [[0, 1]] * 3
    assert [p.tolist() for p in id_positives([["d1"]], ["d0", "d1"])] == [[1]]
    with pytest.raises(ValueError, match="mode 'positives' needs a positives column"):
        manifest_positives(database.drop_columns(["positives"]), database, mode="positives")


def _within_by_hand(queries: pa.Table, database: pa.Table, radius_m: float = 25.0) -> list[list[int]]:
    """The reference's radius search, written out: database rows within `radius_m` on the UTM grid."""
    q = list(zip(queries["utm_east"].to_pylist(), queries["utm_north"].to_pylist(), strict=True))
    db = list(zip(database["utm_east"].to_pylist(), database["utm_north"].to_pylist(), strict=True))
    return [[j for j, (e, n) in enumerate(db) if math.hypot(qe - e, qn - n) <= radius_m] for qe, qn in q]


def _utm_rows(east: list, north: list, zone: list, has_gps: list, lat: list, lon: list) -> pa.Table:
    return pa.table({"utm_east": pa.array(east, pa.float64()), "utm_north": pa.array(north, pa.float64()),
                     "utm_zone": pa.array(zone, pa.int32()), "has_gps": pa.array(has_gps, pa.bool_()),
                     "lat": pa.array(lat, pa.float64()), "lon": pa.array(lon, pa.float64())})


PITTSBURGH_UTM = (585234.0, 4477300.0, 40.4440, -79.9959)  # zone 17: easting, northing, lat, lon


def test_rows_with_and_without_a_utm_zone_are_refused():
    # two queries of zone 17 (lat/lon from the zone); the database row 5 m away names no zone and has no lat/lon
    east, north, lat, lon = PITTSBURGH_UTM
    queries = _utm_rows([east, east + 100.0], [north, north], [17, 17], [True, True], [lat, lat], [lon, lon + 0.001])
    database = _utm_rows([east + 5.0], [north], [None], [False], [0.0], [0.0])
    message = r"2 query and 0 database row\(s\) name UTM zone\(s\) 17 but 0 query and 1 database row\(s\) have UTM"
    with pytest.raises(ValueError, match=message) as error:
        manifest_positives(queries, database)
    assert "\n" not in str(error.value) and "share no metric frame" in str(error.value)
    with pytest.raises(ValueError, match=r"but 0 query and 1 database row\(s\) have UTM coordinates and no zone"):
        manifest_positives(queries, database.drop_columns(["utm_zone"]))  # no zone column: no zone on any row
    zoned = database.set_column(2, "utm_zone", pa.array([17], pa.int32()))  # the row's zone given: one frame
    assert [p.tolist() for p in manifest_positives(queries, zoned)] == _within_by_hand(queries, zoned) == [[0], []]


def test_rows_without_gps_outside_a_shared_frame_are_refused():
    # Nordland-like queries (a track northing, no zone, no lat/lon) against a database with lat/lon only: no frame
    # holds both, and haversine would measure from the queries' placeholder (0, 0), 11 m from the database row
    queries = _utm_rows([0.0, 0.0], [0.0, 2.38], [None, None], [False, False], [0.0, 0.0], [0.0, 0.0])
    database = pa.table({"lat": [0.0], "lon": [0.0001], "has_gps": [True]})
    with pytest.raises(ValueError, match=r"2 query and 0 database row\(s\) have no GPS \(has_gps false\) and the "
                                         r"rows share no metric frame \(utm_east/utm_north or east_m/north_m") as error:
        manifest_positives(queries, database)
    assert "\n" not in str(error.value)
    # with every row on the track the frame holds them all: within 25 m along it, no lat/lon needed
    track = _utm_rows([0.0] * 3, [10.0, 30.0, 60.0], [None] * 3, [False] * 3, [0.0] * 3, [0.0] * 3)
    assert [p.tolist() for p in manifest_positives(queries, track)] == _within_by_hand(queries, track) == [[0], [0]]


def test_recall_keys_are_named_and_read_back_in_one_place():
    summary = {recall_key(n): 0.5 for n in (10, 1, 5)} | {"recall_curve": [0.1], "queries": 3, "rerank": {}}
    assert {"recall@1", "recall@5", "recall@10"} < set(summary)
    assert recall_ns(summary) == [1, 5, 10]
