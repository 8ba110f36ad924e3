"""CosPlace classes and groups: the partition, the dropped small classes and the group numbering of CosPlace's
training set (its `initialize` over the sorted image list), and the one departure (headings wrapped)."""

from collections import Counter

import numpy as np
import pytest

from vprlib.models.cosplace import MIN_IMAGES_PER_CLASS, cosplace_groups


def cosplace_reference(points, m, alpha, n, l, min_images_per_class):  # noqa: E741 - CosPlace's names
    """CosPlace's algorithm in plain Python over (east, north, heading) rows in its image order: the class ids of
    each group in group-number order, and the class id of each image.

    Class id: (int(east // M * M), int(north // M * M), int(heading // alpha * alpha)); group id: each of those
    `% (M * N) // M` (heading: `% (alpha * L) // alpha`). Classes with fewer than min_images_per_class images are
    dropped; the groups of the remaining classes are numbered in the order their first image comes."""
    ids = []
    for east, north, heading in points:
        e, no, h = int(east // m * m), int(north // m * m), int(heading // alpha * alpha)
        ids.append(((e, no, h), (e % (m * n) // m, no % (m * n) // m, h % (alpha * l) // alpha)))
    sizes = Counter(class_id for class_id, _ in ids)
    groups: dict[tuple, set] = {}
    for class_id, group_id in ids:
        if sizes[class_id] >= min_images_per_class:
            groups.setdefault(group_id, set()).add(class_id)
    return list(groups.values()), [class_id for class_id, _ in ids]


def random_street(seed: int, m: float, alpha: float, count: int = 8000) -> np.ndarray:
    """UTM-like positions over 12 x 4 cells of M metres and headings in [0, 360), about half the classes under 10
    images, in shuffled order; a tenth of the values lie exactly on a cell or bin edge."""
    rng = np.random.default_rng(seed)
    east, north = 500_000 + rng.uniform(0, 12 * m, count), 4_980_000 + rng.uniform(0, 4 * m, count)
    heading = rng.uniform(0, 360, count)
    on_edges = rng.random(count) < 0.1
    east[on_edges], north[on_edges] = np.round(east[on_edges] / m) * m, np.round(north[on_edges] / m) * m
    heading[on_edges] = np.mod(np.round(heading[on_edges] / alpha) * alpha, 360.0)
    return np.stack([east, north, heading], axis=1)


@pytest.mark.parametrize(("m", "alpha"), [(10, 30), (7.5, 22.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_groups_and_classes_are_cosplace_s(seed, m, alpha):
    points = random_street(seed, m, alpha)
    expected_groups, class_ids = cosplace_reference(points.tolist(), m, alpha, 5, 2, MIN_IMAGES_PER_CLASS)
    classes, groups = cosplace_groups(*points.T, cell_m=m, heading_deg=alpha)

    sizes = Counter(class_ids)
    dropped = np.array([sizes[c] < MIN_IMAGES_PER_CLASS for c in class_ids])
    assert 0 < dropped.sum() < len(points)  # the case has both kinds
    assert np.array_equal(classes == -1, dropped) and np.array_equal(groups == -1, dropped)
    assert groups.max() + 1 == len(expected_groups)
    for number, expected in enumerate(expected_groups):  # group g holds CosPlace's group g's classes
        assert {class_ids[i] for i in np.flatnonzero(groups == number)} == expected
    kept = np.flatnonzero(~dropped)
    first_of_class = {}
    for i in kept:  # one number per class id, numbered by first image
        first_of_class.setdefault(class_ids[i], len(first_of_class))
    assert [first_of_class[class_ids[i]] for i in kept] == classes[kept].tolist()


def test_hand_built_case_numbers_groups_by_first_appearance_and_drops_small_classes():
    # M 10, alpha 30, N 5, L 2, at least 2 images per class. Class (east, north, heading) -> group:
    rows = [
        (12, 0, 45),  # 0: class (10, 0, 30) -> group (1, 0, 1), first kept image: group 0
        (3, 1, 10),  # 1: class (0, 0, 0) -> group (0, 0, 0): group 1
        (14, 5, 50),  # 2: class (10, 0, 30) again
        (55, 2, 0),  # 3: class (50, 0, 0) -> 50 % 50 // 10 = 0: group (0, 0, 0), same group as image 1
        (200, 300, 100),  # 4: class (200, 300, 90), its only image: dropped; its group (0, 0, 1) is not numbered
        (7, 8, 20),  # 5: class (0, 0, 0)
        (52, 9, 29),  # 6: class (50, 0, 0)
        (30, 20, 70),  # 7: class (30, 20, 60) -> group (3, 2, 0): group 2
        (39.9, 29.9, 89.9),  # 8: class (30, 20, 60)
    ]
    classes, groups = cosplace_groups(*np.array(rows, dtype=float).T, min_images_per_class=2)
    assert groups.tolist() == [0, 1, 0, 1, -1, 1, 1, 2, 2]  # a formula would give (1,0,1) -> 11, (3,2,0) -> 34
    assert classes.tolist() == [0, 1, 0, 2, -1, 1, 2, 3, 3]
    groups_of_cosplace, _ = cosplace_reference(rows, 10, 30, 5, 2, 2)
    assert groups_of_cosplace == [{(10, 0, 30)}, {(0, 0, 0), (50, 0, 0)}, {(30, 20, 60)}]


def test_classes_under_ten_images_are_dropped_by_default():
    east = np.array([5.0] * 9 + [25.0] * 10)
    classes, groups = cosplace_groups(east, np.zeros(19), np.zeros(19))
    assert MIN_IMAGES_PER_CLASS == 10
    assert classes.tolist() == [-1] * 9 + [0] * 10
    assert groups.tolist() == [-1] * 9 + [0] * 10


def test_headings_outside_0_360_are_wrapped():
    heading = np.array([0.0, 360.0, -1e-20, 720.0, -10.0, 350.0, 709.0, 29.9])
    classes, groups = cosplace_groups(np.zeros(8), np.zeros(8), heading, min_images_per_class=1)
    assert classes.tolist() == [0, 0, 0, 0, 1, 1, 1, 0]  # 0, 360, -0 and 720 face the same way, as do -10 and 350
    assert groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 0]


def test_inputs_that_cannot_be_placed_are_refused():
    with pytest.raises(ValueError, match="one length"):
        cosplace_groups(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        cosplace_groups(np.zeros(2), np.zeros(2), np.array([0.0, np.nan]))
