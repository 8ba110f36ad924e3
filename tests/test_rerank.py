"""Geometric re-ranking on maps rendered from the synthetic city: the query's own place seen from a slightly other
heading beats a place whose descriptor is closer, and only the order of the first k candidates ever changes."""

import numpy as np
import pytest

from vprlib.data.holicity import holicity_to_refined
from vprlib.demo.city import Camera, CityConfig, build_city, render
from vprlib.index.rerank import agreement, rerank_hits, thumbnails
from vprlib.index.search import Hits

HEADING = 90.0


@pytest.fixture(scope="module")
def city():
    return build_city(CityConfig(places=12, seed=0))


def _labels(city, xy, heading: float) -> np.ndarray:
    """The refined4 labels of a 64 px capture at (x, y), eye level, cut to the re-ranking's thumbnail."""
    maps = render(city, Camera((float(xy[0]), float(xy[1]), 2.2), heading), side=64)
    return thumbnails(holicity_to_refined(maps["seg"]))


def test_the_own_place_from_a_slightly_other_heading_beats_a_lookalike_with_a_closer_descriptor(city):
    query = _labels(city, city.places[0], HEADING)
    own = _labels(city, city.places[0] + np.array([1.0, 0.5]), HEADING + 6.0)  # a step aside, turned 6 degrees
    others = [_labels(city, p, HEADING) for p in city.places[1:]]
    lookalike = int(np.argmax(agreement(query, np.stack(others))))  # the other place whose maps agree best
    rest = [o for i, o in enumerate(others) if i != lookalike][:8]
    # Search order: the lookalike first (closest descriptor), the own place second, eight other places after.
    candidates = np.stack([others[lookalike], own, *rest])
    ids = np.array([["lookalike", "own", *(f"other{i}" for i in range(8))]], dtype=object)
    scores = np.array([[0.95, 0.90, 0.89, 0.88, 0.87, 0.86, 0.85, 0.84, 0.83, 0.82]], dtype=np.float32)
    agree = agreement(query, candidates)[None]
    assert agree[0, 1] > agree[0, 0]  # the warps absorb the turn and the step
    reranked, combined = rerank_hits(Hits(scores, ids, {}), agree, k=10)
    assert reranked.ids[0, 0] == "own" and list(reranked.ids[0, :3]).index("lookalike") > 0
    assert combined[0, 0] == np.nanmax(combined[0])


def test_reranking_changes_only_the_order_of_the_first_k():
    rng = np.random.default_rng(0)
    queries, depth, k = 6, 12, 5
    ids = np.array([[f"q{q}-{r}" for r in range(depth)] for q in range(queries)], dtype=object)
    scores = -np.sort(-rng.random((queries, depth)).astype(np.float32), axis=1)
    ids[1, 3:] = None  # a query with three candidates only: pads stay last
    scores[1, 3:] = -np.inf
    heading = np.array([[f"h-{i}" for i in row] for row in ids], dtype=object)
    hits = Hits(scores, ids, {"heading": heading})
    agree = rng.random((queries, k))
    reranked, combined = rerank_hits(hits, agree, k)
    assert any(list(reranked.ids[q, :k]) != list(ids[q, :k]) for q in range(queries))  # the order did change
    for q in range(queries):
        assert sorted(reranked.ids[q, :k], key=str) == sorted(ids[q, :k], key=str)  # the same k, only reordered
        assert list(reranked.ids[q, k:]) == list(ids[q, k:])  # what lies beyond k is untouched
        assert all(h == f"h-{i}" for h, i in zip(reranked.columns["heading"][q], reranked.ids[q], strict=True))
        moved = {i: s for i, s in zip(ids[q], scores[q], strict=True)}
        assert all(moved[i] == s for i, s in zip(reranked.ids[q], reranked.scores[q], strict=True))
    assert list(reranked.ids[1, 3:]) == [None] * (depth - 3) and np.isnan(combined[1, 3:]).all()
    real = combined[~np.isnan(combined)]
    assert len(real) == (queries - 1) * k + 3
