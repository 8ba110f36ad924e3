"""How sure locate is (the ratio test between places) and which photos it refuses as too small, without an index."""

import numpy as np
import pytest
from PIL import Image

from vprlib.index.locate import LocateError, check_photo_sizes, confidence, how_sure

# Three places along a street, 0, 10 and 100 m east of the first (about 0.000145 degrees of longitude per 10 m here).
LAT = np.array([51.5, 51.5, 51.5])
LON = np.array([-0.1, -0.1 + 0.000145, -0.1 + 0.00145])


def test_an_answer_is_sure_when_the_next_place_matches_much_worse():
    """The second match stands 10 m from the best (the same place); the third, 100 m away, is the other place."""
    sure = confidence(LAT, LON, np.array([0.95, 0.94, 0.6]), cluster_m=25.0, sure_ratio=0.75)
    assert sure["ratio"] == pytest.approx(np.sqrt(0.05 / 0.4), abs=1e-4) and sure["sure"]
    assert sure["other_rank"] == 3 and 95 < sure["other_m"] < 105


def test_an_answer_is_not_sure_when_another_place_matches_as_well():
    doubt = confidence(LAT, LON, np.array([0.95, 0.94, 0.949]), cluster_m=25.0, sure_ratio=0.75)
    assert doubt["ratio"] == pytest.approx(np.sqrt(0.05 / 0.051), abs=1e-4) and not doubt["sure"]
    assert how_sure(doubt).startswith("not sure (distance ratio 0.990 to the next place, 100 m from the best")


def test_with_no_other_place_ranked_the_last_match_bounds_the_ratio():
    near = confidence(LAT[:2], LON[:2], np.array([0.95, 0.5]), cluster_m=25.0, sure_ratio=0.75)
    assert near["other_rank"] == 2 and near["ratio"] == pytest.approx(np.sqrt(0.05 / 0.5), abs=1e-4)


def test_photos_too_small_to_show_a_street_are_refused(tmp_path):
    for name, size in (("street.png", (128, 96)), ("dot.png", (1, 1)), ("strip.png", (300, 20))):
        Image.new("RGB", size, (90, 90, 90)).save(tmp_path / name)
    check_photo_sizes((str(tmp_path / "street.png"),), min_side=32)
    check_photo_sizes((str(tmp_path / "not-there.png"),), min_side=32)  # unreadable: photo_maps says why
    for name, shown in (("dot.png", "1x1"), ("strip.png", "300x20")):
        with pytest.raises(LocateError, match=f"{name} is {shown} pixels: too small to show a street"):
            check_photo_sizes((str(tmp_path / "street.png"), str(tmp_path / name)), min_side=32)


def test_the_estimate_lands_on_the_photos_true_position_not_between_two_streets():
    """A photo truly taken at TRUE; its best matches stand 5 m east and west of it and 4 m north (the same place from
    the database's captures), the runner-up at rank 2 is another street 100 m away: the estimate is within a metre
    of the truth, where averaging every match would put it 20 m off."""
    from vprlib.index.locate import LocateConfig, located
    from vprlib.index.search import Hits
    from vprlib.metrics import haversine_m

    true_lat, true_lon = 51.5, -0.1
    metre_lon, metre_lat = 0.0000145, 0.000009  # degrees per metre here
    lat = np.array([true_lat, true_lat, true_lat + 4 * metre_lat, true_lat])
    lon = np.array([true_lon + 5 * metre_lon, true_lon + 100 * metre_lon, true_lon, true_lon - 5 * metre_lon])
    hits = Hits(np.array([[0.9, 0.89, 0.5, 0.9]], np.float32), np.array([["e", "far", "n", "w"]], dtype=object),
                {"lat": lat[None].astype(object), "lon": lon[None].astype(object),
                 "heading": np.full((1, 4), None, object)})
    answer = located("photo.png", hits, 0, LocateConfig(index="i", photos=("photo.png",), top_k=4))
    at = answer["estimate"]
    assert haversine_m(true_lat, true_lon, at["lat"], at["lon"]) < 1.0
    assert haversine_m(true_lat, true_lon, lat.mean(), lon.mean()) > 20.0  # what a plain mean would say
    assert [p["image_id"] for p in answer["places"]] == ["e", "far", "n", "w"]
