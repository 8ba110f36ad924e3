"""Validation Recall@N of the retrievers: each image against the other captures' images."""

import numpy as np
import pyarrow as pa

from vprlib.train.validate import other_capture_recall, top_k_inner_product


def test_top_k_is_exact_and_ordered():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    top = top_k_inner_product(vectors, 5, chunk=7)
    expected = np.argsort(-(vectors @ vectors.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(top, expected)


def test_a_capture_s_other_headings_are_no_answer():
    """Two captures at one spot (4 headings each) and one 1 km away. Each image's nearest descriptor is a heading
    of its own capture: counted, every query would be right by position alone. Left out, the other capture decides."""
    lat = np.array([51.5] * 8 + [51.509] * 4)
    capture = np.array([0] * 4 + [1] * 4 + [2] * 4)
    heading = np.tile(np.arange(4), 3)
    place = np.array([[1.0, 0.0, 0.0], [0.9, 0.43, 0.0], [0.0, 0.0, 1.0]], np.float32)  # captures 0 and 1 look alike
    vectors = np.concatenate([0.3 * np.eye(4, dtype=np.float32)[heading], place[capture]], axis=1)
    rows = pa.table({"lat": lat, "lon": np.full(12, -0.1), "capture": capture})
    recall = other_capture_recall(vectors, rows, ns=(1,))
    assert recall == {"recall@1": 8 / 12}  # captures 0 and 1 find each other; capture 2 has no other capture near
    alone = other_capture_recall(vectors, rows.drop_columns(["capture"]), ns=(1,))
    assert alone == {"recall@1": 1.0}  # leave-one-out: the same spot's other headings are nearest, and count
