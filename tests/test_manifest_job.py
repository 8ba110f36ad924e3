"""jobs/manifest.py: HoliCity, GLDv2 and plain folders to a manifest Parquet file, local and S3; its errors."""

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_datasets import (  # the tiny fake datasets
    GLD_FRANCE,
    GLD_RETRIEVAL,
    GOOD,
    VIEWS,
    YAWS,
    _folder,
    _gldv2,
    _holicity,
    _upload,
)

from vprlib.extract.output import load_input
from vprlib.storage import url_to_fs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
try:
    import manifest as job
finally:
    sys.path.pop(0)


def _run(capsys, *argv) -> str:
    """Run the job, expect success, return its one line of output."""
    assert job.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return out.strip()


def _fails(capsys, *argv) -> str:
    """Run the job, expect exit status 2 and one line on stderr; return it."""
    with pytest.raises(SystemExit) as exit_info:
        job.main([str(a) for a in argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("manifest.py") and not captured.out
    assert "Traceback" not in captured.err
    return captured.err.strip()


def test_holicity(tmp_path, capsys):
    root, output = _holicity(tmp_path / "h"), tmp_path / "out" / "manifest.parquet"
    line = _run(capsys, "holicity", "--root", root, "--output", output)
    assert line == f"{output}: 8 rows (train 4, val 2, no split 2)"
    table = pq.read_table(output)
    assert table.num_rows == len(VIEWS) * len(YAWS)
    expected = {"image_id", "uri", "lat", "lon", "heading", "split", "gt_depth_uri", "gt_seg_uri"}
    assert expected <= set(table.column_names)
    assert all(u.startswith(str(root)) and u.endswith("_imag.jpg") for u in table["uri"].to_pylist())


def test_gldv2(tmp_path, capsys):
    root, output = _gldv2(tmp_path / "g"), tmp_path / "gldv2.parquet"
    line = _run(capsys, "gldv2", "--root", root, "--output", output, "--protocol", "retrieval")
    assert line == f"{output}: 12 rows (database 9, query 3), 0 with GPS"
    table = pq.read_table(output)
    assert table.column_names == ["image_id", "uri", "usage", "split", "positives", "lat", "lon", "has_gps"]
    assert {q: p for q, p in zip(table["image_id"].to_pylist(), table["positives"].to_pylist(), strict=True)
            if p is not None} == GLD_RETRIEVAL
    line = _run(capsys, "gldv2", "--root", root, "--output", output, "--protocol", "retrieval", "--usage", "public")
    assert line == f"{output}: 10 rows (database 9, query 1), 0 with GPS"

    line = _run(capsys, "gldv2", "--root", root, "--output", output, "--protocol", "paper", "--country-list",
                "countries.csv", "--country", "france", "--fraction", "1", "--no-check-files")
    table = pq.read_table(output)
    counts = {s: table["split"].to_pylist().count(s) for s in ("database", "query", "train")}
    assert line.startswith(f"{output}: 32 rows (database {counts['database']}, query {counts['query']}, train "
                           f"{counts['train']}), 0 with GPS; train {counts['train']} images of ")
    assert line.endswith("(paper: train 49,370 images of 4,770 landmarks, test 29,634 of 5,387)")
    assert set(table["landmark_id"].to_pylist()) == GLD_FRANCE


def test_folder_and_check_files(tmp_path, capsys):
    root, output = _folder(tmp_path / "f", GOOD), tmp_path / "folder.parquet"
    assert _run(capsys, "folder", "--root", root, "--output", output) == f"{output}: 3 rows"
    table = pq.read_table(output)
    assert table.column_names == ["image_id", "uri", "lat", "lon", "heading", "landmark_id"]
    assert table["uri"].to_pylist() == [str(root / n) for n in ("a/1.jpg", "a/2.jpg", "b/3.jpg")]

    (root / "a" / "2.jpg").unlink()
    assert "row 1: image file not found" in _fails(capsys, "folder", "--root", root, "--output", output)
    assert _run(capsys, "folder", "--root", root, "--output", output, "--no-check-files") == f"{output}: 3 rows"


def test_output_is_accepted_by_extract(tmp_path, capsys):
    root, output = _holicity(tmp_path / "h"), tmp_path / "manifest.parquet"
    _run(capsys, "holicity", "--root", root, "--output", output)
    table = load_input(str(output))
    assert table.num_rows == 8 and table["uri"].to_pylist() == pq.read_table(output)["uri"].to_pylist()


def test_missing_root(tmp_path, capsys):
    error = _fails(capsys, "holicity", "--root", tmp_path / "absent", "--output", tmp_path / "m.parquet")
    assert error == f"manifest.py: error: --root not found: {tmp_path / 'absent'}"
    assert not (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["holicity", "--splits", "elsewhere"], "elsewhere: no HoliCity split lists"),
        (["gldv2", "--protocol", "paper"], "--protocol paper needs --country-list"),
        (["gldv2", "--protocol", "paper", "--country-list", "FR.json", "--fraction", "1.5"],
         "fraction must be in (0, 1], got 1.5"),
        (["gldv2", "--protocol", "paper", "--country-list", "countries.csv", "--country", "FR"],
         "countries.csv: no landmark of country 'FR'; countries there: france, germany, italy"),
        (["gldv2", "--protocol", "paper", "--country-list", "countries.csv"], "lists 3 countries"),
        (["gldv2", "--protocol", "retrieval", "--country-list", "FR.json"], "--country-list is not a flag of"),
        (["gldv2", "--protocol", "paper", "--country-list", "FR.json", "--usage", "Public"],
         "--usage is not a flag of --protocol paper"),
        (["folder", "--locations", "elsewhere.csv"], "elsewhere.csv: file not found"),
    ],
)
def test_library_errors_are_one_line(tmp_path, capsys, argv, message):
    _holicity(tmp_path)
    _gldv2(tmp_path)
    _folder(tmp_path, GOOD)
    assert message in _fails(capsys, *argv, "--root", tmp_path, "--output", tmp_path / "m.parquet")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["holicity", "--root", "r", "--output", "m.parquet", "--bogus"], "unrecognized arguments: --bogus"),
        (["gldv2", "--root", "r", "--output", "m.parquet", "--protocol", "paper", "--seed", "x"],
         "argument --seed: invalid int value"),
        (["gldv2", "--root", "r", "--output", "m.parquet"], "required: --protocol"),
        (["gldv2", "--root", "r", "--output", "m.parquet", "--protocol", "retrieval", "--usage", "Ignored"],
         "argument --usage: invalid choice: 'Ignored'"),
        (["folder", "--root", "r"], "required: --output"),
        (["folder", "--root", "r", "--output", "m.csv"], "--output must be a .parquet file"),
        (["imagenet"], "invalid choice: 'imagenet'"),
        ([], "required"),
    ],
)
def test_bad_command_line_is_one_line(capsys, argv, message):
    assert message in _fails(capsys, *argv)


def test_s3_round_trip(tmp_path, capsys, s3_bucket):
    root = _upload(_holicity(tmp_path / "h"), s3_bucket)
    output = f"{s3_bucket}/manifests/holicity.parquet"
    assert _run(capsys, "holicity", "--root", root, "--output", output).startswith(f"{output}: 8 rows")
    fs, path = url_to_fs(output)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    assert table.num_rows == 8 and all(u.startswith(f"{root}/") for u in table["uri"].to_pylist())
    assert load_input(output)["image_id"].to_pylist() == table["image_id"].to_pylist()
    error = _fails(capsys, "holicity", "--root", f"{s3_bucket}/absent", "--output", output)
    assert error.endswith(f"--root not found: {s3_bucket}/absent")
