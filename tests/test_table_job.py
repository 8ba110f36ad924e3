"""jobs/table.py (make table): its flags, one row end to end on a small city, and the appearance study's bookkeeping
(the whole table and study are `make table` and `make study`, most of an hour; one row and the study end to end,
a few minutes, are in the long tier)."""

import importlib.util
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vprlib.data.synthcity import CityConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("table_job", ROOT / "jobs" / "table.py")
table_job = importlib.util.module_from_spec(_spec)
sys.modules["table_job"] = table_job  # its dataclasses look their module up
_spec.loader.exec_module(table_job)

SMALL_CITY = CityConfig(places=16, side=32, dense_train=8, workers=1)
SMALL = {"side": 32, "descriptor_size": 16, "cosplace_epochs": 1, "netvlad_epochs": 1, "refiner_epochs": 1,
         "study_epochs": 1, "cosplace_iterations": 3, "threads": 1}


@pytest.mark.parametrize("argv, message", [
    (["--rows", "cosplace-alexnet-synthetic-depthseg"], "unknown row(s) cosplace-alexnet-synthetic-depthseg; known: "
                                                        "netvlad-vgg16-synthetic-depthseg, "),
    (["--parts", "table,figures"], "--parts 'table,figures': known parts are table, study"),
    (["--side", "0"], "--side must be >= 1"),
])
def test_bad_flags_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        table_job.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err


def test_rows_are_the_papers_and_two_more():
    names = [row.name for row in table_job.ROWS]
    assert len(names) == len(set(names)) == 11
    assert {(r.method, r.backbone, r.maps, r.input) for r in table_job.ROWS} >= {
        ("netvlad", "vgg16", "synthetic", "depth+seg"), ("cosplace", "resnet50", "synthetic", "depth"),
        ("cosplace", "resnet50", "synthetic", "seg"), ("netvlad", "vgg16", "inpaint", "depth+seg")}
    assert [r.role for r in table_job.ROWS if r.role] == ["ceiling", "floor"]


def test_same_look_and_first_correct(tmp_path):
    manifest = pa.table({"image_id": ["d", "q1", "q2", "e", "r1"], "split": ["database", "query", "query",
                                                                           "database", "query"],
                         "place_id": [0, 0, 0, 1, 1], "time_of_day": ["noon", "noon", "dusk", "dawn", "dawn"],
                         "season": ["summer", "summer", "summer", "winter", "autumn"]})
    assert table_job.same_look(manifest) == {"q1": True, "q2": False, "r1": False}
    pq.write_table(pa.table({"image_id": ["q1", "q2"], "first_correct_rank": pa.array([1, None], pa.int32())}),
                   tmp_path / "results.parquet")
    assert table_job.first_correct(str(tmp_path / "results.parquet")) == {"q1": True, "q2": False}


@pytest.mark.long
def test_one_row_end_to_end(ray_session, tmp_path, capsys):
    """The ceiling row (the city's own maps: no extraction) trains, indexes, evaluates and is printed and recorded."""
    config = table_job.TableConfig(output=str(tmp_path), rows="cosplace-resnet18-ground-truth-depthseg", **SMALL)
    records = table_job.run_table(config, SMALL_CITY)
    printed = capsys.readouterr().out
    assert len(records) == 1 and 0.0 <= records[0]["recall@1"] <= records[0]["recall@5"] <= 1.0
    assert records[0]["queries"] == 64 and records[0]["epochs"] == 1 and records[0]["best_epoch"] in (0, 1)
    line = next(x for x in printed.splitlines() if x.startswith("CosPlace  ResNet-18  ground truth (ceiling)"))
    assert f"{records[0]['recall@1']:.1%}" in line and "depth+seg" in line
    assert json.loads((tmp_path / "table" / "table.json").read_text())["rows"] == records
    trained = json.loads((tmp_path / "table" / records[0]["name"] / "model" / "config.json").read_text())
    assert trained["options"]["iterations_per_epoch"] == 3 and trained["options"]["threads"] == 1
    model = tmp_path / "table" / records[0]["name"] / "model"
    assert not (model / "_ray").exists() and (model / "last.pt").exists()  # Ray's copies dropped, the run resumable
    trained_at = (model / "last.pt").stat().st_mtime_ns
    again = table_job.run_table(config, SMALL_CITY)  # a second run only evaluates again: nothing retrains
    assert [r["recall@1"] for r in again] == [r["recall@1"] for r in records]
    assert (model / "last.pt").stat().st_mtime_ns == trained_at and not (model / "_ray").exists()


@pytest.mark.long
def test_study_end_to_end(ray_session, tmp_path, capsys):
    """Both retrievers (maps, photos) on both study cities: every condition has its queries and a Recall@1."""
    config = table_job.TableConfig(output=str(tmp_path), parts="study", **SMALL)
    records = table_job.run_study(config, SMALL_CITY)
    assert {(r["crowd"], r["look"], r["retriever"]) for r in records} == {
        (c, look, m) for c in table_job.CROWDS for look in ("same look", "other look") for m in ("depth+seg", "rgb")}
    assert all(r["queries"] == 64 and 0.0 <= r["recall@1"] <= 1.0 for r in records)
    assert [r["dynamic_fraction"] for r in records if r["crowd"] == "no crowds"] == [0.0] * 4
    assert min(r["dynamic_fraction"] for r in records if r["crowd"] == "crowds") > 0.02
    assert "study: Recall@1 within 25 m" in capsys.readouterr().out
