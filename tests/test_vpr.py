"""The standard VPR benchmark format (`images/{train,val,test}/{database,queries}/@...@.jpg`) as a manifest, local
and S3, through the library and jobs/manifest.py vpr."""

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_datasets import _jpeg, _upload

from vprlib.data.manifest import ManifestError
from vprlib.data.vpr import FIELDS, parse_vpr_name, vpr_manifest
from vprlib.geo import latlon_to_utm
from vprlib.metrics import manifest_positives

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
try:
    import manifest as job
finally:
    sys.path.pop(0)

EXAMPLE = "@0585234.12@4477300.55@17@T@40.44@-79.99@@@@@@@@@.jpg"  # the format's own example


def _name(lat: float, lon: float, letter: str, with_latlon: bool = True, heading: str = "", tail: str = "") -> str:
    """A file name as the community's tools write it: UTM (2 decimals), lat/lon (5 decimals) or empty, heading."""
    east, north, zone = latlon_to_utm(lat, lon)
    latlon = f"{lat:.5f}@{lon:.5f}" if with_latlon else "@"
    return f"@{east:.2f}@{north:.2f}@{zone:02d}@{letter}@{latlon}@pano1@@{heading}@@@@@{tail}@.jpg"


PITTSBURGH = (40.4406, -79.9959)
BRISBANE = (-27.4975, 153.0137)  # St Lucia: UTM zone 56, band J (southern hemisphere)
FILES = {
    "images/train/database": [_name(*PITTSBURGH, "T", heading="090"), _name(40.4407, -79.9959, "T", heading="180")],
    "images/train/queries": [_name(40.4406, -79.9958, "T")],
    "images/val/database": [_name(40.45, -79.99, "T")],
    "images/val/queries": [_name(40.4501, -79.99, "T")],
    "images/test/database": [_name(*PITTSBURGH, "T", with_latlon=False), _name(*BRISBANE, "J", with_latlon=False)],
    "images/test/queries": ["@0589500.00@4477000.00@17@T@040.43@-079.94@.jpg"],  # trailing fields left out
    "images/test/queries_night": [_name(40.4406, -79.9957, "T", tail="night")],
}


def _benchmark(root: Path, files: dict = FILES) -> Path:
    for folder, names in files.items():
        for n, name in enumerate(names):
            _jpeg(root / folder / name, seed=n)
    (root / "images" / "test" / "database" / "README.txt").write_text("not an image\n")
    _jpeg(root / "images" / "test" / "thumbnails" / "t.jpg")  # in no role folder: skipped
    _jpeg(root / "images" / "test" / "database" / "._@1@2@.jpg")  # a hidden file (macOS resource fork)
    return root


def _rows(table) -> dict[str, dict]:
    return {r["image_id"]: r for r in table.to_pylist()}


# ---------------------------------------------------------------- names


def test_parse_name():
    fields = parse_vpr_name(EXAMPLE)
    assert list(fields) == list(FIELDS)
    assert [fields[k] for k in ("utm_east", "utm_north", "utm_zone", "utm_letter", "lat", "lon")] == [
        "0585234.12", "4477300.55", "17", "T", "40.44", "-79.99"]  # fmt: skip
    assert all(fields[k] is None for k in FIELDS[6:])
    short = parse_vpr_name("@1.5@2.5@.png")
    assert (short["utm_east"], short["utm_north"], short["note"]) == ("1.5", "2.5", None)
    for bad, message in (("photo.jpg", "not a VPR-format name"), ("@1@2@3", "not a VPR-format name"),
                         ("@" * 16 + ".jpg", "15 fields between '@'s; the format has 14")):
        with pytest.raises(ValueError, match=message):
            parse_vpr_name(bad)


# ---------------------------------------------------------------- manifest


def test_roles_subsets_and_fields(tmp_path):
    table = vpr_manifest(str(_benchmark(tmp_path)))
    assert table.num_rows == 9  # README.txt, thumbnails/ and the hidden file skipped
    rows = _rows(table)
    first = rows[f"images/train/database/{FILES['images/train/database'][0]}"]
    assert first["uri"] == str(tmp_path / first["image_id"])
    assert (first["split"], first["subset"], first["role_folder"]) == ("database", "train", "database")
    assert (first["lat"], first["lon"], first["heading"], first["has_gps"]) == (*PITTSBURGH, 90.0, True)
    assert (first["utm_zone"], first["utm_letter"], first["pano_id"]) == (17, "T", "pano1")
    assert first["utm_east"] == pytest.approx(latlon_to_utm(*PITTSBURGH)[0], abs=0.01)
    night = rows[f"images/test/queries_night/{FILES['images/test/queries_night'][0]}"]
    assert (night["split"], night["subset"], night["role_folder"], night["note"]) == (
        "query", "test", "queries_night", "night")
    short = rows[f"images/test/queries/{FILES['images/test/queries'][0]}"]
    assert (short["lat"], short["lon"], short["heading"], short["pano_id"]) == (40.43, -79.94, None, None)
    counts = {}
    for r in rows.values():
        counts[r["subset"], r["split"]] = counts.get((r["subset"], r["split"]), 0) + 1
    assert counts == {("train", "database"): 2, ("train", "query"): 1, ("val", "database"): 1, ("val", "query"): 1,
                      ("test", "database"): 2, ("test", "query"): 2}


