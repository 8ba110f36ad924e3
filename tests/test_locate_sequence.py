"""Locating a walk from a folder of frames (vprlib.index.locate_sequence): frame order, one-line refusals, and the
answer of the path matcher over the frames' hits."""

from pathlib import Path

import numpy as np
import pytest

from jobs import locate as locate_job
from vprlib.geo import local_plane
from vprlib.index.locate import LocateError
from vprlib.index.locate_sequence import list_frames, sequence_answer
from vprlib.index.search import Hits
from vprlib.sequences import PathSearch


def test_frames_in_natural_order_and_refusals(tmp_path):
    for name in ("frame10.png", "frame2.png", "frame1.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [Path(f).name for f in list_frames(str(tmp_path))] == ["frame1.jpg", "frame2.png", "frame10.png"]
    with pytest.raises(LocateError, match="is not a folder of frames"):
        list_frames(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocateError, match="holds no frames"):
        list_frames(str(tmp_path / "empty"))


def test_the_walk_is_placed_at_the_end_of_its_path():
    """Places every 5 m along an east-west street; the walk goes east over places 10, 11, 12; the last frame alone
    prefers place 30, which no earlier frame supports."""
    origin = (51.5, -0.1)
    east = np.arange(40) * 5.0
    scale = np.radians(1.0) * 6_371_008.8
    lat = np.full(40, origin[0])
    lon = origin[1] + east / (scale * np.cos(np.radians(origin[0])))
    np.testing.assert_allclose(local_plane(lat, lon, origin)[:, 0], east, atol=1e-6)
    rng = np.random.default_rng(0)
    rows = []
    for frame, place in enumerate((10, 11, 12)):
        scores = dict(zip(rng.choice(40, 8, replace=False).tolist(), rng.uniform(0.1, 0.4, 8), strict=True))
        scores[place] = 0.7
        if frame == 2:
            scores[30] = 0.9
        order = sorted(scores, key=lambda i: -scores[i])
        rows.append(order)
    k = max(len(r) for r in rows)
    ids = np.full((3, k), None, object)
    sc = np.full((3, k), -np.inf, np.float32)
    cols = {c: np.full((3, k), None, object) for c in ("lat", "lon")}
    for f, order in enumerate(rows):
        for j, place in enumerate(order):
            ids[f, j] = f"img{place:03d}"
            sc[f, j] = 0.7 if place in (10, 11, 12) and place == 10 + f else (0.9 if place == 30 and f == 2 else 0.2)
            cols["lat"][f, j], cols["lon"][f, j] = lat[place], lon[place]
    answer = sequence_answer(Hits(sc, ids, cols), PathSearch(speeds=(5.0,), directions=4, tolerance_m=1.0), top_k=3)
    assert answer["places"][0]["image_id"] == "img012"
    assert answer["estimate"]["lon"] == pytest.approx(lon[12])
    assert answer["heading"] == 90.0 and answer["speed_m_per_frame"] == 5.0
    assert sc[2].max() == pytest.approx(0.9) and ids[2, 0] == "img030"  # the last frame alone is wrong


def test_locate_job_refuses_a_folder_without_frames(tmp_path, capsys):
    assert locate_job.main(["--index", str(tmp_path), "--sequence", str(tmp_path / "none")]) == 2
    assert "is not a folder of frames" in capsys.readouterr().err
