"""Recall@N (paper eq. (10)) on hand-computed cases, GPS and landmark positives."""

import numpy as np
import pyarrow as pa
import pytest

from vprlib.metrics import (
    gps_positives,
    haversine_m,
    landmark_positives,
    manifest_positives,
    metric_positives,
    recall_at_n,
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
    assert [p.tolist() for p in positives] == [[0, 2], [3], [], []]
    predictions = np.array([[1, 2], [3, 0], [0, 1], [0, 1]])
    assert recall_at_n(predictions, positives, ns=(1, 2)) == {1: 0.25, 2: 0.5}
    assert recall_at_n(predictions, positives, ns=(1, 2), exclude_no_positive=True) == {1: 0.5, 2: 1.0}


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
    assert [p.tolist() for p in manifest_positives(queries, db, mode="landmark")] == [[1, 2], [0], []]
    with pytest.raises(ValueError, match="known: \\['gps', 'landmark'\\]"):
        manifest_positives(queries, db, mode="street")
