"""Dataset manifests built from tiny copies of each published layout: HoliCity, GLDv2, a plain folder; local and S3."""

import hashlib
import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vprlib.data.folder import folder_manifest
from vprlib.data.gldv2 import gldv2_paper_manifest, gldv2_retrieval_manifest, paper_counts
from vprlib.data.holicity import holicity_manifest, holicity_to_wgs84
from vprlib.data.manifest import ManifestError
from vprlib.metrics import haversine_m
from vprlib.storage import url_to_fs


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


# Train landmarks (train id space) and their number of train images: France 1-8 (1 the Eiffel Tower, 6 with a
# single image), Germany 20 (the Brandenburg Gate), Italy 30 (the Colosseum).
GLD_TRAIN_COUNTS = {1: 8, 2: 6, 3: 4, 4: 3, 5: 2, 6: 1, 7: 5, 8: 3, 20: 4, 30: 4}
GLD_FRANCE = set(range(1, 9))
GLD_TRAIN = {_gid(f"train-{lm}-{k}"): lm for lm, n in GLD_TRAIN_COUNTS.items() for k in range(n)}  # id -> landmark
# Index landmarks are numbered apart: index landmark 1 is the Colosseum, the train id of the Eiffel Tower.
GLD_INDEX_LANDMARKS = {"colosseum": 1, "eiffel": 2, "brandenburg": 3}
GLD_INDEX = {_gid(f"index-{name}-{k}"): name for name in GLD_INDEX_LANDMARKS for k in range(3)}  # id -> landmark
# Test images: recognition solution (train ids), then the retrieval solution's index landmarks and Usage
GLD_TEST = {
    _gid("test-eiffel"): ("1", ("eiffel",), "Public"),
    _gid("test-eiffel-colosseum"): ("1 30", ("eiffel", "colosseum"), "Private"),  # two landmarks in one photo
    _gid("test-brandenburg"): ("20", ("brandenburg",), "Private"),
    _gid("test-ignored"): ("2", (), "Ignored"),  # a Louvre photo the retrieval benchmark does not score
    _gid("test-no-landmark"): ("", (), "Ignored"),  # no landmark of the dataset
}
# the release's query -> index ground truth, for the scored test images
GLD_RETRIEVAL = {q: sorted(i for i, name in GLD_INDEX.items() if name in names)
                 for q, (_, names, usage) in GLD_TEST.items() if usage != "Ignored"}


def _gldv2(root: Path, flat: bool = False, shuffle_seed: int | None = None) -> Path:
    """A tiny GLDv2 in the release's layout (CSVs under metadata/ and ground_truth/, or all at the root when
    `flat`), its images, and two country lists: the explorer's FR.json and a CSV of every landmark's country."""
    train = list(GLD_TRAIN.items())
    if shuffle_seed is not None:
        train = [train[i] for i in np.random.default_rng(shuffle_seed).permutation(len(train))]
    metadata, truth = (root, root) if flat else (root / "metadata", root / "ground_truth")
    for folder in (metadata, truth):
        folder.mkdir(parents=True, exist_ok=True)
    (metadata / "train.csv").write_text("id,url,landmark_id\n" + "".join(f"{i},http://x/{i},{lm}\n" for i, lm in train))
    (metadata / "index.csv").write_text("id\n" + "".join(f"{i}\n" for i in GLD_INDEX))
    (metadata / "index_image_to_landmark.csv").write_text(
        "id,landmark_id\n" + "".join(f"{i},{GLD_INDEX_LANDMARKS[name]}\n" for i, name in GLD_INDEX.items())
    )
    (metadata / "test.csv").write_text("id\n" + "".join(f"{i}\n" for i in GLD_TEST))
    (truth / "recognition_solution_v2.1.csv").write_text(
        "id,landmarks,Usage\n" + "".join(f"{i},{lms},{'Private' if u == 'Private' else 'Public'}\n"
                                         for i, (lms, _, u) in GLD_TEST.items())
    )
    (truth / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n" + "".join(f"{i},{' '.join(GLD_RETRIEVAL.get(i, ['None']))},{u}\n"
                                      for i, (_, _, u) in GLD_TEST.items())
    )
    names = {1: "Eiffel Tower", 2: "Louvre", 3: "Mont-Saint-Michel", 4: "Arc de Triomphe", 5: "Notre-Dame",
             6: "Pont du Gard", 7: "Carcassonne", 8: "Chambord"}
    entries = [{"id": str(lm) if lm == 7 else lm, "name": name} for lm, name in names.items()]  # an id as text too
    (root / "FR.json").write_text(json.dumps(entries))
    countries = {**dict.fromkeys(GLD_FRANCE, "France"), 2: " france ", 20: "Germany", 30: "Italy"}
    (root / "countries.csv").write_text("landmark_id,country\n" + "".join(f"{lm},{c}\n" for lm, c in countries.items()))
    for folder, ids in (("train", GLD_TRAIN), ("index", GLD_INDEX), ("test", GLD_TEST)):
        for n, i in enumerate(ids):
            _jpeg(root / folder / i[0] / i[1] / i[2] / f"{i}.jpg", seed=n)
    return root


