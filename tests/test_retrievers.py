"""Retrievers (CosPlace, NetVLAD) and their input encodings: random weights, shapes, norms, losses."""

import math

import pytest
import torch
import torchvision

from vprlib.models.cosplace import (
    BACKBONES,
    CosPlace,
    CosPlaceConfig,
    GeM,
    LargeMarginCosineLoss,
    adapt_first_conv,
    load_imagenet,
)
from vprlib.models.encodings import SEG_ENCODINGS, EncodingConfig, InputEncoder
from vprlib.models.netvlad import (
    TRIPLET_MARGIN,
    NetVLAD,
    NetVLADConfig,
    NetVLADLayer,
    init_clusters,
    triplet_loss,
)
from vprlib.models.retriever import Retriever
from vprlib.models.zoo import RETRIEVERS, load_retriever

torch.manual_seed(0)


def _unit_norm(descriptors: torch.Tensor) -> bool:
    return torch.allclose(descriptors.norm(dim=1), torch.ones(len(descriptors)), atol=1e-5)


@pytest.mark.parametrize(
    ("modalities", "seg_encoding", "channels"),
    [
        ("depth+seg", "label", 2),
        ("depth", "label", 1),
        ("seg", "label", 1),
        ("depth+seg", "probabilities", 5),
        ("depth+seg", "onehot", 5),
        ("seg", "embedding", 3),
    ],
)
def test_encodings_channels(modalities, seg_encoding, channels):
    config = EncodingConfig(modalities=modalities, seg_encoding=seg_encoding, num_classes=4, embedding_dim=3)
    assert config.in_channels == channels
    depth = torch.rand(2, 1, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    seg = torch.softmax(torch.rand(2, 4, 8, 8), dim=1) if seg_encoding == "probabilities" else labels
    encoded = InputEncoder(config)(depth, seg)
    assert encoded.shape == (2, channels, 8, 8)
    assert torch.isfinite(encoded).all()


def test_rgb_encoding_is_the_photo_normalised_as_imagenet():
    """--input rgb (the appearance baseline): three channels from the uint8 photo, ImageNet's mean and std; maps are
    ignored, and a missing photo is an error naming what makes one."""
    from vprlib.models.encodings import RGB_MEAN, RGB_STD

    config = EncodingConfig(modalities="rgb")
    assert config.in_channels == 3 and config.uses_rgb and not (config.uses_depth or config.uses_seg)
    rgb = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    encoded = InputEncoder(config)(torch.rand(2, 1, 8, 8), None, rgb)
    expected = (rgb[0, 3, 5].float() / 255 - torch.tensor(RGB_MEAN)) / torch.tensor(RGB_STD)
    assert encoded.shape == (2, 3, 8, 8) and torch.allclose(encoded[0, :, 3, 5], expected)
    with pytest.raises(ValueError, match="need the photo .*--rgb"):
        InputEncoder(config)(torch.rand(2, 1, 8, 8), None)
    model = RETRIEVERS["cosplace"](SMALL["cosplace"](config)).eval()
    with torch.no_grad():
        assert model.embed(None, None, rgb).shape == (2, model.descriptor_size)


def test_encodings_values():
    labels = torch.tensor([[[0, 3], [1, 2]]])
    onehot = InputEncoder(EncodingConfig(modalities="seg", seg_encoding="onehot", num_classes=4))(None, labels)
    assert torch.equal(onehot.argmax(dim=1), labels) and onehot.sum(dim=1).eq(1).all()
    label = InputEncoder(EncodingConfig(modalities="seg", num_classes=4))(None, labels.float().unsqueeze(1))
    assert torch.allclose(label[0, 0], torch.tensor([[0.0, 1.0], [1 / 3, 2 / 3]]))


def test_labels_of_no_class_encode_as_nothing():
    """The ground truth's ignore label (255: HoliCity's "others") is no class: it adds nothing to any channel."""
    seg = torch.tensor([[[0, 3], [255, 1]]])
    onehot = InputEncoder(EncodingConfig(modalities="seg", seg_encoding="onehot", num_classes=4))(None, seg)
    assert onehot[0, :, 1, 0].tolist() == [0, 0, 0, 0] and onehot[0, :, 0, 1].tolist() == [0, 0, 0, 1]
    label = InputEncoder(EncodingConfig(modalities="seg", seg_encoding="label", num_classes=4))(None, seg)
    assert label.max() <= 1.0 and label[0, 0, 1, 0] == 0.0
    embedded = InputEncoder(EncodingConfig(modalities="seg", seg_encoding="embedding", num_classes=4))(None, seg)
    assert (embedded[0, :, 1, 0] == 0).all() and (embedded[0, :, 0, 1] != 0).any()


def test_encodings_unknown_names_list_known():
    with pytest.raises(ValueError, match="onehot"):
        EncodingConfig(seg_encoding="rgb")
    with pytest.raises(ValueError, match="depth\\+seg"):
        EncodingConfig(modalities="infrared")
    with pytest.raises(ValueError, match="resnet50"):
        CosPlaceConfig(backbone="resnet34")
    assert set(SEG_ENCODINGS) == {"label", "probabilities", "onehot", "embedding"}


def test_learned_embedding_trains_with_cosplace():
    encoding = EncodingConfig(seg_encoding="embedding", num_classes=5, embedding_dim=3)
    model = CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=16, encoding=encoding))
    model.embed(torch.rand(2, 1, 32, 32), torch.randint(0, 5, (2, 32, 32))).sum().backward()
    assert model.encoder.seg.embedding.weight.grad is not None


