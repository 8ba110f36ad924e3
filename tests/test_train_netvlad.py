"""NetVLAD training: triplet mining (positives nearest in descriptor within 10 m, hardest negatives beyond 25 m), the
epoch's cache, usable queries, and the job end to end on a tiny dense synthetic city."""

import json
import os

import numpy as np
import pytest
import torch

from vprlib.demo.city import GT_MAPS, CityConfig, generate_city
from vprlib.models.netvlad import NetVLAD
from vprlib.models.zoo import load_retriever
from vprlib.train.config import train_config
from vprlib.train.data import TrainDataError
from vprlib.train.loop import read_metrics
from vprlib.train.netvlad import cache_rows, count_within, mine, usable_queries

# VGG16 at 32 px (2 x 2 conv5 cells), 4 clusters, 2 negatives: about 10 s an epoch for 64 triplets on this CPU.
SMALL = {"clusters": 4, "negatives": 2, "batch_size": 4, "epochs": 2}


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_mining_takes_the_closest_positive_in_descriptor_and_the_hardest_negatives_beyond_25_m():
    query = _unit([[1.0, 0.0, 0.0]])
    # cache rows: (index, metres east of the query, descriptor)
    cache = [
        (7, 0.0, [1.0, 0.0, 0.0]),   # the query itself: never its own positive
        (1, 3.0, [0.0, 1.0, 0.0]),   # positive, geographically closest but far in descriptor
        (2, 9.0, [1.0, 0.3, 0.0]),   # positive nearest in descriptor: the one chosen
        (3, 15.0, [1.0, 0.01, 0.0]),  # between 10 and 25 m: neither, however similar
        (4, 24.0, [1.0, 0.02, 0.0]),  # within 25 m: never a negative
        (5, 30.0, [1.0, 0.5, 0.0]),  # negatives, by similarity: 5, 8, 6
        (6, 40.0, [0.0, 0.0, 1.0]),
        (8, 90.0, [1.0, 0.0, 0.9]),
    ]
    index = np.array([c[0] for c in cache])
    xy = np.array([[c[1], 0.0] for c in cache])
    desc = _unit([c[2] for c in cache])
    positive, negatives = mine(query, np.zeros((1, 2)), np.array([7]), desc, xy, index, 10.0, 25.0, 2)
    assert index[positive].tolist() == [2]
    assert index[negatives].tolist() == [[5, 8]]
    # more negatives than the cache has: the hardest repeat; a query with no positive in the cache gets none
    positive, negatives = mine(np.concatenate([query, query]), np.array([[0.0, 0.0], [500.0, 0.0]]),
                               np.array([7, 9]), desc, xy, index, 10.0, 25.0, 4)
    assert index[negatives[0]].tolist() == [5, 8, 6, 5]
    assert positive[1] == -1 and (negatives[1] == -1).all()


def test_epoch_queries_are_drawn_afresh_each_epoch():
    from vprlib.train.netvlad import epoch_queries

    queries = np.arange(10, 110)
    first, second = epoch_queries(queries, 20, seed=1), epoch_queries(queries, 20, seed=2)
    assert len(set(first)) == 20 and set(first) <= set(queries) and set(first) != set(second)
    assert np.array_equal(first, epoch_queries(queries, 20, seed=1))
    assert epoch_queries(queries, 0, seed=1) is None and epoch_queries(queries, 100, seed=1) is None


def test_count_within_matches_brute_force():
    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.uniform(0, 120, (400, 2)), np.round(rng.uniform(0, 120, (100, 2)) / 10) * 10])
    metres = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    for radius in (10.0, 25.0):
        assert (count_within(xy + 5e5, radius, chunk=64) == (metres <= radius).sum(1)).all()


def test_usable_queries_need_a_positive_and_a_negative():
    xy = np.array([[0.0, 0.0], [4.0, 0.0], [100.0, 0.0], [100.0, 11.0], [112.0, 0.0]])
    # 0 and 1: a positive each, and negatives; 2: 3 and 4 lie beyond 10 m but within 25 m, so no positive
    assert usable_queries(xy, 10.0, 25.0).tolist() == [True, True, False, False, False]
    # one place alone: positives but no negative
    assert not usable_queries(np.array([[0.0, 0.0], [1.0, 0.0], [20.0, 0.0]]), 10.0, 25.0).any()


