"""Query sequences of a VPR-format benchmark (vprlib.data.vpr_sequences): each query folder's frames in time order,
cut into consecutive sequences; the database left single."""

import numpy as np
import pytest
from PIL import Image

from vprlib.data.manifest import ManifestError
from vprlib.data.vpr import vpr_manifest


def _name(east: float, timestamp: str = "") -> str:
    fields = [f"{east:.2f}", "4477300.00", "17", "T", "40.44", "-79.99", "", "", "", "", "", "", timestamp, ""]
    return "@" + "@".join(fields) + "@.jpg"


def _write(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


def test_query_folders_become_sequences_in_time_order(tmp_path):
    stamps = {585005.0: "30", 585001.0: "4", 585003.0: "10", 585002.0: "9", 585004.0: "20"}  # names not in time order
    for n, (east, stamp) in enumerate(stamps.items()):
        _write(tmp_path / "images/test/queries" / _name(east, stamp), n)
    for n, east in enumerate((585100.0, 585200.0, 585300.0)):  # no timestamps: name order
        _write(tmp_path / "images/test/queries_night" / _name(east), 10 + n)
    _write(tmp_path / "images/test/database" / _name(585000.0), 20)
    rows = {r["utm_east"]: r for r in vpr_manifest(str(tmp_path), sequence_frames=2).to_pylist()}
    day = [rows[e] for e in (585001.0, 585002.0, 585003.0, 585004.0, 585005.0)]  # by timestamp: 4, 9, 10, 20, 30
    assert [r["sequence_id"] for r in day] == ["images/test/queries#0"] * 2 + ["images/test/queries#1"] * 2 + [
        "images/test/queries#2"]
    assert [r["frame_index"] for r in day] == [0, 1, 0, 1, 0]
    night = [rows[e] for e in (585100.0, 585200.0, 585300.0)]
    assert [(r["sequence_id"], r["frame_index"]) for r in night] == [
        ("images/test/queries_night#0", 0), ("images/test/queries_night#0", 1), ("images/test/queries_night#1", 0)]
    assert rows[585000.0]["sequence_id"] is None and rows[585000.0]["frame_index"] is None
    assert "sequence_id" not in vpr_manifest(str(tmp_path)).column_names
    with pytest.raises(ManifestError, match="sequence frames must be >= 1"):
        vpr_manifest(str(tmp_path), sequence_frames=-1)