@pytest.mark.parametrize("encoding", [EncodingConfig(), EncodingConfig(seg_encoding="probabilities", num_classes=4)])
def test_cosplace_resnet18_forward(encoding):
    model = CosPlace(CosPlaceConfig(backbone="resnet18", descriptor_size=64, encoding=encoding)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, encoding.in_channels, 64, 64))
    assert out.shape == (2, 64) and model.descriptor_size == 64
    assert torch.isfinite(out).all() and _unit_norm(out)


# Parameters of the paper-size CosPlace (2 input channels, descriptor 512): backbone without fc + Linear + GeM p.
@pytest.mark.parametrize(
    ("backbone", "params"),
    [("resnet50", 24_553_985), ("resnet101", 43_546_113), ("resnet152", 59_189_761), ("vgg16", 14_976_769)],
)
def test_cosplace_paper_backbones_build(backbone, params):
    model = CosPlace(CosPlaceConfig(backbone=backbone))
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.aggregation[3].in_features == BACKBONES[backbone]
    assert model.descriptor_size == 512


def test_cosplace_vgg16_forward():
    model = CosPlace(CosPlaceConfig(backbone="vgg16", descriptor_size=32)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 2, 48, 48))
    assert out.shape == (1, 32) and _unit_norm(out)


def test_gem_of_constant_map_is_the_constant():
    assert torch.allclose(GeM()(torch.full((1, 3, 4, 4), 0.5)), torch.full((1, 3, 1, 1), 0.5))


def test_lmcl_hand_case():
    assert (LargeMarginCosineLoss(4, 3).s, LargeMarginCosineLoss(4, 3).m) == (30.0, 0.4)  # CosPlace defaults
    head = LargeMarginCosineLoss(descriptor_size=2, num_classes=2, s=2.0, m=0.4)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    descriptors = torch.tensor([[3.0, 0.0]])  # cos 1 to class 0, 0 to class 1
    labels = torch.tensor([0])
    logits = head.logits(descriptors, labels)
    assert torch.allclose(logits, torch.tensor([[2 * 0.6, 0.0]]))
    expected = -math.log(math.exp(1.2) / (math.exp(1.2) + 1.0))
    assert head(descriptors, labels).item() == pytest.approx(expected, rel=1e-5)


def test_adapt_first_conv_keeps_gray_response():
    rgb = torch.randn(8, 3, 7, 7)
    adapted = adapt_first_conv(rgb, 2)
    assert adapted.shape == (8, 2, 7, 7)
    assert torch.allclose(adapted.sum(dim=1), rgb.sum(dim=1), atol=1e-5)