def test_cache_holds_a_positive_of_each_image_when_the_pool_is_larger():
    # 300 places 100 m apart, two images each: a random draw of 20 would hold almost no pair
    places = np.arange(300)[:, None] * np.array([100.0, 0.0])
    xy = np.repeat(places, 2, axis=0) + np.tile([[0.0, 0.0], [1.0, 0.0]], (300, 1))
    rows = cache_rows(xy, np.arange(len(xy)), 20, 10.0, seed=3)
    assert len(rows) == 20 and len(np.unique(rows)) == 20
    assert (np.bincount(rows // 2, minlength=300)[np.unique(rows // 2)] == 2).all()
    assert not np.array_equal(rows, cache_rows(xy, np.arange(len(xy)), 20, 10.0, seed=4))  # drawn each epoch
    assert cache_rows(xy[:12], np.arange(12), 20, 10.0, seed=3).tolist() == list(range(12))  # small: all


# ------------------------------------------------------------------------------------------- Ray jobs
@pytest.fixture(scope="module")
def city(tmp_path_factory) -> str:
    # dense_train=2, not 8: each training image is a query costing 4 VGG16 passes forward and back, and 80 of them
    # (16 a place) train in about 10 s an epoch; 320 would take 40.
    root = tmp_path_factory.mktemp("dense-city")
    generate_city(CityConfig(places=12, side=32, dense_train=2, workers=1), str(root))
    return str(root)


@pytest.mark.slow
def test_netvlad_trains_from_k_means_clusters_and_keeps_the_best(ray_session, city, tmp_path, capfd):
    from vprlib.train import run_training

    output = tmp_path / "netvlad"
    summary = run_training(train_config("netvlad", os.path.join(city, GT_MAPS), str(output),
                                        **{**SMALL, "queries_per_epoch": 40}))
    printed = capfd.readouterr()
    assert "netvlad on 64 queries of 80 training images (16 dropped" in printed.out
    assert "random weights (no --imagenet)" in printed.out
    metrics = read_metrics(str(output)).to_pylist()
    assert [row["epoch"] for row in metrics] == [0, 1, 2]  # 0: the untrained network, clusters from k-means
    assert metrics[0]["loss"] is None and all(row["loss"] > 0 for row in metrics[1:])
    assert all(0.0 <= row["recall@1"] <= row["recall@5"] <= 1.0 for row in metrics)
    drawn = [(row["triplets"], row["skipped"], row["cache"]) for row in metrics[1:]]
    assert drawn == [(40, 0, 80)] * 2  # 40 of the 64 queries each epoch
    assert [row["lr"] for row in metrics] == [1e-4] * 3
    assert summary["untrained"] == metrics[0]["recall@1"]
    model = load_retriever(output / "best.pt")
    assert isinstance(model, NetVLAD) and model.config.num_clusters == 4 and model.descriptor_size == 4 * 512
    assert float(model.pool.alpha) > 0  # set by the k-means initialisation only
    last = torch.load(output / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and float(last["model"]["pool.alpha"]) == float(model.pool.alpha)
    assert last["scheduler"]["last_epoch"] == 2
    record = json.loads((output / "model.json").read_text())
    assert record["family"] == "netvlad" and record["clusters"] == 4 and record["encoding"]["num_classes"] == 4


@pytest.mark.slow
def test_maps_without_a_usable_query_are_one_line_before_any_worker(ray_session, city, tmp_path):
    from vprlib.train import run_training

    output = tmp_path / "none"
    # the val split is one place: positives, but nothing beyond 25 m
    with pytest.raises(TrainDataError) as error:
        run_training(train_config("netvlad", os.path.join(city, GT_MAPS), str(output), train_split="val", **SMALL))
    assert "no image of split 'val' (16 images) has another within --positive-m 10 m and one beyond --negative-m " \
           "25 m" in str(error.value)
    assert "\n" not in str(error.value) and not (output / "config.json").exists()
