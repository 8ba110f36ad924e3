"""The table (vprlib.demo.table, jobs/table.py: make table): its flags, its rows, one row end to end on a small
city, and the appearance study's bookkeeping (the whole table and study are `make table` and `make study`, most of an
hour; one row and the study end to end, a few minutes, are in the long tier)."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vprlib.demo import models as recipe
from vprlib.demo import table
from vprlib.demo.city import CityConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL_CITY = CityConfig(places=16, side=32, dense_train=8, workers=1)
SMALL = {"side": 32, "descriptor_size": 16, "cosplace_epochs": 1, "netvlad_epochs": 1, "refiner_epochs": 1,
         "study_epochs": 1, "cosplace_iterations": 3, "threads": 1}


@pytest.mark.parametrize("argv, message", [
    (["--rows", "cosplace-alexnet-synthetic-depthseg"], "unknown row(s) cosplace-alexnet-synthetic-depthseg; known: "
                                                        "netvlad-vgg16-synthetic-depthseg, "),
    (["--parts", "table,figures"], "--parts 'table,figures': known parts are table, study"),
    (["--side", "0"], "--side must be >= 1"),
])
def test_bad_flags_are_one_line(argv, message):
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "table.py"), *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_every_row_is_chosen_by_name_trains_and_prints():
    """--rows picks rows by name in the order given ('' = all); each row's settings are a training run its family
    accepts, on maps the table makes; each prints in the table's shape, one line per row."""
    from vprlib.train.config import train_config

    names = [row.name for row in reversed(table.ROWS)]
    assert table.TableConfig(rows=",".join(names)).row_list == tuple(reversed(table.ROWS))
    assert table.TableConfig().row_list == table.ROWS
    config = table.TableConfig(threads=1)
    for row in table.ROWS:
        assert row.maps in (*table.EXTRACTED, "ground-truth"), row
        settings = ({**recipe.COSPLACE, "backbone": row.backbone} if row.method == "cosplace" else table.NETVLAD)
        train_config(row.method, "maps", "model", input=row.input, side=config.side, **settings)  # raises if not
    records = [{**asdict(row), "name": row.name, "recall@1": 0.25, "recall@5": 0.5, "recall@10": 0.75, "queries": 64,
                "epochs": 16, "best_epoch": 9} for row in table.ROWS]
    rows = table.format_table(records, config).splitlines()[3:]
    assert len(rows) == len(table.ROWS) and all(line.endswith("25.0%     50.0%     75.0%       9 / 16")
                                                for line in rows), rows


def test_same_look_and_first_correct(tmp_path):
    manifest = pa.table({"image_id": ["d", "q1", "q2", "e", "r1"], "split": ["database", "query", "query",
                                                                           "database", "query"],
                         "place_id": [0, 0, 0, 1, 1], "time_of_day": ["noon", "noon", "dusk", "dawn", "dawn"],
                         "season": ["summer", "summer", "summer", "winter", "autumn"]})
    assert table.same_look(manifest) == {"q1": True, "q2": False, "r1": False}
    pq.write_table(pa.table({"image_id": ["q1", "q2"], "first_correct_rank": pa.array([1, None], pa.int32())}),
                   tmp_path / "results.parquet")
    assert table.first_correct(str(tmp_path / "results.parquet")) == {"q1": True, "q2": False}


@pytest.mark.long
def test_one_row_end_to_end(ray_session, tmp_path, capsys):
    """The ceiling row (the city's own maps: no extraction) trains, indexes, evaluates and is printed and recorded."""
    config = table.TableConfig(output=str(tmp_path), rows="cosplace-resnet18-ground-truth-depthseg", **SMALL)
    records = table.run_table(config, SMALL_CITY)
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
    again = table.run_table(config, SMALL_CITY)  # a second run only evaluates again: nothing retrains
    assert [r["recall@1"] for r in again] == [r["recall@1"] for r in records]
    assert (model / "last.pt").stat().st_mtime_ns == trained_at and not (model / "_ray").exists()


@pytest.mark.long
def test_study_end_to_end(ray_session, tmp_path, capsys):
    """Both retrievers (maps, photos) on both study cities: every condition has its queries and a Recall@1."""
    config = table.TableConfig(output=str(tmp_path), parts="study", **SMALL)
    records = table.run_study(config, SMALL_CITY)
    assert {(r["crowd"], r["look"], r["retriever"]) for r in records} == {
        (c, look, m) for c in table.CROWDS for look in ("same look", "other look") for m in ("depth+seg", "rgb")}
    assert all(r["queries"] == 64 and 0.0 <= r["recall@1"] <= 1.0 for r in records)
    assert [r["dynamic_fraction"] for r in records if r["crowd"] == "no crowds"] == [0.0] * 4
    assert min(r["dynamic_fraction"] for r in records if r["crowd"] == "crowds") > 0.02
    assert "study: Recall@1 within 25 m" in capsys.readouterr().out