def _by_split(table) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        rows.setdefault(row["split"], []).append(row)
    return rows


def test_gldv2_paper_france(tmp_path):
    table = gldv2_paper_manifest(str(_gldv2(tmp_path)), "FR.json", fraction=1.0)
    rows = _by_split(table)
    assert table.num_rows == 32 and {r["landmark_id"] for r in table.to_pylist()} == GLD_FRANCE  # no German image
    assert all(GLD_TRAIN[r["image_id"]] == r["landmark_id"] for r in table.to_pylist())
    train_landmarks = {r["landmark_id"] for r in rows["train"]}
    test_landmarks = {r["landmark_id"] for r in rows["query"] + rows["database"]}
    assert not train_landmarks & test_landmarks and len(test_landmarks) == round(8 * 5387 / 10157)
    i = rows["query"][0]["image_id"]
    assert rows["query"][0]["uri"] == str(tmp_path / "train" / i[0] / i[1] / i[2] / f"{i}.jpg")  # all train images
    assert table.column_names == ["image_id", "uri", "landmark_id", "split", "positives", "lat", "lon", "has_gps"]
    assert not any(table["has_gps"].to_pylist()) and set(table["lat"].to_pylist()) == {0.0}
    assert paper_counts(table) == (f"train {len(rows['train'])} images of {len(train_landmarks)} landmarks, test "
                                   f"{32 - len(rows['train'])} of {len(test_landmarks)} (paper: train 49,370 images "
                                   "of 4,770 landmarks, test 29,634 of 5,387)")


def test_gldv2_selection_is_reproducible(tmp_path):
    def splits(root, **kwargs):
        table = gldv2_paper_manifest(str(root), "FR.json", **kwargs)
        return sorted(zip(table["image_id"].to_pylist(), table["split"].to_pylist(), strict=True))

    base = splits(_gldv2(tmp_path / "a"))
    assert len(base) == 8  # a quarter of the 32 French train images
    assert base == splits(_gldv2(tmp_path / "b", shuffle_seed=3))  # row order does not matter
    assert base != splits(tmp_path / "a", seed=1)
    assert len(splits(tmp_path / "a", fraction=1.0)) == 32


def test_gldv2_retrieval_benchmark(tmp_path):
    table = gldv2_retrieval_manifest(str(_gldv2(tmp_path)))
    rows = _by_split(table)
    assert sorted(r["image_id"] for r in rows["database"]) == sorted(GLD_INDEX)
    assert {r["image_id"]: r["positives"] for r in rows["query"]} == GLD_RETRIEVAL  # Ignored test images left out
    assert {r["image_id"]: r["usage"] for r in rows["query"]} == {q: GLD_TEST[q][2] for q in GLD_RETRIEVAL}
    q = rows["query"][0]["image_id"]
    assert rows["query"][0]["uri"] == str(tmp_path / "test" / q[0] / q[1] / q[2] / f"{q}.jpg")
    assert table.column_names == ["image_id", "uri", "usage", "split", "positives", "lat", "lon", "has_gps"]
    public = gldv2_retrieval_manifest(str(tmp_path), usage=("Public",), check_files=False)
    assert _by_split(public)["query"][0]["image_id"] == _gid("test-eiffel") and len(_by_split(public)["query"]) == 1


def test_gldv2_errors(tmp_path):
    root = _gldv2(tmp_path)
    (root / "ground_truth/retrieval_solution_v2.1.csv").rename(root / "elsewhere.csv")
    with pytest.raises(ManifestError, match="retrieval_solution_v2.1.csv not found under .* metadata/.*ground_truth/"):
        gldv2_retrieval_manifest(str(root))
    (root / "elsewhere.csv").rename(root / "ground_truth/retrieval_solution_v2.1.csv")
    missing = root / "index" / _gid("index-eiffel-0")[0] / _gid("index-eiffel-0")[1] / _gid("index-eiffel-0")[2]
    missing = missing / f"{_gid('index-eiffel-0')}.jpg"
    missing.unlink()
    with pytest.raises(ManifestError, match=f"image file not found: {missing}"):
        gldv2_retrieval_manifest(str(root))
    (root / "metadata/train.csv").write_text("id,url\nabc,http://x\n")
    with pytest.raises(ManifestError, match=r"train.csv: missing column; .*'landmark_id'"):
        gldv2_paper_manifest(str(root), "FR.json")
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 1.5"):
        gldv2_paper_manifest(str(root), "FR.json", fraction=1.5)


def test_gldv2_on_s3(tmp_path, s3_bucket):
    root = _gldv2(tmp_path / "g")
    remote = _upload(root, s3_bucket)
    for build in (gldv2_retrieval_manifest, partial(gldv2_paper_manifest, country_list="FR.json")):
        local, there = build(str(root)), build(remote)
        assert there["image_id"].to_pylist() == local["image_id"].to_pylist()
        assert there["positives"].to_pylist() == local["positives"].to_pylist()
        assert all(u.startswith(f"{s3_bucket}/data/") for u in there["uri"].to_pylist())


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
