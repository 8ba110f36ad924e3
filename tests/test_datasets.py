"""Dataset manifests built from tiny copies of each published layout: HoliCity, GLDv2, a plain folder; local and S3."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vprlib.data.folder import folder_manifest
from vprlib.data.gldv2 import gldv2_manifest
from vprlib.data.holicity import holicity_manifest, holicity_to_wgs84
from vprlib.data.manifest import ManifestError, url_to_fs
from vprlib.metrics import haversine_m


def _jpeg(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _upload(local: Path, bucket: str) -> str:
    fs, path = url_to_fs(bucket)
    fs.put(str(local), f"{path}/data", recursive=True)
    return f"{bucket}/data"


# ---------------------------------------------------------------- HoliCity

# (month, panorama id as published: 22 url-safe characters, may contain _ and -, detail, CAD loc x, y, z)
VIEWS = [
    ("2008-07", "GWUmH4qmANxNTVk_f-_Wrw", "HD", (707.06941281, -774.53404242, 8.2)),
    ("2008-07", "Ab-cdEfGhIjKlMnOpQrS_t", "LD", (707.06941281, -749.53404242, 2.5)),  # 25 m north of the first
    ("2019-05", "zzzzzzzzzzzzzzzzzzzz-A", "HD", (0.0, 0.0, 2.0)),
    ("2019-05", "yyyyyyyyyyyyyyyyyyyy_B", "LD", (-1200.0, 300.0, 2.0)),
]
YAWS, PITCH = (0, 90), 10
SPLIT_DIR = "split-all-v1-bugfix"  # where the release's split zip unpacks


def _holicity(root: Path, folder: str = "", split_dir: str = SPLIT_DIR) -> Path:
    """A tiny HoliCity as released: month folders (under `folder`), the split lists in `split_dir`."""
    images = []
    for n, (month, pano, detail, loc) in enumerate(VIEWS):
        for yaw in YAWS:
            images.append(f"{month}/{pano}_{detail}_{yaw:03d}_{PITCH:02d}")
            stem = root / folder / images[-1]
            _jpeg(Path(f"{stem}_imag.jpg"), seed=n)
            np.savez(f"{stem}_camr.npz", loc=np.array(loc), yaw=np.int64(yaw), pitch=np.int64(PITCH), fov=np.int64(90))
            if month != "2019-05" or detail != "LD":  # like the test split, one viewpoint has no ground truth
                np.savez(f"{stem}_dpth.npz", depth=np.full((8, 8, 1), 5.0, np.float32))
                Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) % 6).save(f"{stem}_sgmt.png")
    split = root / split_dir
    split.mkdir(parents=True)
    (split / "filelist.txt").write_text("".join(f"{i}\n" for i in images))
    (split / "train-middlesplit.txt").write_text(f"2008-07/{VIEWS[0][1]}_HD\n2008-07/{VIEWS[1][1]}_LD\n")
    (split / "valid-middlesplit.txt").write_text(f"2019-05/{VIEWS[2][1]}_HD\n")
    (split / "test-middlesplit.txt").write_text("\n")  # the last viewpoint is in no list
    (split / "train-randomsplit.txt").write_text(f"2008-07/{VIEWS[0][1]}_HD\n2019-05/{VIEWS[2][1]}_HD\n")
    (split / "test-randomsplit.txt").write_text(f"2008-07/{VIEWS[1][1]}_LD\n2019-05/{VIEWS[3][1]}_LD\n")
    return root


def test_holicity_rows_splits_and_ground_truth(tmp_path):
    table = holicity_manifest(str(_holicity(tmp_path)))
    assert table.num_rows == len(VIEWS) * len(YAWS)
    rows = {r["image_id"]: r for r in table.to_pylist()}
    first = rows[f"2008-07/{VIEWS[0][1]}_HD_000_10"]
    assert first["uri"] == str(tmp_path / f"2008-07/{VIEWS[0][1]}_HD_000_10_imag.jpg")
    assert first["gt_depth_uri"].endswith("_HD_000_10_dpth.npz") and Path(first["gt_depth_uri"]).exists()
    assert first["gt_seg_uri"].endswith("_HD_000_10_sgmt.png")
    assert (first["place_id"], first["detail"], first["pitch"], first["height_m"]) == (VIEWS[0][1], "HD", 10.0, 8.2)
    splits = [rows[f"{m}/{p}_{d}_090_10"]["split"] for m, p, d, _ in VIEWS]
    assert splits == ["train", "train", "val", None]
    no_gt = rows[f"2019-05/{VIEWS[3][1]}_LD_000_10"]
    assert no_gt["gt_depth_uri"] is None and no_gt["gt_seg_uri"] is None


def test_holicity_positions_and_heading(tmp_path):
    table = holicity_manifest(str(_holicity(tmp_path)))
    rows = {r["image_id"]: r for r in table.to_pylist()}
    origin = rows[f"2019-05/{VIEWS[2][1]}_HD_000_10"]
    assert (origin["lat"], origin["lon"]) == pytest.approx((51.51256733, -0.09916756), abs=1e-9)  # model (0, 0)
    # cross-checked against HoliCity's own gps_london.model2gps for the sample camera
    a, b = rows[f"2008-07/{VIEWS[0][1]}_HD_000_10"], rows[f"2008-07/{VIEWS[1][1]}_LD_000_10"]
    assert (a["lat"], a["lon"]) == pytest.approx((51.5054462, -0.08927704), abs=1e-7)
    assert haversine_m(a["lat"], a["lon"], b["lat"], b["lon"]) == pytest.approx(25.0, abs=0.1)
    # yaw is clockwise from the frame's grid north, ~1.5 degrees east of true north in London
    assert a["heading"] == pytest.approx(1.48, abs=0.02)
    assert rows[f"2008-07/{VIEWS[0][1]}_HD_090_10"]["heading"] - a["heading"] == pytest.approx(90.0)


def test_holicity_to_wgs84_vectorised_and_extrapolates():
    lat, lon = holicity_to_wgs84(np.array([0.0, 1000.0, 9000.0]), np.array([0.0, 0.0, 0.0]))
    assert lat.shape == (3,) and lon[1] > lon[0] and np.isfinite(lat).all()
    assert (lon[2] - lon[1]) == pytest.approx(8 * (lon[1] - lon[0]), rel=0.01)  # linear outside the grid


def test_holicity_nested_image_folder(tmp_path):
    table = holicity_manifest(str(_holicity(tmp_path, folder="image")))
    assert table.num_rows == 8 and all("/image/" in u for u in table["uri"].to_pylist())


def test_holicity_errors_name_the_file(tmp_path):
    root = _holicity(tmp_path)
    with pytest.raises(ManifestError, match="elsewhere: no HoliCity split lists"):
        holicity_manifest(str(root), splits="elsewhere")
    bad = next(root.glob("2019-05/*_HD_090_10_camr.npz"))
    np.savez(bad, position=np.zeros(3))
    with pytest.raises(ManifestError, match=f"{bad.name}: not a HoliCity camera file"):
        holicity_manifest(str(root))
    bad.unlink()
    with pytest.raises(ManifestError, match=f"{bad.name.replace('camr.npz', 'imag.jpg')}: no camera file"):
        holicity_manifest(str(root))
    with pytest.raises(ManifestError, match="no HoliCity images"):
        holicity_manifest(str(tmp_path / "empty"))


def test_holicity_split_conflict(tmp_path):
    root = _holicity(tmp_path)
    (root / SPLIT_DIR / "test-middlesplit.txt").write_text(f"2008-07/{VIEWS[0][1]}_HD\n")
    with pytest.raises(ManifestError, match=r"test-middlesplit.txt: .* also in the 'train' split"):
        holicity_manifest(str(root))


def test_holicity_on_s3(tmp_path, s3_bucket):
    local = holicity_manifest(str(_holicity(tmp_path / "h")))
    remote = holicity_manifest(_upload(tmp_path / "h", s3_bucket))
    assert remote["image_id"].to_pylist() == local["image_id"].to_pylist()
    assert remote["lat"].to_pylist() == local["lat"].to_pylist()
    assert remote["uri"][0].as_py() == f"{s3_bucket}/data/2008-07/{local['image_id'][0].as_py().split('/')[1]}_imag.jpg"
    assert remote["gt_depth_uri"][0].as_py().startswith(f"{s3_bucket}/data/")


# ---------------------------------------------------------------- Google Landmarks v2


def _gid(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()[:16]


def _gldv2(root: Path, shuffle_seed: int | None = None) -> Path:
    # landmarks 1, 2 in France (1 with coordinates), 3 in Germany; 10 (France) and 11 (Spain) in index/test
    train = [(_gid(f"t{i}"), 1 if i < 24 else 2 if i < 40 else 3) for i in range(50)]
    if shuffle_seed is not None:
        train = [train[i] for i in np.random.default_rng(shuffle_seed).permutation(len(train))]
    index = [(_gid(f"i{i}"), 10 if i < 3 else 11) for i in range(5)]
    queries = [(_gid("q0"), "10"), (_gid("q1"), ""), (_gid("q2"), "11"), (_gid("q3"), "10 12")]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text("id,url,landmark_id\n" + "".join(f"{i},http://x/{i}.jpg,{lm}\n" for i, lm in train))
    (root / "index_image_to_landmark.csv").write_text("id,landmark_id\n" + "".join(f"{i},{lm}\n" for i, lm in index))
    (root / "recognition_solution_v2.1.csv").write_text(
        "id,landmarks,Usage\n" + "".join(f"{i},{lm},Private\n" for i, lm in queries)
    )
    (root / "landmarks.csv").write_text(
        "landmark_id,country,lat,lon\n1,France,48.8584,2.2945\n2, france ,,\n3,Germany,52.5,13.4\n10,France,43.7,7.26\n"
        "11,Spain,41.4,2.17\n"
    )
    for folder, rows in (("train", train), ("index", index), ("test", queries)):
        for n, (i, _) in enumerate(rows):
            _jpeg(root / folder / i[0] / i[1] / i[2] / f"{i}.jpg", seed=n)
    return root


def test_gldv2_france_subset(tmp_path):
    table = gldv2_manifest(str(_gldv2(tmp_path)), landmarks="landmarks.csv")
    rows = table.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 10  # a quarter of the 40 French training images; none of the German ones
    assert {r["landmark_id"] for r in train} <= {1, 2}
    assert [r["landmark_id"] for r in rows if r["split"] == "database"] == [10, 10, 10]
    queries = [r for r in rows if r["split"] == "query"]
    assert [(r["image_id"], r["landmark_id"]) for r in queries] == [(_gid("q0"), 10), (_gid("q3"), 10)]
    i = queries[0]["image_id"]
    assert queries[0]["uri"] == str(tmp_path / "test" / i[0] / i[1] / i[2] / f"{i}.jpg")
    for r in rows:
        expected = {1: (48.8584, 2.2945, True), 2: (0.0, 0.0, False), 10: (43.7, 7.26, True)}[r["landmark_id"]]
        assert (r["lat"], r["lon"], r["has_gps"]) == expected


def test_gldv2_selection_is_reproducible(tmp_path):
    def train_ids(root, **kwargs):
        table = gldv2_manifest(str(root), landmarks="landmarks.csv", **kwargs)
        return sorted(r["image_id"] for r in table.to_pylist() if r["split"] == "train")

    base = train_ids(_gldv2(tmp_path / "a"))
    assert base == train_ids(_gldv2(tmp_path / "b", shuffle_seed=3))  # row order does not matter
    assert base != train_ids(tmp_path / "a", seed=1)
    assert len(train_ids(tmp_path / "a", train_fraction=1.0)) == 40


def test_gldv2_all_countries_and_errors(tmp_path):
    root = _gldv2(tmp_path)
    table = gldv2_manifest(str(root), country=None, train_fraction=1.0)
    assert table.num_rows == 50 + 5 + 3 and not any(table["has_gps"].to_pylist())
    with pytest.raises(ManifestError, match="landmark_id,country"):
        gldv2_manifest(str(root))
    (root / "twice.csv").write_text("landmark_id,country\n1,France\n1,Spain\n")
    with pytest.raises(ManifestError, match="twice.csv: landmark_id 1 is listed more than once"):
        gldv2_manifest(str(root), landmarks="twice.csv")
    (root / "recognition_solution_v2.1.csv").rename(root / "elsewhere.csv")
    with pytest.raises(ManifestError, match="recognition_solution_v2.1.csv: file not found"):
        gldv2_manifest(str(root), landmarks="landmarks.csv")
    (root / "elsewhere.csv").rename(root / "recognition_solution_v2.1.csv")
    missing = root / "index" / _gid("i0")[0] / _gid("i0")[1] / _gid("i0")[2] / f"{_gid('i0')}.jpg"
    missing.unlink()
    with pytest.raises(ManifestError, match=f"image file not found: {missing}"):
        gldv2_manifest(str(root), landmarks="landmarks.csv")
    (root / "train.csv").write_text("id,url\nabc,http://x\n")
    with pytest.raises(ManifestError, match=r"train.csv: missing column; .*'landmark_id'"):
        gldv2_manifest(str(root), landmarks="landmarks.csv")


def test_gldv2_on_s3(tmp_path, s3_bucket):
    local = gldv2_manifest(str(_gldv2(tmp_path / "g")), landmarks="landmarks.csv")
    remote = gldv2_manifest(_upload(tmp_path / "g", s3_bucket), landmarks="landmarks.csv")
    assert remote["image_id"].to_pylist() == local["image_id"].to_pylist()
    assert all(u.startswith(f"{s3_bucket}/data/") for u in remote["uri"].to_pylist())


# ---------------------------------------------------------------- plain folder


def _folder(root: Path, rows: str) -> Path:
    for name in ("a/1.jpg", "a/2.jpg", "b/3.jpg"):
        _jpeg(root / name)
    (root / "locations.csv").write_text(rows)
    return root


GOOD = "filename,lat,lon,heading,landmark_id\na/1.jpg,45.0,7.6,90,4\na/2.jpg,45.1,7.7,,4\nb/3.jpg,-33.9,151.2,180,5\n"


def test_folder_manifest(tmp_path):
    table = folder_manifest(str(_folder(tmp_path, GOOD)))
    assert table.column_names[:2] == ["image_id", "uri"] and "filename" not in table.column_names
    assert table["image_id"].to_pylist() == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    assert table["uri"].to_pylist() == [str(tmp_path / n) for n in ("a/1.jpg", "a/2.jpg", "b/3.jpg")]
    assert table["heading"].to_pylist() == [90.0, None, 180.0] and table["landmark_id"].to_pylist() == [4, 4, 5]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("image,lat,lon\na/1.jpg,45,7\nb/3.jpg,95.0,7\n", r"row 1 \(image_id 'b/3.jpg'\): lat=95.0"),
        ("image,lat,lon\na/1.jpg,45,7\na/1.jpg,45,7\n", r"duplicate image_id 'a/1.jpg'"),
        ("image,lat,lon\na/1.jpg,45,7\nb/9.jpg,45,7\n", r"row 1: image file not found: .*b/9.jpg"),
        ("image,lat,lon\na/1.jpg,45,7\n,45,7\n", r"row 1: image is empty"),
        ("picture,lat,lon\na/1.jpg,45,7\n", r"no image column"),
        ("image,lat\na/1.jpg,45\n", r"missing column\(s\) \['lon'\]"),
    ],
)
def test_folder_errors(tmp_path, rows, message):
    with pytest.raises(ManifestError, match=message):
        folder_manifest(str(_folder(tmp_path, rows)))


def test_folder_on_s3(tmp_path, s3_bucket):
    remote = _upload(_folder(tmp_path / "f", GOOD), s3_bucket)
    table = folder_manifest(remote)
    assert table["uri"].to_pylist() == [f"{remote}/{n}" for n in ("a/1.jpg", "a/2.jpg", "b/3.jpg")]
    fs, path = url_to_fs(table["uri"][2].as_py())
    assert Image.open(io.BytesIO(fs.cat_file(path))).size == (8, 8)
    fs.rm_file(url_to_fs(f"{remote}/a/2.jpg")[1])
    with pytest.raises(ManifestError, match="row 1: image file not found"):
        folder_manifest(remote)
