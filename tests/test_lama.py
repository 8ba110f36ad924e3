"""Big-LaMa: published key layout and size, strict checkpoint loading, TorchScript loading, inference contract."""

import argparse

import numpy as np
import pytest
import torch

from vprlib.models import zoo
from vprlib.models.lama import LAMA_ARCHS, LamaGenerator, build_lama, load_lama, pad_symmetric

TINY = LAMA_ARCHS["tiny"]


def bn(prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def expected_big_lama_keys() -> set[str]:
    """The generator keys of LaMa's big-lama best.ckpt (without `generator.`), from its published structure:
    0 pad, 1 FFC 7x7 (local only), 2-4 stride-2 FFCs (the last splits local/global), 5-22 FFC ResNet blocks,
    23 concat, 24-32 three (ConvTranspose, BN, ReLU), 33 pad, 34 conv 7x7, 35 sigmoid."""
    keys = ["model.1.ffc.convl2l.weight", *bn("model.1.bn_l")]
    keys += [k for i in (2, 3) for k in (f"model.{i}.ffc.convl2l.weight", *bn(f"model.{i}.bn_l"))]
    keys += ["model.4.ffc.convl2l.weight", "model.4.ffc.convl2g.weight", *bn("model.4.bn_l"), *bn("model.4.bn_g")]
    for block in range(5, 23):
        for conv in ("conv1", "conv2"):
            p = f"model.{block}.{conv}"
            keys += [f"{p}.ffc.{path}.weight" for path in ("convl2l", "convl2g", "convg2l")]
            g2g = f"{p}.ffc.convg2g"
            keys += [f"{g2g}.conv1.0.weight", *bn(f"{g2g}.conv1.1"), f"{g2g}.fu.conv_layer.weight", *bn(f"{g2g}.fu.bn")]
            keys += [f"{g2g}.conv2.weight", *bn(f"{p}.bn_l"), *bn(f"{p}.bn_g")]
    for up in (24, 27, 30):
        keys += [f"model.{up}.weight", f"model.{up}.bias", *bn(f"model.{up + 1}")]
    keys += ["model.34.weight", "model.34.bias"]
    return set(keys)


@pytest.fixture(scope="module")
def big_lama_state() -> dict[str, torch.Tensor]:
    return LamaGenerator(LAMA_ARCHS["big-lama"]).state_dict()


def test_big_lama_keys_match_the_published_checkpoint(big_lama_state):
    assert set(big_lama_state) == expected_big_lama_keys()
    shapes = {
        "model.1.ffc.convl2l.weight": (64, 4, 7, 7),
        "model.4.ffc.convl2g.weight": (384, 256, 3, 3),
        "model.5.conv1.ffc.convl2l.weight": (128, 128, 3, 3),
        "model.5.conv1.ffc.convg2l.weight": (128, 384, 3, 3),
        "model.5.conv1.ffc.convg2g.conv1.0.weight": (192, 384, 1, 1),
        "model.5.conv1.ffc.convg2g.fu.conv_layer.weight": (384, 384, 1, 1),
        "model.22.conv2.ffc.convg2g.conv2.weight": (384, 192, 1, 1),
        "model.24.weight": (512, 256, 3, 3),
        "model.34.weight": (3, 64, 7, 7),
    }
    for key, shape in shapes.items():
        assert tuple(big_lama_state[key].shape) == shape, key


def test_big_lama_parameter_count():
    count = sum(p.numel() for p in LamaGenerator(LAMA_ARCHS["big-lama"]).parameters())
    print(f"Big-LaMa generator parameters: {count:,}")
    assert count == 50_975_875  # ~51M, as published for Big-LaMa


@pytest.fixture(scope="module")
def tiny():
    return build_lama("tiny", seed=0)


def batch(h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, h, w, generator=g), (torch.rand(2, 1, h, w, generator=g) > 0.7).float()


@torch.no_grad()
@pytest.mark.parametrize("size", [(32, 32), (37, 45), (13, 8)])
def test_inpainting_keeps_pixels_outside_the_mask(tiny, size):
    images, mask = batch(*size)
    out = tiny(images, mask)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    keep = (mask == 0).expand_as(images)
    assert torch.equal(out[keep], images[keep])
    assert not torch.equal(out[~keep], images[~keep])


def test_pad_symmetric_matches_numpy():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    padded = pad_symmetric(x, 8)
    assert padded.shape == (1, 2, 8, 8)
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (0, 5), (0, 3)), mode="symmetric")
    np.testing.assert_array_equal(padded.numpy(), expected)


@torch.no_grad()
def test_fake_best_ckpt_loads_strictly(tiny, tmp_path):
    state = {f"generator.{k}": v for k, v in tiny.net.generator.state_dict().items()}
    state["discriminator.model0.0.ffc.convl2l.weight"] = torch.zeros(1)
    state["loss_resnet_pl.impl.conv1.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "epoch": 3, "global_step": 10}, tmp_path / "best.ckpt")
    loaded = load_lama(tmp_path / "best.ckpt", TINY)
    assert not loaded.training and not loaded.scripted
    images, mask = batch(24, 40)
    assert torch.equal(loaded(images, mask), tiny(images, mask))


def test_incomplete_checkpoint_is_rejected(tiny, tmp_path):
    state = {f"generator.{k}": v for k, v in tiny.net.generator.state_dict().items()}
    state.pop("generator.model.5.conv1.ffc.convg2g.fu.conv_layer.weight")
    torch.save({"state_dict": state}, tmp_path / "best.ckpt")
    with pytest.raises(RuntimeError, match="conv_layer"):
        load_lama(tmp_path / "best.ckpt", TINY)


def test_pickled_objects_are_refused_with_an_explanation(tiny, tmp_path):
    checkpoint = {"state_dict": tiny.net.generator.state_dict(), "hyper_parameters": argparse.Namespace(ngf=8)}
    torch.save(checkpoint, tmp_path / "best.ckpt")
    with pytest.raises(ValueError, match="weights_only"):
        load_lama(tmp_path / "best.ckpt", TINY)


@torch.no_grad()
def test_torchscript_big_lama_pt_round_trip(tiny, tmp_path):
    example = batch(32, 32)
    traced = torch.jit.trace(tiny.net, example, check_trace=False)
    (tmp_path / "big-lama").mkdir()
    traced.save(str(tmp_path / "big-lama.pt"))
    loaded = zoo.load_inpainter(str(tmp_path))
    assert loaded.scripted
    images, mask = batch(37, 45, seed=1)
    torch.testing.assert_close(loaded(images, mask), tiny(images, mask))


def test_missing_lama_checkpoint_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="big-lama.zip"):
        load_lama(tmp_path / "best.ckpt")
