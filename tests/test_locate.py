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
