"""Sequence localisation (vprlib.sequences): the path matcher finds a planted walk, sequence Recall@N equals a
brute-force count, sparse hits become a dense similarity matrix."""

import numpy as np
import pytest

from vprlib.sequences import PathSearch, group_frames, local_similarity, match_paths, sequence_recall


def planted(seed: int, frames: int = 5, size: int = 200, speed: int = 2):
    """A 1-D database (positions 0..size-1 m along the east axis) of noise below 0.5, each frame's single best item a
    distractor at 0.9 somewhere else, and a walk east at `speed` m per frame whose items score 0.7 only."""
    rng = np.random.default_rng(seed)
    sim = rng.uniform(0.0, 0.5, (frames, size)).astype(np.float32)
    start = int(rng.integers(0, size - speed * frames))
    path = start + speed * np.arange(frames)
    sim[np.arange(frames), path] = 0.7
    distractors = rng.choice(np.setdiff1d(np.arange(size), path), frames, replace=False)
    sim[np.arange(frames), distractors] = 0.9
    positions = np.stack([np.arange(size, dtype=float), np.zeros(size)], axis=1)
    return sim, positions, path, distractors


@pytest.mark.parametrize("seed", range(4))
def test_matcher_finds_a_planted_path(seed):
    sim, positions, path, distractors = planted(seed)
    assert sim[-1].argmax() == distractors[-1]  # the last frame alone is wrong
    match = match_paths(sim, positions, PathSearch(speeds=(1.0, 2.0, 3.0), directions=4, tolerance_m=0.4))
    assert match.order[0] == path[-1]
    assert match.speed[path[-1]] == 2.0 and match.heading[path[-1]] == 90.0  # east
    assert match.score[path[-1]] == pytest.approx(0.7)


def test_matcher_walks_the_plane_and_honours_ends():
    """A walk north on a 2-D grid, found among the ends given; a path off the grid counts the floor."""
    xs, ys = np.meshgrid(np.arange(0, 50, 5.0), np.arange(0, 50, 5.0))
    positions = np.stack([xs.ravel(), ys.ravel()], axis=1)
    at = {(x, y): i for i, (x, y) in enumerate(map(tuple, positions))}
    sim = np.full((3, len(positions)), 0.1, np.float32)
    walk = [at[(20.0, 10.0)], at[(20.0, 15.0)], at[(20.0, 20.0)]]
    sim[[0, 1, 2], walk] = 1.0
    sim[2, at[(45.0, 45.0)]] = 1.0  # as good for the last frame alone
    match = match_paths(sim, positions, PathSearch(speeds=(5.0,), directions=4, tolerance_m=1.0),
                        ends=[at[(45.0, 45.0)], walk[-1]], floor=0.0)
    assert match.order[0] == 1 and match.heading[1] == 0.0  # north
    assert match.score[1] == pytest.approx(1.0)
    assert match.score[0] == pytest.approx((0.1 + 0.1 + 1.0) / 3)  # the best path to (45, 45) meets only noise


def test_matcher_refuses_bad_shapes():
    with pytest.raises(ValueError, match="positions must be"):
        match_paths(np.zeros((2, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="ends must index"):
        match_paths(np.zeros((2, 3)), np.zeros((3, 2)), ends=[3])
    with pytest.raises(ValueError, match="speeds"):
        PathSearch(speeds=())


def brute_force_recall(pred, frames, ns, radius, strict):
    recalls = {}
    for n in ns:
        right = 0
        for q in range(len(pred)):
            places = [f for f in frames[q] if np.isfinite(f).all()]
            places = places[-1:] if strict else places
            right += any(np.isfinite(p).all() and any(np.hypot(*(p - f)) <= radius for f in places)
                         for p in pred[q][:n])
        recalls[n] = right / len(pred)
    return recalls


@pytest.mark.parametrize("strict", [False, True])
def test_sequence_recall_equals_brute_force(strict):
    rng = np.random.default_rng(3)
    pred = rng.uniform(0, 200, (60, 10, 2))
    frames = rng.uniform(0, 200, (60, 5, 2))
    frames[:, 1:] = frames[:, :1] + np.cumsum(rng.uniform(-15, 15, (60, 4, 2)), axis=1)  # walks
    pred[rng.random((60, 10)) < 0.1] = np.nan  # padding
    frames[:10, 3:] = np.nan  # shorter sequences: their last frame is frame 2
    pred[:30, 4] = frames[:30, 0] + 5.0  # some near their first frame only
    recall, first = sequence_recall(pred, frames, (1, 5, 10), 25.0, "strict" if strict else "loose")
    assert recall == pytest.approx(brute_force_recall(pred, frames, (1, 5, 10), 25.0, strict))
    assert 0 < recall[1] < recall[10] < 1
    assert all(recall[n] == np.mean((first >= 1) & (first <= n)) for n in (1, 5, 10))


def test_strict_recall_reads_the_last_frame():
    frames = np.array([[[0.0, 0.0], [0.0, 10.0], [0.0, 50.0]]])
    near_first = np.array([[[0.0, -20.0]]])
    assert sequence_recall(near_first, frames, (1,), 25.0, "loose")[0] == {1: 1.0}
    assert sequence_recall(near_first, frames, (1,), 25.0, "strict")[0] == {1: 0.0}
    assert sequence_recall(np.array([[[0.0, 60.0]]]), frames, (1,), 25.0, "strict")[0] == {1: 1.0}
    with pytest.raises(ValueError, match="unknown protocol"):
        sequence_recall(near_first, frames, (1,), 25.0, "any")


def test_local_similarity_fills_with_each_frames_kth_score():
    ids = np.array([["a", "b", None], ["c", "a", "d"]], dtype=object)
    scores = np.array([[0.9, 0.8, -np.inf], [0.7, 0.6, 0.5]], np.float32)
    items, dense, floor = local_similarity(ids, scores)
    assert items.tolist() == ["a", "b", "c", "d"]
    np.testing.assert_allclose(floor, [0.8, 0.5])
    np.testing.assert_allclose(dense, [[0.9, 0.8, 0.8, 0.8], [0.6, 0.5, 0.7, 0.5]])


def test_group_frames_orders_by_frame_and_refuses_repeats():
    assert group_frames(["s1", "s0", "s1", "s0"], [1, 0, 0, 1]) == {"s1": [2, 0], "s0": [1, 3]}
    with pytest.raises(ValueError, match="repeats a frame index"):
        group_frames(["s", "s"], [0, 0])


def test_one_frame_is_plain_retrieval():
    sim, positions, _, _ = planted(5, frames=1)
    sim[0, [3, 7]] = sim[0].max() + 1.0  # a tie: broken by the lower index, as the index breaks it by image_id
    match = match_paths(sim, positions)
    np.testing.assert_array_equal(match.order, np.lexsort((np.arange(sim.shape[1]), -sim[0])))
