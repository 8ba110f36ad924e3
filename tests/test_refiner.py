"""Refiners of paper section III-A / Fig. 3: shapes at 512x512, tiny forward, state-dict round trip."""

import pytest
import torch

from vprlib.models.encodings import label_channel
from vprlib.models.refiner import PAPER_DEPTH, PAPER_SEG, DualEncoderUNet, RefinerConfig, config_from_state_dict
from vprlib.models.zoo import load_refiners
from vprlib.spec import REFINED_CLASSES


def _record_shapes(model: torch.nn.Module, names: list[str]) -> dict[str, tuple]:
    """Forward hooks recording (input shapes, output shape) of the named submodules."""
    seen = {}
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(
            lambda _m, args, out, name=name: seen.__setitem__(name, ([tuple(a.shape) for a in args], tuple(out.shape)))
        )
    return seen


def test_paper_shapes_at_512():
    # The meta device propagates shapes without computing: the full paper model at 512x512 costs nothing.
    with torch.device("meta"):
        model = DualEncoderUNet(PAPER_SEG)
        depth, seg = torch.zeros(1, 1, 512, 512), torch.zeros(1, 1, 512, 512)
    seen = _record_shapes(
        model, ["seg_encoder.blocks.4", "depth_encoder.blocks.2", "decoder.0", "decoder.1.up", "decoder.1.conv", "head"]
    )
    out = model(depth, seg)
    assert seen["seg_encoder.blocks.4"][1] == (1, 512, 32, 32)  # each encoder ends at 32x32x512
    assert seen["decoder.0"][0][0] == (1, 1024, 32, 32)  # first decoder block: both encoders concatenated
    assert seen["depth_encoder.blocks.2"][1] == (1, 128, 128, 128)  # the third blocks' skips
    # The paper's third decoder block: 64x64x512 -> transposed conv 128x128x256, + 2x128 skips -> 512 -> 256.
    assert seen["decoder.1.up"] == ([(1, 512, 64, 64)], (1, 256, 128, 128))
    assert seen["decoder.1.conv"] == ([(1, 512, 128, 128)], (1, 256, 128, 128))
    assert seen["head"] == ([(1, 64, 512, 512)], (1, 4, 512, 512))
    assert out.shape == (1, len(REFINED_CLASSES), 512, 512)


def test_encoder_blocks_are_double_convs():
    model = DualEncoderUNet(RefinerConfig(base_width=4, levels=3))
    first = model.seg_encoder.blocks[0]
    kinds = [type(m).__name__ for m in first]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    assert first[0].kernel_size == (3, 3)
    assert isinstance(model.seg_encoder.blocks[1][0], torch.nn.MaxPool2d)
    assert model.head.kernel_size == (1, 1)


@pytest.mark.parametrize("seg_channels", [1, 150])
def test_tiny_forward_any_size(seg_channels):
    model = DualEncoderUNet(RefinerConfig(seg_channels=seg_channels, out_channels=4, base_width=4, levels=3)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 37, 50), torch.rand(2, seg_channels, 37, 50))
    assert out.shape == (2, 4, 37, 50)
    assert torch.isfinite(out).all()


def test_load_refiners_tiny_is_seeded_and_eval():
    depth_a, seg_a = load_refiners("tiny")
    depth_b, _ = load_refiners("tiny")
    assert not depth_a.training and not seg_a.training
    assert depth_a.config.out_channels == 1 and seg_a.config.out_channels == 4
    for a, b in zip(depth_a.state_dict().values(), depth_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_load_refiners_paper_random_is_paper_size():
    depth, seg = load_refiners("paper-random")
    assert depth.config == PAPER_DEPTH and seg.config == PAPER_SEG


def test_load_refiners_from_directory(tmp_path):
    depth_cfg = RefinerConfig(out_channels=1, base_width=4, levels=3)
    seg_cfg = RefinerConfig(seg_channels=3, out_channels=4, base_width=4, levels=3)
    torch.save(DualEncoderUNet(depth_cfg).state_dict(), tmp_path / "refiner_depth.pt")
    torch.save(DualEncoderUNet(seg_cfg).state_dict(), tmp_path / "refiner_seg.pt")
    depth, seg = load_refiners(str(tmp_path))
    assert depth.config == depth_cfg and seg.config == seg_cfg
    assert not depth.training


def test_load_refiners_missing_says_they_come_from_training(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="training"):
        load_refiners(str(tmp_path))
    monkeypatch.setenv("VPRLIB_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="refiner_depth.pt"):
        load_refiners("paper")
    with pytest.raises(ValueError, match="paper-random"):
        load_refiners(str(tmp_path / "absent"))


def test_config_from_state_dict_paper():
    with torch.device("meta"):
        state = DualEncoderUNet(PAPER_DEPTH).state_dict()
    assert config_from_state_dict(state) == PAPER_DEPTH


def test_label_channel():
    labels = torch.tensor([[[0, 149], [20, 2]]])
    channel = label_channel(labels, 150)
    assert channel.shape == (1, 1, 2, 2) and channel.max() == 1.0 and channel.min() == 0.0
    assert channel[0, 0, 1, 0] == pytest.approx(20 / 149)
