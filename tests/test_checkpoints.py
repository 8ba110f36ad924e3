"""The paper's checkpoints in their released layouts, offline, with random weights of the true architectures.

The released key lists are built here from the published module structure (OpenMMLab mit.py and segformer_head.py,
NVlabs mix_transformer.py and segformer_head.py, isl-org/DPT on timm's vit_base_resnet50_384), independently of the
loaders' mapping tables. NVlabs and DPT files are exported from a random transformers model with renames written
here as transformers' conversion scripts apply them, so loading must give back that model exactly; OpenMMLab's head
has no transformers counterpart, so its file is random and checked against its forward pass written here in plain
torch ops.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from vprlib.models.dpt import DPT_ARCHS, MIDAS_CHECKPOINT, build_dpt, dpt_from_released, load_dpt_checkpoint
from vprlib.models.segformer import (
    PAPER_CHECKPOINT,
    SEGFORMER_ARCHS,
    build_segformer,
    segformer_from_released,
    segmenter_from_checkpoint,
    trained_input_size,
)

B5 = SEGFORMER_ARCHS["b5"]


def conv(name, out, inp, k, bias=True):
    return {f"{name}.weight": (out, inp, k, k), **({f"{name}.bias": (out,)} if bias else {})}


def linear(name, out, inp):
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def norm(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,)}


def batch_norm(name, c):
    return {**norm(name, c), f"{name}.running_mean": (c,), f"{name}.running_var": (c,),
            f"{name}.num_batches_tracked": ()}


def nvlabs_shapes(arch, embed=768, channels=128, classes=150):
    """NVlabs' EncoderDecoder(mit_b*, SegFormerHead) state dict: key -> shape (its config: channels=128)."""
    shapes, cin = {}, 3
    for i, (c, depth) in enumerate(zip(arch["hidden_sizes"], arch["depths"], strict=True)):
        n, sr, hidden = i + 1, arch["sr_ratios"][i], c * arch["mlp_ratios"][i]
        shapes |= conv(f"backbone.patch_embed{n}.proj", c, cin, arch["patch_sizes"][i])
        shapes |= norm(f"backbone.patch_embed{n}.norm", c)
        for j in range(depth):
            b = f"backbone.block{n}.{j}"
            shapes |= norm(f"{b}.norm1", c) | linear(f"{b}.attn.q", c, c) | linear(f"{b}.attn.kv", 2 * c, c)
            shapes |= linear(f"{b}.attn.proj", c, c) | norm(f"{b}.norm2", c)
            if sr > 1:
                shapes |= conv(f"{b}.attn.sr", c, c, sr) | norm(f"{b}.attn.norm", c)
            shapes |= linear(f"{b}.mlp.fc1", hidden, c) | conv(f"{b}.mlp.dwconv.dwconv", hidden, 1, 3)
            shapes |= linear(f"{b}.mlp.fc2", c, hidden)
        shapes |= norm(f"backbone.norm{n}", c)
        shapes |= linear(f"decode_head.linear_c{n}.proj", embed, c)
        cin = c
    shapes |= conv("decode_head.conv_seg", classes, channels, 1)
    shapes |= conv("decode_head.linear_fuse.conv", embed, 4 * embed, 1, bias=False)
    shapes |= batch_norm("decode_head.linear_fuse.bn", embed) | conv("decode_head.linear_pred", classes, embed, 1)
    return shapes


def mmseg_shapes(arch, channels=256, classes=150):
    """OpenMMLab's EncoderDecoder(MixVisionTransformer, SegformerHead) state dict (B5 config: channels=256)."""
    shapes, cin = {}, 3
    for i, (c, depth) in enumerate(zip(arch["hidden_sizes"], arch["depths"], strict=True)):
        p, sr, hidden = f"backbone.layers.{i}", arch["sr_ratios"][i], c * arch["mlp_ratios"][i]
        shapes |= conv(f"{p}.0.projection", c, cin, arch["patch_sizes"][i]) | norm(f"{p}.0.norm", c)
        for j in range(depth):
            b = f"{p}.1.{j}"
            shapes |= norm(f"{b}.norm1", c) | {f"{b}.attn.attn.in_proj_weight": (3 * c, c),
                                               f"{b}.attn.attn.in_proj_bias": (3 * c,)}
            shapes |= linear(f"{b}.attn.attn.out_proj", c, c) | norm(f"{b}.norm2", c)
            if sr > 1:
                shapes |= conv(f"{b}.attn.sr", c, c, sr) | norm(f"{b}.attn.norm", c)
            shapes |= conv(f"{b}.ffn.layers.0", hidden, c, 1) | conv(f"{b}.ffn.layers.1", hidden, 1, 3)
            shapes |= conv(f"{b}.ffn.layers.4", c, hidden, 1)
        shapes |= norm(f"{p}.2", c)
        shapes |= conv(f"decode_head.convs.{i}.conv", channels, c, 1, bias=False)
        shapes |= batch_norm(f"decode_head.convs.{i}.bn", channels)
        cin = c
    shapes |= conv("decode_head.fusion_conv.conv", channels, 4 * channels, 1, bias=False)
    shapes |= batch_norm("decode_head.fusion_conv.bn", channels) | conv("decode_head.conv_seg", classes, channels, 1)
    return shapes


