"""HoliCity as released: where the split lists are found, the six-label table, and the ground-truth reader that
turns a view's depth and segmentation into refiner targets (local and S3)."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_datasets import SPLIT_DIR, VIEWS, _holicity, _upload  # the tiny HoliCity in the released layout

from vprlib.data.holicity import (
    HOLICITY_CLASSES,
    HOLICITY_TO_REFINED,
    holicity_ground_truth,
    holicity_manifest,
    holicity_to_refined,
)
from vprlib.data.manifest import ManifestError
from vprlib.spec import IGNORE_LABEL, REFINED_CLASSES, to_inverse_metres

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
try:
    import manifest as job
finally:
    sys.path.pop(0)


def _splits(table) -> dict[str, str | None]:
    """{viewpoint: split} of a manifest (every image of a viewpoint has its split)."""
    return {r["image_id"].rsplit("_", 2)[0]: r["split"] for r in table.to_pylist()}


def _by_viewpoint(splits: list) -> dict[str, str | None]:
    """{viewpoint: split} for the splits of VIEWS in order."""
    return {f"{m}/{p}_{d}": s for (m, p, d, _), s in zip(VIEWS, splits, strict=True)}


MIDDLESPLIT = _by_viewpoint(["train", "train", "val", None])  # the fixture's middlesplit lists


# ---------------------------------------------------------------- split lists


@pytest.mark.parametrize("split_dir", [SPLIT_DIR, f"split/{SPLIT_DIR}", "split"])
def test_split_lists_found_where_unpacked(tmp_path, split_dir):
    table = holicity_manifest(str(_holicity(tmp_path, split_dir=split_dir)))
    assert _splits(table) == MIDDLESPLIT


def test_split_lists_elsewhere_need_the_flag(tmp_path, capsys):
    root = _holicity(tmp_path / "h", split_dir="lists/holicity")
    with pytest.raises(ManifestError, match=rf"no HoliCity split lists .* in {SPLIT_DIR}/, .*--splits"):
        holicity_manifest(str(root))
    assert _splits(holicity_manifest(str(root), splits="lists/holicity")) == MIDDLESPLIT
    outside = tmp_path / "lists"
    shutil.move(root / "lists" / "holicity", outside)
    assert _splits(holicity_manifest(str(root), splits=str(outside))) == MIDDLESPLIT

    output = tmp_path / "m.parquet"
    assert job.main(["holicity", "--root", str(root), "--output", str(output), "--splits", str(outside)]) == 0
    assert capsys.readouterr().out.strip() == f"{output}: 8 rows (train 4, val 2, no split 2)"
    assert _splits(pq.read_table(output)) == MIDDLESPLIT


def test_random_split_scheme(tmp_path, capsys):
    root, output = _holicity(tmp_path / "h"), tmp_path / "m.parquet"
    argv = ["holicity", "--root", str(root), "--output", str(output), "--split-scheme", "randomsplit"]
    assert job.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"{output}: 8 rows (train 4, test 4)"
    assert _splits(pq.read_table(output)) == _by_viewpoint(["train", "test", "train", "test"])


def test_each_kind_in_its_own_tree(tmp_path):
    """The separate archives (images, cameras, depth, segmentation) may unpack into separate trees."""
    root = _holicity(tmp_path / "h", folder="image-v1")
    for kind, tree in (("camr", "camr-v1"), ("dpth", "depth-v1"), ("sgmt", "segmentation-v1")):
        for path in (root / "image-v1").rglob(f"*_{kind}.*"):
            target = root / tree / path.relative_to(root / "image-v1")
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
    rows = {r["image_id"]: r for r in holicity_manifest(str(root)).to_pylist()}
    first = rows[f"2008-07/{VIEWS[0][1]}_HD_000_10"]
    assert first["uri"].startswith(str(root / "image-v1")) and "/depth-v1/" in first["gt_depth_uri"]
    assert "/segmentation-v1/" in first["gt_seg_uri"] and first["height_m"] == 8.2


# ---------------------------------------------------------------- labels


def test_six_labels_to_refined():
    assert HOLICITY_CLASSES == ("sky", "building", "road", "terrain", "tree", "others")
    named = {c: REFINED_CLASSES[i] if i != IGNORE_LABEL else None
             for c, i in zip(HOLICITY_CLASSES, HOLICITY_TO_REFINED, strict=True)}
    assert named == {"sky": "sky", "building": "building", "road": "terrain", "terrain": "terrain", "tree": "tree",
                     "others": None}
    refined = holicity_to_refined(np.array([[0, 1, 2, 3], [4, 5, 6, 255]], np.uint8))
    assert refined.dtype == np.uint8 and refined.tolist() == [[0, 1, 2, 2], [3, 255, 255, 255]]
    assert holicity_to_refined(np.array([-2, 2, 40_000])).tolist() == [255, 2, 255]  # any integer type
    with pytest.raises(ValueError, match="must be integers"):
        holicity_to_refined(np.array([0.0, 1.0]))


# ---------------------------------------------------------------- ground truth

DEPTH_M = np.array([[0, 0, 0, 0], [10, 10, 20, 20], [4, 4, 5, 5], [2, 2, 2.5, 2.5]], np.float32)  # row 0: sky
LABELS = np.array([[0, 0, 0, 0], [1, 1, 5, 5], [4, 4, 2, 2], [3, 3, 2, 2]], np.uint8)  # 5: others


def _view(folder: Path, depth=DEPTH_M, labels=LABELS) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    depth_path, seg_path = folder / "v_HD_000_10_dpth.npz", folder / "v_HD_000_10_sgmt.png"
    np.savez(depth_path, depth=depth[..., None])  # (H, W, 1) as released
    Image.fromarray(labels).save(seg_path)
    return str(depth_path), str(seg_path)


def test_ground_truth_targets(tmp_path):
    depth, labels = holicity_ground_truth(*_view(tmp_path), side=4)
    assert depth.dtype == np.float32 and labels.dtype == np.uint8 and depth.shape == labels.shape == (4, 4)
    assert depth[0].tolist() == [0.0] * 4  # no geometry: invalid, not infinitely near
    np.testing.assert_allclose(depth[1:], 1.0 / DEPTH_M[1:], rtol=1e-6)
    assert labels.tolist() == [[0, 0, 0, 0], [1, 1, 255, 255], [3, 3, 2, 2], [2, 2, 2, 2]]


def test_ground_truth_resized_by_nearest_neighbour(tmp_path):
    uris = _view(tmp_path)
    depth, labels = holicity_ground_truth(*uris, side=2)  # each output pixel is the input pixel under its centre
    np.testing.assert_array_equal(depth, to_inverse_metres(DEPTH_M)[np.ix_([1, 3], [1, 3])])
    assert labels.tolist() == [[1, 255], [2, 2]]
    depth, labels = holicity_ground_truth(*uris, side=8)
    np.testing.assert_array_equal(depth, np.repeat(np.repeat(to_inverse_metres(DEPTH_M), 2, 0), 2, 1))
    assert set(np.unique(depth)) <= set(np.unique(to_inverse_metres(DEPTH_M)))  # no blend of valid and 0
    assert labels.shape == (8, 8) and set(np.unique(labels)) == {0, 1, 2, 3, 255}


def test_ground_truth_errors_name_the_file(tmp_path):
    depth_uri, seg_uri = _view(tmp_path)
    missing = str(tmp_path / "test_HD_000_10_dpth.npz")
    with pytest.raises(FileNotFoundError, match=rf"{missing}: HoliCity depth map not found .*withhold"):
        holicity_ground_truth(missing, seg_uri)
    with pytest.raises(ValueError, match="gt_depth_uri is empty"):
        holicity_ground_truth(None, seg_uri)
    np.savez(tmp_path / "bad_dpth.npz", distance=DEPTH_M)
    with pytest.raises(ValueError, match=r"bad_dpth.npz: not a HoliCity depth map \(an npz with 'depth'\)"):
        holicity_ground_truth(str(tmp_path / "bad_dpth.npz"), seg_uri)
    _, small_seg = _view(tmp_path / "small", labels=LABELS[:2])
    with pytest.raises(ValueError, match=r"depth is 4x4 but .*small/v_HD_000_10_sgmt.png is 4x2"):
        holicity_ground_truth(depth_uri, small_seg)


def test_ground_truth_of_manifest_rows_local_and_s3(tmp_path, s3_bucket):
    root = _holicity(tmp_path / "h")
    remote = _upload(root, s3_bucket)
    for table in (holicity_manifest(str(root)), holicity_manifest(remote)):
        rows = table.to_pylist()
        train = next(r for r in rows if r["split"] == "train")
        depth, labels = holicity_ground_truth(train["gt_depth_uri"], train["gt_seg_uri"], side=8)
        np.testing.assert_allclose(depth, 1 / 5.0)  # the fixture's depth is 5 m everywhere
        assert labels.tolist() == holicity_to_refined(np.arange(64).reshape(8, 8) % 6).tolist()
        no_gt = next(r for r in rows if r["gt_depth_uri"] is None)
        with pytest.raises(ValueError, match="gt_depth_uri is empty"):
            holicity_ground_truth(no_gt["gt_depth_uri"], no_gt["gt_seg_uri"])
    missing = f"{remote}/2019-05/absent_dpth.npz"
    with pytest.raises(FileNotFoundError, match=f"{missing}: HoliCity depth map not found"):
        holicity_ground_truth(missing, None)


# ---------------------------------------------------------------- the ground truth as a maps table


@pytest.mark.slow
def test_ground_truth_maps_table_resumes_and_keeps_bad_files_as_error_rows(tmp_path, capsys):
    """jobs/ground_truth.py: every view with ground truth becomes a ground-truth row (inverse metres, refined4),
    views without it are left out, an unreadable file is an error row, and a rerun writes nothing."""
    ray = pytest.importorskip("ray")
    from vprlib.data.manifest import write_manifest
    from vprlib.maps import decode_depth, decode_seg, read_maps, read_spec

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
    try:
        import ground_truth as gt_job
    finally:
        sys.path.pop(0)
    root = _holicity(tmp_path / "h")
    manifest = holicity_manifest(str(root))
    write_manifest(manifest, str(tmp_path / "m.parquet"))
    rows = manifest.to_pylist()
    with_gt = [r for r in rows if r["gt_depth_uri"]]
    Path(with_gt[0]["gt_depth_uri"]).write_bytes(b"not an npz")
    output = tmp_path / "gt"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", address="local")
    try:
        assert gt_job.main(["--input", str(tmp_path / "m.parquet"), "--output", str(output), "--side", "4"]) == 1
        table = {r["image_id"]: r for r in read_maps(str(output)).to_pylist()}
        assert sorted(table) == sorted(r["image_id"] for r in with_gt) and len(with_gt) < len(rows)
        bad = table[with_gt[0]["image_id"]]
        assert bad["status"] == "error" and bad["error"].startswith("ground truth:")
        assert with_gt[0]["gt_depth_uri"] in bad["error"]
        good = table[with_gt[1]["image_id"]]
        np.testing.assert_allclose(decode_depth(good), 1 / 5.0)
        expected = holicity_to_refined(np.arange(64).reshape(8, 8) % 6)[1::2, 1::2]  # nearest neighbour to 4 x 4
        assert decode_seg(good).tolist() == expected.tolist() and good["split"] == with_gt[1]["split"]
        spec = read_spec(str(output))
        assert spec["strategy"] == "ground-truth" and spec["side"] == 4 and spec["seg_classes"] == "refined4"
        capsys.readouterr()
        assert gt_job.main(["--input", str(tmp_path / "m.parquet"), "--output", str(output), "--side", "4"]) == 0
        assert f"{len(with_gt)} already written, 0 to do" in capsys.readouterr().out
        assert gt_job.main(["--input", str(tmp_path / "m.parquet"), "--output", str(output), "--side", "8"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "than this run (--side 8) was built for (side: 8 != 4)" in err, err
    finally:
        ray.shutdown()
    write_manifest(manifest.drop_columns(["gt_seg_uri"]), str(tmp_path / "plain.parquet"))
    assert gt_job.main(["--input", str(tmp_path / "plain.parquet"), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no gt_seg_uri column: a HoliCity manifest" in err
