"""evaluate --sequences on a tiny synthetic city's walks: the figures equal a brute force over the written answers and
the index's rows, one frame is the single-photo evaluation, and bad queries are one line."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.demo.city import walks as wk
from vprlib.index.search import read_embeddings
from vprlib.maps import read_spec
from vprlib.models.cosplace import CosPlace, CosPlaceConfig
from vprlib.models.encodings import EncodingConfig

SIDE = 32
CITY = CityConfig(places=12, side=SIDE, workers=1)
RADIUS = 12.0


@pytest.fixture(scope="module")
def setup(ray_session, tmp_path_factory):
    """The city's ground-truth maps indexed by an untrained small CosPlace, and ground-truth maps of its walks."""
    from vprlib.index.build import IndexConfig, run_index

    root = tmp_path_factory.mktemp("city")
    generate_city(CITY, str(root))
    walks = str(root / "walks")
    wk.generate_walks(CITY, wk.WalkConfig(frames=4, walks_per_place=2, workers=1), walks)
    torch.manual_seed(0)
    net = CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=32, encoding=EncodingConfig(num_classes=4)))
    model = str(root / "best.pt")
    maps = os.path.join(root, GT_MAPS)
    net.save(model, map_spec=read_spec(maps), input_side=SIDE)
    index = str(root / "index")
    run_index(IndexConfig(maps=maps, model=model, output=index))
    return index, os.path.join(walks, GT_MAPS), str(root / "eval"), walks


@pytest.fixture(scope="module")
def evaluated(setup):
    from vprlib.index.sequence_eval import SequenceEvalConfig, run_sequence_evaluate

    index, queries, output, _ = setup
    config = SequenceEvalConfig(index=index, queries=queries, output=output, lengths="1,2,4", recall="1,3",
                                radius_m=RADIUS, k=10)
    return run_sequence_evaluate(config), output


def test_figures_equal_a_brute_force_over_the_answers(setup, evaluated):
    index, _, _, walks = setup
    summary, output = evaluated
    answers = pq.read_table(os.path.join(output, "sequences.parquet")).to_pylist()
    db = read_embeddings(index, columns=["image_id", "utm_east", "utm_north"]).to_pylist()
    where = {r["image_id"]: np.array([r["utm_east"], r["utm_north"]]) for r in db}
    frames = pq.read_table(os.path.join(walks, "manifest.parquet")).to_pylist()
    walk = {}
    for r in sorted(frames, key=lambda r: (r["sequence_id"], r["frame_index"])):
        walk.setdefault(r["sequence_id"], []).append(np.array([r["utm_east"], r["utm_north"]]))
    assert summary["sequences"] == len(walk) == 12
    for method in ("paths", "mean"):
        for length in (1, 2, 4):
            rows = [a for a in answers if a["method"] == method and a["length"] == length]
            assert len(rows) == len(walk)
            for protocol in ("loose", "strict"):
                for n in (1, 3):
                    right = 0
                    for a in rows:
                        places = walk[a["sequence_id"]][-length:]
                        places = places[-1:] if protocol == "strict" else places
                        right += any(np.linalg.norm(where[i] - p) <= RADIUS for i in a["top_ids"][:n] for p in places)
                    got = summary["figures"][method][str(length)][protocol][f"recall@{n}"]
                    assert got == pytest.approx(right / len(rows)), (method, length, protocol, n)
    single = summary["figures"]["paths"]["1"]
    assert single == summary["figures"]["mean"]["1"]  # one frame: both are its own retrieval
    assert single["loose"] == single["strict"]


def test_one_frame_is_the_photo_evaluation(setup, evaluated):
    """Length 1 answers each walk's last frame as evaluate answers that photo."""
    from vprlib.index.evaluate import EvaluateConfig, run_evaluate

    index, queries, output, _ = setup
    photo = run_evaluate(EvaluateConfig(index=index, queries=queries, output=output + "-photos", recall="1,3",
                                        radius_m=RADIUS, rerank=0))  # the sequences search without re-ranking
    results = pq.read_table(os.path.join(output + "-photos", "results.parquet")).to_pylist()
    top = {r["image_id"]: r["top_ids"][:3] for r in results}
    answers = pq.read_table(os.path.join(output, "sequences.parquet")).to_pylist()
    for a in answers:
        if a["length"] == 1:
            assert a["top_ids"] == top[wk.image_id(a["sequence_id"], 3)]
    assert photo["queries"] == 48


def test_photos_without_sequences_are_one_line(setup):
    from vprlib.index.sequence_eval import SequenceEvalConfig, run_sequence_evaluate

    index, _, output, _ = setup
    maps = os.path.join(os.path.dirname(index), GT_MAPS)
    with pytest.raises(ValueError, match="no sequence_id or frame_index column"):
        run_sequence_evaluate(SequenceEvalConfig(index=index, queries=maps, output=output + "-bad"))
    with pytest.raises(ValueError, match="lengths must list integers >= 1"):
        SequenceEvalConfig(index=index, queries=maps, output=output, lengths="0,3")
