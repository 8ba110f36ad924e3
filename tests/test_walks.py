"""Query walks in the synthetic city (vprlib.demo.city.walks): frame positions and order, headings along the walk, the
manifest's sequence columns, the ground-truth maps table, determinism."""

import dataclasses
import os

import numpy as np
import pyarrow.compute as pc
import pytest

from vprlib.data.manifest import read_manifest
from vprlib.demo import city as sc
from vprlib.demo.city import walks as wk
from vprlib.maps import read_maps, read_spec
from vprlib.sequences import group_frames

CITY = sc.CityConfig(places=12, side=32, train_visits=1, workers=1)
WALKS = wk.WalkConfig(frames=4, spacing_m=2.5, walks_per_place=1, workers=1)


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("walks"))
    return wk.generate_walks(CITY, WALKS, out), out


def test_frames_are_spaced_along_the_street_in_order_facing_the_walk(walked):
    table, _ = walked
    city = sc.build_city(CITY)
    groups = group_frames(table["sequence_id"].to_pylist(), table["frame_index"].to_pylist())
    assert len(groups) == int((city.place_area == "eval").sum()) * WALKS.walks_per_place
    east, north = table["utm_east"].to_numpy(), table["utm_north"].to_numpy()
    headings = table["heading"].to_numpy()
    places = table["place_id"].to_numpy()
    for rows in groups.values():
        assert table["frame_index"].to_numpy()[rows].tolist() == list(range(WALKS.frames))
        step = np.diff(np.column_stack([east[rows], north[rows]]), axis=0)
        np.testing.assert_allclose(np.linalg.norm(step, axis=1), WALKS.spacing_m, atol=1e-6)
        np.testing.assert_allclose(step, np.repeat(step[:1], len(step), axis=0), atol=1e-6)  # one straight line
        assert np.count_nonzero(np.abs(step[0]) > 1e-6) == 1  # along a street axis
        walking = np.degrees(np.arctan2(step[0, 0], step[0, 1])) % 360
        off = (headings[rows] - walking + 180) % 360 - 180
        assert np.abs(off).max() <= WALKS.heading_jitter
        x, y = sc.geo_to_local(CITY, table["lat"].to_numpy()[rows[-1]], table["lon"].to_numpy()[rows[-1]])
        end = np.array([float(x), float(y)]) - city.places[places[rows[-1]]]
        assert np.abs(end).max() <= CITY.jitter + 1e-6  # the walk ends at its place
        label, _ = sc.ground_labels(CITY, *sc.geo_to_local(CITY, table["lat"].to_numpy()[rows],
                                                            table["lon"].to_numpy()[rows]))
        assert (label == sc.LABEL["road"]).all()


def test_manifest_and_ground_truth_maps(walked):
    table, out = walked
    assert set(table["split"].to_pylist()) == {"query"}
    assert len(set(table["image_id"].to_pylist())) == table.num_rows
    written = read_manifest(os.path.join(out, "manifest.parquet"))
    assert written.drop_columns(["uri"]).equals(table.drop_columns(["uri"]))
    maps = read_maps(os.path.join(out, sc.GT_MAPS))
    assert maps.num_rows == table.num_rows and set(pc.unique(maps["status"]).to_pylist()) == {"ok"}
    assert maps["sequence_id"].equals(table["sequence_id"]) and maps["frame_index"].equals(table["frame_index"])
    assert read_spec(os.path.join(out, sc.GT_MAPS))["strategy"] == "ground-truth"
    for ident in table["image_id"].to_pylist()[:3]:
        assert os.path.exists(os.path.join(out, "rgb", f"{ident}.png"))
        with np.load(os.path.join(out, "gt", f"{ident}.npz")) as gt:
            assert gt["depth"].shape == (CITY.side, CITY.side)


def test_each_row_holds_the_frame_rendered_where_the_manifest_says(walked):
    """A row's files are its frame's: the static depth re-rendered at the planned camera of that walk and frame (the
    manifest's position and heading) is the depth written under the row's id."""
    table, out = walked
    city = sc.build_city(CITY)
    planned = wk.plan_walks(city, WALKS)
    x, y = sc.geo_to_local(CITY, table["lat"].to_numpy(), table["lon"].to_numpy())
    for row in range(0, table.num_rows, 3):
        walk = planned[table["sequence_id"][row].as_py()]
        frame = table["frame_index"][row].as_py()
        position = walk.positions[frame]
        np.testing.assert_allclose([x[row], y[row]], position[:2], atol=0.01)  # mm of the UTM round trip
        assert table["heading"][row].as_py() == pytest.approx(walk.headings[frame])
        camera = sc.Camera(tuple(position), float(walk.headings[frame]), CITY.pitch, CITY.fov)
        with np.load(os.path.join(out, "gt", f"{table['image_id'][row].as_py()}.npz")) as gt:
            np.testing.assert_array_equal(gt["depth"], sc.render(city, camera, side=CITY.side)["depth"])


def test_dynamic_objects_keep_clear_of_the_path_and_the_walks_are_deterministic():
    city = sc.build_city(CITY)
    planned = wk.plan_walks(city, WALKS)
    assert [w.positions.tolist() for w in planned] == [w.positions.tolist() for w in wk.plan_walks(city, WALKS)]
    dense = dataclasses.replace(CITY, dynamic_density=4.0)
    city = sc.build_city(dense)
    for walk in planned:
        lo, hi = wk.walk_objects(city, walk, WALKS).bounds()
        for x, y, _ in walk.positions:
            gap = np.maximum(np.maximum(lo[:, :2] - (x, y), (x, y) - hi[:, :2]), 0)
            assert (np.linalg.norm(gap, axis=1) > WALKS.clearance_m).all()


def test_an_invalid_value_says_the_rule():
    with pytest.raises(ValueError, match=r"frames \(must be in \[1, 64\], got 0\)"):
        wk.WalkConfig(frames=0)