def test_load_imagenet_adapts_and_freezes(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = load_imagenet(CosPlace(CosPlaceConfig(backbone="resnet18")), tmp_path / "resnet18.pth")
    assert torch.allclose(model.backbone[0].weight, adapt_first_conv(reference.conv1.weight, 2))
    assert torch.equal(model.backbone[7][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.backbone[0].weight.requires_grad  # the adapted conv sees maps: it trains
    assert not model.backbone[4][0].conv1.weight.requires_grad  # layer1 frozen as in CosPlace
    assert model.backbone[6][0].conv1.weight.requires_grad  # layer3 trains


# A small configuration of every retriever family: the contract test below covers each one.
SMALL = {"cosplace": lambda encoding: CosPlaceConfig(backbone="resnet18", descriptor_size=16, encoding=encoding),
         "netvlad": lambda encoding: NetVLADConfig(num_clusters=4, encoding=encoding)}


def test_every_retriever_family_is_covered():
    assert set(SMALL) == set(RETRIEVERS)


@pytest.mark.parametrize("family", sorted(RETRIEVERS))
@pytest.mark.parametrize("modalities", ["depth+seg", "seg"])
def test_retriever_contract(family, modalities, tmp_path):
    """Every family: built from a config, descriptors of `descriptor_size` with unit norm from maps, and a checkpoint
    (config, weights and plain extras) that `load_retriever` turns back into the same network."""
    encoding = EncodingConfig(modalities=modalities, seg_encoding="label", num_classes=4)
    model = RETRIEVERS[family](SMALL[family](encoding)).eval()
    assert isinstance(model, Retriever) and model.family == family and model.encoding == encoding
    depth, seg = torch.rand(2, 1, 64, 64), torch.randint(0, 4, (2, 64, 64))
    with torch.no_grad():
        out = model.embed(depth, seg)
        assert torch.equal(model(model.encoder(depth, seg)), out)
    assert out.shape == (2, model.descriptor_size) and torch.isfinite(out).all() and _unit_norm(out)
    model.save(tmp_path / "model.pt", map_spec={"strategy": "none", "side": 64})
    loaded = load_retriever(tmp_path / "model.pt")
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    with torch.no_grad():
        assert torch.allclose(loaded.embed(depth, seg), out, atol=1e-6)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["map_spec"] == {"strategy": "none", "side": 64}


def test_load_retriever_refuses_other_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a retriever checkpoint"):
        load_retriever(tmp_path / "other.pt")


def test_netvlad_forward_and_kmeans_init(tmp_path):
    model = NetVLAD(NetVLADConfig(num_clusters=8))
    assert model.descriptor_size == 8 * 512
    before = model.pool.centroids.detach().clone()
    maps = [torch.rand(2, 2, 64, 64) for _ in range(2)]
    alpha = init_clusters(model, maps, niter=5, per_image=16)
    assert alpha > 0 and model.pool.alpha.item() == pytest.approx(alpha)
    assert not torch.equal(model.pool.centroids, before)
    # The assignment conv holds alpha times the unit centroids (vladv1 init).
    unit = torch.nn.functional.normalize(model.pool.centroids.detach(), dim=1)
    assert torch.allclose(model.pool.conv.weight[:, :, 0, 0], alpha * unit, atol=1e-4)
    model.eval()
    with torch.no_grad():
        out = model(maps[0])
    assert out.shape == (2, 8 * 512) and torch.isfinite(out).all() and _unit_norm(out)
    model.save(tmp_path / "netvlad.pt")
    with torch.no_grad():  # the k-means initialisation (alpha, centroids) is part of the checkpoint
        assert torch.allclose(load_retriever(tmp_path / "netvlad.pt")(maps[0]), out, atol=1e-6)


def test_netvlad_layer_matches_loop_reference():
    layer = NetVLADLayer(num_clusters=3, dim=4)
    x = torch.rand(2, 4, 3, 5)
    unit = torch.nn.functional.normalize(x, dim=1).flatten(2)  # B,D,N
    assign = torch.softmax(layer.conv(unit.unsqueeze(-1)).squeeze(-1), dim=1)
    expected = torch.stack(
        [(assign[:, k : k + 1] * (unit - layer.centroids[k][None, :, None])).sum(-1) for k in range(3)], dim=1
    )
    expected = torch.nn.functional.normalize(torch.nn.functional.normalize(expected, dim=2).flatten(1), dim=1)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_triplet_loss_margin():
    anchor = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0]])
    far = torch.tensor([[[-1.0, 0.0]]])  # distance 2 > margin: no loss
    near = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # one at distance 0: loss margin, averaged over 2
    assert triplet_loss(anchor, positive, far).item() == pytest.approx(0.0, abs=1e-5)
    assert triplet_loss(anchor, positive, near).item() == pytest.approx(TRIPLET_MARGIN / 2, rel=1e-4)
