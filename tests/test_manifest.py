"""The manifest schema: validate, read/write (CSV and Parquet, local and s3:// on a moto server), uri resolution."""

import posixpath
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vprlib.data.manifest import ManifestError, read_manifest, validate, write_manifest
from vprlib.storage import absolute_path, is_remote, join_uri, url_to_fs


def _table(**overrides):
    columns = {"image_id": ["a", "b"], "uri": ["img/a.jpg", "img/b.jpg"], "lat": [51.5, 51.6], "lon": [-0.1, 2.3]}
    columns.update(overrides)
    return pa.table(columns)


def test_validate_casts_types():
    columns = {"image_id": [1, 2], "uri": ["x", "y"], "lat": [1, 2], "lon": [3, 4], "heading": [0, 90]}
    table = validate(pa.table(columns))
    assert table["image_id"].to_pylist() == ["1", "2"]
    assert table.schema.field("lat").type == pa.float64() and table.schema.field("heading").type == pa.float64()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lat": [51.5, 91.0]}, r"row 1 \(image_id 'b'\): lat=91.0"),
        ({"lon": [float("nan"), 0.0]}, r"row 0 \(image_id 'a'\): lon=nan"),
        ({"image_id": ["a", "a"]}, r"duplicate image_id 'a' at rows \[0, 1\]"),
        ({"uri": ["x.jpg", None]}, r"row 1: uri is empty"),
        ({"image_id": ["a", ""]}, r"row 1: image_id is empty"),
        ({"lat": ["51.5", "north"]}, r"row 1 \('north'\): column lat"),
        ({"split": ["train", "holdout"]}, r"unknown split value\(s\) \['holdout'\]"),
    ],
)
def test_validate_names_the_fault(overrides, message):
    with pytest.raises(ManifestError, match=message):
        validate(_table(**overrides), source="m.parquet")


def test_validate_missing_column():
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['lon'\]"):
        validate(_table().drop_columns(["lon"]))


def test_join_uri():
    assert join_uri("/data/city", "rgb/1.png") == "/data/city/rgb/1.png"
    assert join_uri("/data/city", "/abs/1.png") == "/abs/1.png"
    assert join_uri("s3://bucket/city", "../other/1.png") == "s3://bucket/other/1.png"
    assert join_uri("/data", "s3://bucket/1.png") == "s3://bucket/1.png"


def test_join_uri_file_urls():
    assert join_uri("/data/city", "file:///abs/1.png") == "file:///abs/1.png"  # absolute, not joined
    assert join_uri("file:///data/city", "rgb/1.png") == "file:///data/city/rgb/1.png"
    assert join_uri("file:///data/city", "../other/1.png") == "file:///data/other/1.png"


def test_absolute_path_and_remote_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_path("maps") == str(tmp_path / "maps")  # tasks run in other folders
    assert absolute_path("file:///data/maps") == "/data/maps"  # one spelling per local path
    assert absolute_path("s3://bucket/maps") == "s3://bucket/maps" and absolute_path("") == ""
    assert is_remote("s3://bucket/x") and not is_remote("file:///x") and not is_remote("/x")


def test_file_url_manifest_resolves_like_a_path(tmp_path):
    (tmp_path / "img").mkdir()
    path = tmp_path / "manifest.csv"
    path.write_text(f"image_id,uri,lat,lon\na,img/a.jpg,1,2\nb,file://{tmp_path}/b.jpg,3,4\n")
    for uri in (str(path), f"file://{path}"):
        uris = read_manifest(uri)["uri"].to_pylist()
        assert [url_to_fs(u)[1] for u in uris] == [str(tmp_path / "img" / "a.jpg"), str(tmp_path / "b.jpg")], uri


def test_parquet_round_trip_resolves_relative_uris(tmp_path):
    path = str(tmp_path / "sub" / "manifest.parquet")
    write_manifest(_table(split=["train", None], heading=[10.0, 20.0]), path)
    raw = pq.read_table(path)
    assert raw["uri"].to_pylist() == ["img/a.jpg", "img/b.jpg"]  # written as given
    table = read_manifest(path)
    assert table["uri"].to_pylist() == [str(tmp_path / "sub" / "img" / n) for n in ("a.jpg", "b.jpg")]
    assert table["split"].to_pylist() == ["train", None] and table["heading"].to_pylist() == [10.0, 20.0]


def test_csv_keeps_ids_as_text(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("image_id,uri,lat,lon,landmark_id\n0001,/abs/1.jpg,1,2,5\n0002,2.jpg,3,4,6\n")
    table = read_manifest(str(path))
    assert table["image_id"].to_pylist() == ["0001", "0002"]
    assert table["uri"].to_pylist() == ["/abs/1.jpg", str(tmp_path / "2.jpg")]
    assert table["lat"].to_pylist() == [1.0, 3.0] and table["landmark_id"].to_pylist() == [5, 6]


def test_csv_errors_name_row(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("image_id,uri,lat,lon\na,a.jpg,1,2\nb,,3,4\n")
    with pytest.raises(ManifestError, match="row 1: uri is empty"):
        read_manifest(str(path))
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(str(tmp_path / "absent.parquet"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.csv", "image_id,uri,lat,lon\na,a.jpg,1,2,9\n", r"cannot read manifest {}: CSV parse error: Expected 4"),
        ("m.parquet", "image_id,uri,lat,lon\n", r"cannot read manifest {}: .*Parquet magic bytes not found"),
        ("m.txt", "image_id,uri,lat,lon\na,a.jpg,1,2\n", r"manifest {}: unknown format .txt; expected one of "
                                                         r"\['.parquet', '.csv'\]"),
    ],
)
def test_unreadable_manifest_names_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ManifestError, match=message.format(re.escape(str(path)))):
        read_manifest(str(path))


@pytest.mark.parametrize("name", ["manifest.parquet", "manifest.csv"])
def test_s3_round_trip(s3_bucket, tmp_path, name):
    uri = f"{s3_bucket}/city/{name}"
    if name.endswith(".parquet"):
        write_manifest(_table(), uri)
    else:
        fs, path = url_to_fs(uri)
        fs.pipe_file(path, b"image_id,uri,lat,lon\na,img/a.jpg,51.5,-0.1\nb,img/b.jpg,51.6,2.3\n")
    table = read_manifest(uri)
    assert table["uri"].to_pylist() == [f"{s3_bucket}/city/img/a.jpg", f"{s3_bucket}/city/img/b.jpg"]
    assert table["lat"].to_pylist() == [51.5, 51.6]
    fs, path = url_to_fs(uri)
    assert fs.exists(path) and posixpath.basename(path) == name
