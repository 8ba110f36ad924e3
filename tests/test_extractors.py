"""Segmenter, depth estimator, dynamic masks and the model zoo, all on random weights (offline)."""

import pytest
import torch

from vprlib.models import zoo
from vprlib.models.dpt import DepthEstimator, build_dpt, normalize_depth
from vprlib.models.dynamic import DYNAMIC_ADE20K, dilate_mask, dynamic_mask
from vprlib.models.segformer import NUM_ADE20K_CLASSES, Segmenter, build_segformer


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return zoo.load_segmenter("tiny")


@pytest.fixture(scope="module")
def depth() -> DepthEstimator:
    return zoo.load_depth("tiny")


@torch.no_grad()
def test_segmenter_shapes_and_values(segmenter, images):
    logits = segmenter(images)
    side = segmenter.input_size // 4
    assert logits.shape == (2, NUM_ADE20K_CLASSES, side, side) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    labels = segmenter.labels(images)
    assert labels.shape == (2, 50, 70) and labels.dtype == torch.int64
    assert labels.min() >= 0 and labels.max() < NUM_ADE20K_CLASSES
    probs = segmenter.probabilities(images, size=(32, 24))
    assert probs.shape == (2, NUM_ADE20K_CLASSES, 32, 24)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 32, 24))
    assert torch.equal(segmenter.labels(images, size=(32, 24)), probs.argmax(dim=1))


@torch.no_grad()
def test_segmenter_normalises_like_the_processor(segmenter):
    gray = torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)
    expected = (128 / 255 - torch.tensor(segmenter.config.mean)) / torch.tensor(segmenter.config.std)
    torch.testing.assert_close(segmenter.preprocess(gray)[0, :, 0, 0], expected)
    torch.testing.assert_close(segmenter.preprocess(gray.float() / 255), segmenter.preprocess(gray))


def test_segmenter_is_seeded():
    a, b = build_segformer("tiny", seed=3), build_segformer("tiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@torch.no_grad()
def test_depth_shapes_and_values(depth, images):
    d = depth(images)
    assert d.shape == (2, 50, 70) and d.dtype == torch.float32
    assert torch.isfinite(d).all()
    raw = depth.run(images).predicted_depth[:, None]
    expected = torch.nn.functional.interpolate(raw, size=(32, 24), mode="bicubic", align_corners=False)[:, 0]
    torch.testing.assert_close(depth(images, size=(32, 24)), expected)


def test_normalize_depth_is_scale_and_shift_invariant():
    d = torch.rand(3, 8, 9, generator=torch.Generator().manual_seed(1))
    n = normalize_depth(d)
    assert n.shape == d.shape
    torch.testing.assert_close(n.flatten(1).amin(1), torch.zeros(3))
    torch.testing.assert_close(n.flatten(1).amax(1), torch.ones(3))
    torch.testing.assert_close(normalize_depth(5.0 * d + 2.0), n)
    assert torch.equal(normalize_depth(torch.full((1, 4, 4), 7.0)), torch.zeros(1, 4, 4))


def test_dynamic_mask_marks_only_dynamic_classes():
    labels = torch.tensor([[[12, 1, 20], [2, 127, 3]]])  # person, wall, car / building, bicycle, floor
    expected = torch.tensor([[[True, False, True], [False, True, False]]])
    assert torch.equal(dynamic_mask(labels), expected)
    assert torch.equal(dynamic_mask(labels, classes=(1,)), labels == 1)
    assert set(DYNAMIC_ADE20K) == {12, 20, 76, 80, 83, 90, 102, 103, 116, 126, 127}


def test_dynamic_mask_dilation_grows_a_square():
    labels = torch.zeros(1, 9, 9, dtype=torch.int64)
    labels[0, 4, 4] = 80  # bus
    grown = dynamic_mask(labels, dilation=2)
    expected = torch.zeros(1, 9, 9, dtype=torch.bool)
    expected[0, 2:7, 2:7] = True
    assert torch.equal(grown, expected)
    assert dynamic_mask(labels).sum() == 1
    with pytest.raises(ValueError):
        dilate_mask(grown, -1)


def test_zoo_loads_hf_folders_from_a_directory(tmp_path, images):
    seg, dpt = build_segformer("tiny", seed=1), build_dpt("tiny", seed=1)
    seg.save_pretrained(tmp_path / "segformer")
    dpt.save_pretrained(tmp_path / "dpt")
    loaded_seg, loaded_depth = zoo.load_segmenter(str(tmp_path)), zoo.load_depth(str(tmp_path))
    assert not loaded_seg.training and not loaded_depth.training
    with torch.no_grad():
        torch.testing.assert_close(loaded_seg(images), Segmenter(seg.eval(), loaded_seg.config)(images))
        torch.testing.assert_close(loaded_depth(images), DepthEstimator(dpt.eval(), loaded_depth.config)(images))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("build", "published"),
    [(lambda: build_segformer("b5"), 84.7e6), (lambda: build_dpt("hybrid"), 123e6)],
    ids=["segformer-b5", "dpt-hybrid"],
)
def test_paper_architectures_have_published_sizes(build, published):
    count = n_params(build())
    print(f"parameters: {count:,}")
    assert abs(count - published) / published < 0.01