def dpt_hybrid_shapes(arch):
    """isl-org/DPT's DPTDepthModel("vitb_rn50_384", readout "project") state dict, as in dpt_hybrid-midas-*.pt."""
    vit, bit = arch["dpt"], arch["backbone"]
    d, f, neck = vit["hidden_size"], vit["fusion_hidden_size"], vit["neck_hidden_sizes"]
    model, resnet = "pretrained.model", "pretrained.model.patch_embed.backbone"
    shapes = {f"{model}.cls_token": (1, 1, d), f"{model}.pos_embed": (1, (vit["image_size"] // 16) ** 2 + 1, d)}
    shapes |= conv(f"{resnet}.stem.conv", bit["embedding_size"], 3, 7, bias=False)
    shapes |= norm(f"{resnet}.stem.norm", bit["embedding_size"])
    cin = bit["embedding_size"]
    for s, depth in enumerate(bit["depths"]):
        out = bit["hidden_sizes"][s]
        for b in range(depth):
            p = f"{resnet}.stages.{s}.blocks.{b}"
            if b == 0:
                shapes |= conv(f"{p}.downsample.conv", out, cin, 1, bias=False) | norm(f"{p}.downsample.norm", out)
            shapes |= conv(f"{p}.conv1", out // 4, cin if b == 0 else out, 1, bias=False) | norm(f"{p}.norm1", out // 4)
            shapes |= conv(f"{p}.conv2", out // 4, out // 4, 3, bias=False) | norm(f"{p}.norm2", out // 4)
            shapes |= conv(f"{p}.conv3", out, out // 4, 1, bias=False) | norm(f"{p}.norm3", out)
        cin = out
    shapes |= conv(f"{model}.patch_embed.proj", d, cin, 1)
    for i in range(vit["num_hidden_layers"]):
        b = f"{model}.blocks.{i}"
        shapes |= norm(f"{b}.norm1", d) | linear(f"{b}.attn.qkv", 3 * d, d) | linear(f"{b}.attn.proj", d, d)
        shapes |= norm(f"{b}.norm2", d) | linear(f"{b}.mlp.fc1", vit["intermediate_size"], d)
        shapes |= linear(f"{b}.mlp.fc2", d, vit["intermediate_size"])
    shapes |= norm(f"{model}.norm", d) | linear(f"{model}.head", 1000, d)
    for n in (3, 4):
        shapes |= linear(f"pretrained.act_postprocess{n}.0.project.0", d, 2 * d)
        shapes |= conv(f"pretrained.act_postprocess{n}.3", neck[n - 1], d, 1)
    shapes |= conv("pretrained.act_postprocess4.4", neck[3], neck[3], 3)
    for n in (1, 2, 3, 4):
        shapes |= conv(f"scratch.layer{n}_rn", f, neck[n - 1], 3, bias=False)
        shapes |= conv(f"scratch.refinenet{n}.out_conv", f, f, 1)
        for unit in (1, 2):
            shapes |= conv(f"scratch.refinenet{n}.resConfUnit{unit}.conv1", f, f, 3)
            shapes |= conv(f"scratch.refinenet{n}.resConfUnit{unit}.conv2", f, f, 3)
    shapes |= conv("scratch.output_conv.0", f // 2, f, 3) | conv("scratch.output_conv.2", 32, f // 2, 3)
    return shapes | conv("scratch.output_conv.4", 1, 32, 1)


def _renamed(key: str, numbered: list[tuple[str, object]], plain: list[tuple[str, str]]) -> str:
    for pattern, repl in numbered:
        key = re.sub(pattern, repl, key)
    for old, new in plain:
        key = key.replace(old, new)
    return key


def _index(template: str, offset: int = -1, sign: int = 1):
    """re.sub replacement: `template` with {} the first group's number, times `sign`, plus `offset`."""
    return lambda m: template.format(sign * int(m[1]) + offset)


def nvlabs_to_transformers(key: str) -> str:
    """transformers' name for an NVlabs tensor, renamed as convert_segformer_original_to_pytorch.py does (in the
    module names of transformers 5)."""
    numbered = [(r"^backbone\.patch_embed(\d)", _index("segformer.stages.{}.patch_embeddings")),
                (r"^backbone\.block(\d)", _index("segformer.stages.{}.blocks")),
                (r"^backbone\.norm(\d)", _index("segformer.stages.{}.layer_norm")),
                (r"linear_c(\d)", _index("linear_projections.{}"))]
    plain = [("patch_embeddings.norm.", "patch_embeddings.layer_norm."), (".norm1.", ".layernorm_before."),
             (".norm2.", ".layernorm_after."), (".attn.q.", ".attention.q_proj."),
             (".attn.proj.", ".attention.o_proj."), (".attn.sr.", ".attention.sequence_reduction.sequence_reduction."),
             (".attn.norm.", ".attention.sequence_reduction.layer_norm."), ("linear_fuse.conv.", "linear_fuse."),
             ("linear_fuse.bn.", "batch_norm."), ("linear_pred.", "classifier.")]
    return _renamed(key, numbered, plain)


def dpt_to_transformers(key: str) -> str:
    """transformers' name for an original DPT tensor, renamed as convert_dpt_hybrid_to_pytorch.py does."""
    reassemble = "neck.reassemble_stage"
    numbered = [(r"^pretrained\.act_postprocess(\d)\.0\.project\.0\.", _index(reassemble + ".readout_projects.{}.0.")),
                (r"^pretrained\.act_postprocess(\d)\.3\.", _index(reassemble + ".layers.{}.projection.")),
                (r"^pretrained\.act_postprocess(\d)\.4\.", _index(reassemble + ".layers.{}.resize.")),
                (r"^scratch\.layer(\d)_rn\.", _index("neck.convs.{}.")),
                (r"^scratch\.refinenet(\d)\.", _index("neck.fusion_stage.layers.{}.", offset=4, sign=-1)),
                (r"^pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.",
                 r"dpt.embeddings.backbone.bit.encoder.stages.\1.layers."),
                (r"^pretrained\.model\.blocks\.", "dpt.encoder.layer.")]
    plain = [("pretrained.model.patch_embed.backbone.stem.conv.", "dpt.embeddings.backbone.bit.embedder.convolution."),
             ("pretrained.model.patch_embed.backbone.stem.norm.", "dpt.embeddings.backbone.bit.embedder.norm."),
             ("pretrained.model.patch_embed.proj.", "dpt.embeddings.projection."),
             ("pretrained.model.cls_token", "dpt.embeddings.cls_token"),
             ("pretrained.model.pos_embed", "dpt.embeddings.position_embeddings"),
             ("pretrained.model.norm.", "dpt.layernorm."), (".norm1.", ".layernorm_before."),
             (".norm2.", ".layernorm_after."), (".attn.proj.", ".attention.output.dense."),
             (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."), (".out_conv.", ".projection."),
             (".resConfUnit", ".residual_layer"), (".conv1.", ".convolution1."), (".conv2.", ".convolution2."),
             ("scratch.output_conv.", "head.head.")]
    if "patch_embed.backbone" in key:  # BiT keeps timm's conv1/norm1 names
        plain = [p for p in plain if p[0] not in (".norm1.", ".norm2.", ".conv1.", ".conv2.")]
    return _renamed(key, numbered, plain)


def export(model, shapes, rename, fused, dropped):
    """A released state dict from a transformers model: each released key's tensor found by `rename`; `fused`
    builds the keys transformers splits (q/k/v); keys in `dropped` (classifiers transformers drops) are random."""
    hf, state = model.state_dict(), {}
    for key, shape in shapes.items():
        tensor = fused(hf, key)
        state[key] = tensor if tensor is not None else torch.randn(shape) if key in dropped else hf[rename(key)]
    return state


def random_tensor(key, shape, generator):
    """Random weights of a plausible scale: norm weights near 1, positive BatchNorm variances."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(1000)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=generator) + 0.5
    values = torch.randn(shape, generator=generator) * 0.1
    return values + 1.0 if key.endswith("weight") and len(shape) == 1 else values


def random_state(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {key: random_tensor(key, shape, generator) for key, shape in shapes.items()}


def nvlabs_fused(hf, key):
    match = re.fullmatch(r"(backbone\.block\d\.\d+)\.attn\.kv\.(weight|bias)", key)
    if match is None:
        return None
    prefix = nvlabs_to_transformers(f"{match[1]}.x").removesuffix(".x")
    return torch.cat([hf[f"{prefix}.attention.{p}_proj.{match[2]}"] for p in "kv"])


def dpt_fused(hf, key):
    match = re.fullmatch(r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
    if match is None:
        return None
    prefix = f"dpt.encoder.layer.{match[1]}.attention.attention"
    return torch.cat([hf[f"{prefix}.{p}.{match[2]}"] for p in ("query", "key", "value")])


NVLABS_DROPPED = {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"}
DPT_DROPPED = {"pretrained.model.head.weight", "pretrained.model.head.bias"}


# --- OpenMMLab's SegFormer forward, from mit.py and segformer_head.py, in plain torch ops on its state dict ---
def _ln(state, name, x):
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)


def _nchw(tokens, hw):
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *hw)


def _mmseg_block(state, p, x, hw, heads, sr):
    h = _ln(state, f"{p}.norm1", x)
    kv = h
    if sr > 1:
        kv = F.conv2d(_nchw(h, hw), state[f"{p}.attn.sr.weight"], state[f"{p}.attn.sr.bias"], stride=sr)
        kv = _ln(state, f"{p}.attn.norm", kv.flatten(2).transpose(1, 2))
    out, _ = F.multi_head_attention_forward(
        h.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), x.shape[-1], heads,
        state[f"{p}.attn.attn.in_proj_weight"], state[f"{p}.attn.attn.in_proj_bias"], None, None, False, 0.0,
        state[f"{p}.attn.attn.out_proj.weight"], state[f"{p}.attn.attn.out_proj.bias"], training=False,
        need_weights=False)
    x = x + out.transpose(0, 1)
    h = _nchw(_ln(state, f"{p}.norm2", x), hw)
    h = F.conv2d(h, state[f"{p}.ffn.layers.0.weight"], state[f"{p}.ffn.layers.0.bias"])
    h = F.conv2d(h, state[f"{p}.ffn.layers.1.weight"], state[f"{p}.ffn.layers.1.bias"], padding=1, groups=h.shape[1])
    h = F.conv2d(F.gelu(h), state[f"{p}.ffn.layers.4.weight"], state[f"{p}.ffn.layers.4.bias"])
    return x + h.flatten(2).transpose(1, 2)


def _conv_bn_relu(state, p, x):
    x = F.conv2d(x, state[f"{p}.conv.weight"])
    bn = [state[f"{p}.bn.{n}"] for n in ("running_mean", "running_var", "weight", "bias")]
    return F.relu(F.batch_norm(x, *bn, training=False, eps=1e-5))


def mmseg_forward(state, arch, pixels):
    x, features = pixels, []
    for i, depth in enumerate(arch["depths"]):
        p = f"backbone.layers.{i}"
        x = F.conv2d(x, state[f"{p}.0.projection.weight"], state[f"{p}.0.projection.bias"],
                     stride=arch["strides"][i], padding=arch["patch_sizes"][i] // 2)
        hw = tuple(x.shape[-2:])
        tokens = _ln(state, f"{p}.0.norm", x.flatten(2).transpose(1, 2))
        for j in range(depth):
            tokens = _mmseg_block(state, f"{p}.1.{j}", tokens, hw, arch["num_attention_heads"][i], arch["sr_ratios"][i])
        x = _nchw(_ln(state, f"{p}.2", tokens), hw)
        features.append(x)
    size = features[0].shape[-2:]
    outs = [F.interpolate(_conv_bn_relu(state, f"decode_head.convs.{i}", f), size=size, mode="bilinear",
                          align_corners=False) for i, f in enumerate(features)]
    fused = _conv_bn_relu(state, "decode_head.fusion_conv", torch.cat(outs, dim=1))
    return F.conv2d(fused, state["decode_head.conv_seg.weight"], state["decode_head.conv_seg.bias"])


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def segformer_b5():
    return build_segformer("b5", seed=1).eval()


@torch.no_grad()
def test_nvlabs_b5_checkpoint_loads_as_the_transformers_conversion(segformer_b5, pixels):
    shapes = nvlabs_shapes(B5)
    state = export(segformer_b5, shapes, nvlabs_to_transformers, nvlabs_fused, NVLABS_DROPPED)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes  # the published structure, every tensor
    loaded = segformer_from_released(state, "b5")
    expected = segformer_b5(pixel_values=pixels).logits
    assert torch.equal(loaded(pixel_values=pixels).logits, expected)


@torch.no_grad()
def test_mmseg_b5_checkpoint_runs_as_openmmlab(pixels):
    state = random_state(mmseg_shapes(B5))
    state["backbone.layers.0.0.projection.weight"] *= 0.01  # a small variance, where OpenMMLab's LayerNorm eps shows
    model = segformer_from_released(state, "b5")
    assert model.config.decoder_hidden_size == 256 and not model.training
    expected = mmseg_forward(state, B5, pixels)
    torch.testing.assert_close(model(pixel_values=pixels).logits, expected, rtol=1e-4, atol=1e-4)


def test_released_checkpoints_are_loaded_strictly():
    tiny = SEGFORMER_ARCHS["tiny"]
    state = random_state(mmseg_shapes(tiny, channels=32))
    absent = dict(state)
    del absent["backbone.layers.2.1.0.attn.attn.in_proj_bias"]
    with pytest.raises(KeyError, match=r"absent \(1\).*layers\.2\.1\.0\.attn\.attn\.in_proj_bias"):
        segformer_from_released(absent, "tiny")
    with pytest.raises(KeyError, match=r"not mapped \(1\).*auxiliary_head\.conv_seg\.weight"):
        segformer_from_released({**state, "auxiliary_head.conv_seg.weight": torch.zeros(1)}, "tiny")
    with pytest.raises(ValueError, match="layout"):
        segformer_from_released({"encoder.weight": torch.zeros(1)}, "tiny")


@torch.no_grad()
def test_paper_checkpoint_file_runs_at_its_training_side(tmp_path):
    tiny = SEGFORMER_ARCHS["tiny"]
    state = random_state(mmseg_shapes(tiny, channels=32))
    path = tmp_path / PAPER_CHECKPOINT
    torch.save({"meta": {"CLASSES": ("wall", "building"), "config": "crop_size = (512, 512)"}, "state_dict": state},
               path)
    segmenter = segmenter_from_checkpoint(path, "tiny")
    assert segmenter.input_size == 512 and segmenter.config.resample == "bilinear"
    assert segmenter_from_checkpoint(path, "tiny", input_size=640).input_size == 640
    images = torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8)
    pixels = (images.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(segmenter(images), mmseg_forward(state, tiny, pixels), rtol=1e-4, atol=1e-4)
    assert trained_input_size("segformer.b5.640x640.ade.160k.pth") == 640
    with pytest.raises(ValueError, match="training size"):
        trained_input_size("segformer_b5.pth")


def test_original_dpt_hybrid_checkpoint_is_the_conversion(tmp_path):
    converted = build_dpt("hybrid", seed=2).eval()
    shapes = dpt_hybrid_shapes(DPT_ARCHS["hybrid"])
    state = export(converted, shapes, dpt_to_transformers, dpt_fused, DPT_DROPPED)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes  # the published structure, every tensor
    torch.save(state, tmp_path / MIDAS_CHECKPOINT)
    loaded = load_dpt_checkpoint(tmp_path / MIDAS_CHECKPOINT).state_dict()
    expected = converted.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    with pytest.raises(KeyError, match=r"not mapped \(1\).*scratch\.refinenet5"):
        dpt_from_released({**state, "scratch.refinenet5.out_conv.weight": torch.zeros(1)})


@torch.no_grad()
def test_original_dpt_layout_gives_the_conversion_outputs():
    """The same round trip on the small hybrid (its 64x64 input keeps the forward pass cheap)."""
    converted = build_dpt("tiny", seed=2).eval()
    keys = dpt_hybrid_shapes(DPT_ARCHS["tiny"])  # the tiny arch's key list (its shapes differ)
    state = export(converted, keys, dpt_to_transformers, dpt_fused, DPT_DROPPED)
    loaded = dpt_from_released(state, "tiny")
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded(pixel_values=pixels).predicted_depth, converted(pixel_values=pixels).predicted_depth)