def test_latlon_from_utm_north_and_south(tmp_path):
    rows = _rows(vpr_manifest(str(_benchmark(tmp_path)), subset="test"))
    pittsburgh, brisbane = (rows[f"images/test/database/{n}"] for n in FILES["images/test/database"])
    assert (pittsburgh["lat"], pittsburgh["lon"]) == pytest.approx(PITTSBURGH, abs=1e-6)  # 2-decimal UTM: ~1e-7
    assert (brisbane["lat"], brisbane["lon"]) == pytest.approx(BRISBANE, abs=1e-6) and brisbane["utm_zone"] == 56
    assert pittsburgh["has_gps"] and brisbane["has_gps"]


def test_nordland_dummy_utm_only(tmp_path):
    """Nordland's names carry only a dummy UTM line (2.38 m a frame): no GPS, and Recall measures on the UTM grid."""
    names = [f"@0@{i * 2.38:07.1f}@@@@@{i}@@@@@@@@.jpg" for i in range(40)]
    root = _benchmark(tmp_path, {"images/test/database": names, "images/test/queries": names[::10]})
    table = vpr_manifest(str(root))
    assert not any(table["has_gps"].to_pylist()) and set(table["lat"].to_pylist()) == {0.0}
    assert table["utm_zone"].null_count == table.num_rows
    rows = table.to_pylist()
    queries = table.filter(np.array([r["split"] == "query" for r in rows]))
    database = table.filter(np.array([r["split"] == "database" for r in rows]))
    positives = manifest_positives(queries, database)
    assert [len(p) for p in positives] == [11, 21, 21, 20]  # 10 frames either side (of 40) are within 25 m


def test_subset_and_queries_selection(tmp_path):
    root = str(_benchmark(tmp_path))
    test = vpr_manifest(root, subset="test")
    assert set(test["subset"].to_pylist()) == {"test"} and test.num_rows == 4
    night = vpr_manifest(root, subset="test", queries="queries_night")
    assert sorted(set(night["role_folder"].to_pylist())) == ["database", "queries_night"] and night.num_rows == 3
    with pytest.raises(ManifestError, match=r"no query folder 'queries_rain'; found \['queries', 'queries_night'\]"):
        vpr_manifest(root, subset="test", queries="queries_rain")
    only_test = _benchmark(tmp_path / "t", {"images/test/database": FILES["images/test/database"]})
    with pytest.raises(ManifestError, match=r"no 'val' subset; found \['test'\]"):
        vpr_manifest(str(only_test), subset="val")
    with pytest.raises(ManifestError, match=r"unknown subset 'dev'"):
        vpr_manifest(root, subset="dev")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("IMG_0001.jpg", "IMG_0001.jpg: not a VPR-format name"),
        ("@585234.1@@17@T@40.44@-79.99@@@@@@@@@.jpg", "utm_north is empty; the format requires the UTM coordinates"),
        ("@585234.1@4477300.5@17@T@40.44@-79.99@@@north@@@@@@.jpg", "heading='north' is not a number"),
        ("@585234.1@4477300.5@17@T@40.44@@@@@@@@@@.jpg", "has lat but not the other"),
        ("@585234.1@4477300.5@17@@@@@@@@@@@@.jpg", "the UTM zone needs both its number and its letter"),
        ("@585234.1@4477300.5@61@T@@@@@@@@@@@.jpg", "utm_zone='61' is not a UTM zone number"),
        ("@585234.1@4477300.5@17@I@@@@@@@@@@@.jpg", "utm_letter='I' is not a UTM latitude band"),
        ("@585234.1@4477300.5@17@T@95.0@-79.99@@@@@@@@@.jpg", r"lat=95.0 outside \[-90.0, 90.0\]"),
    ],
)
def test_bad_names_name_the_file_and_field(tmp_path, name, message):
    root = _benchmark(tmp_path, {"images/test/database": [EXAMPLE], "images/test/queries": [name]})
    with pytest.raises(ManifestError, match=message) as error:
        vpr_manifest(str(root))
    assert "images/test/queries/" in str(error.value)


def test_no_images(tmp_path):
    (tmp_path / "images" / "test").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"no images in database/ or queries/ folders"):
        vpr_manifest(str(tmp_path))


def test_on_s3(tmp_path, s3_bucket):
    local = vpr_manifest(str(_benchmark(tmp_path / "b")))
    remote_root = _upload(tmp_path / "b", s3_bucket)
    remote = vpr_manifest(remote_root)
    assert remote["image_id"].to_pylist() == local["image_id"].to_pylist()
    assert remote["lat"].to_pylist() == local["lat"].to_pylist()
    assert remote["uri"].to_pylist() == [f"{remote_root}/{i}" for i in local["image_id"].to_pylist()]


# ---------------------------------------------------------------- jobs/manifest.py vpr


def test_job(tmp_path, capsys):
    root, output = _benchmark(tmp_path / "b"), tmp_path / "vpr.parquet"
    assert job.main(["vpr", "--root", str(root), "--output", str(output)]) == 0
    assert capsys.readouterr().out.strip() == f"{output}: 9 rows (database 5, query 4), 9 with GPS"
    assert job.main(["vpr", "--root", str(root), "--output", str(output), "--subset", "test", "--queries",
                     "queries"]) == 0
    assert capsys.readouterr().out.strip() == f"{output}: 3 rows (database 2, query 1), 3 with GPS"
    table = pq.read_table(output)
    assert {"split", "subset", "role_folder", "utm_east", "utm_north", "utm_zone", "heading"} <= set(table.column_names)

    with pytest.raises(SystemExit) as exit_info:
        job.main(["vpr", "--root", str(root), "--output", str(output), "--queries", "queries_rain"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "no query folder 'queries_rain'" in err
    with pytest.raises(SystemExit):
        job.main(["vpr", "--root", str(root), "--output", str(output), "--subset", "dev"])
    assert "argument --subset: invalid choice: 'dev'" in capsys.readouterr().err
