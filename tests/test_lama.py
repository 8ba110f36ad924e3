"""Big-LaMa: published key layout and size, the computation of LaMa's generator, LaMa's Lightning best.ckpt read without
Lightning, OmegaConf or pickled code, strict generator loading, TorchScript exports, inference contract."""

import collections
import contextlib
import copy
import dataclasses
import io
import os
import pickle
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vprlib.models import zoo
from vprlib.models.lama import (
    LAMA_ARCHS,
    InertUnpickler,
    LamaGenerator,
    Unresolved,
    build_lama,
    load_lama,
    pad_symmetric,
    read_checkpoint,
)

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


def reference_generator(s: dict[str, torch.Tensor], x: torch.Tensor, n_down: int, n_blocks: int) -> torch.Tensor:
    """LaMa's FFCResNetGenerator written out functionally from its state_dict keys (eval mode), as LaMa's code
    composes it: absent FFC paths are identities of a zero global input, (local, global) pairs are summed per
    path, every FFC is followed by BN+ReLU per non-empty branch, Fourier units stack (real, imag) per channel."""
    x_l, x_g = ffc_bn_act(s, "model.1", F.pad(x, [3] * 4, mode="reflect"), 0, 1, 0)
    for i in range(n_down):
        x_l, x_g = ffc_bn_act(s, f"model.{2 + i}", x_l, x_g, 2, 1)
    for b in range(2 + n_down, 2 + n_down + n_blocks):
        y_l, y_g = ffc_bn_act(s, f"model.{b}.conv1", x_l, x_g, 1, 1)
        y_l, y_g = ffc_bn_act(s, f"model.{b}.conv2", y_l, y_g, 1, 1)
        x_l, x_g = x_l + y_l, x_g + y_g
    x, up = torch.cat([x_l, x_g], dim=1), 3 + n_down + n_blocks
    for i in range(up, up + 3 * n_down, 3):
        x = F.conv_transpose2d(x, s[f"model.{i}.weight"], s[f"model.{i}.bias"], 2, 1, output_padding=1)
        x = F.relu(batch_norm(s, f"model.{i + 1}", x))
    last = up + 3 * n_down + 1
    return torch.sigmoid(
        F.conv2d(F.pad(x, [3] * 4, mode="reflect"), s[f"model.{last}.weight"], s[f"model.{last}.bias"])
    )


def batch_norm(s, prefix, x):
    p = {k: s[f"{prefix}.{k}"] for k in ("running_mean", "running_var", "weight", "bias")}
    return F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"], False, 0.0, 1e-5)


def ffc_bn_act(s, prefix, x_l, x_g, stride, padding):
    """LaMa's FFC_BN_ACT: out_l = l2l(x_l) + g2l(x_g), out_g = l2g(x_l) + g2g(x_g); an empty branch stays 0."""

    def path(name, t):
        weight = s.get(f"{prefix}.ffc.{name}.weight")
        if weight is None:  # LaMa's nn.Identity
            return t
        return F.conv2d(F.pad(t, [padding] * 4, mode="reflect") if padding else t, weight, stride=stride)

    def g2g(t):
        if f"{prefix}.ffc.convg2g.conv1.0.weight" not in s:
            return t
        t = F.relu(
            batch_norm(s, f"{prefix}.ffc.convg2g.conv1.1", F.conv2d(t, s[f"{prefix}.ffc.convg2g.conv1.0.weight"]))
        )
        return F.conv2d(t + fourier_unit(s, f"{prefix}.ffc.convg2g.fu", t), s[f"{prefix}.ffc.convg2g.conv2.weight"])

    out_l = F.relu(batch_norm(s, f"{prefix}.bn_l", path("convl2l", x_l) + path("convg2l", x_g)))
    has_g = f"{prefix}.bn_g.weight" in s
    out_g = F.relu(batch_norm(s, f"{prefix}.bn_g", path("convl2g", x_l) + g2g(x_g))) if has_g else 0
    return out_l, out_g


def fourier_unit(s, prefix, x):
    b, c, h, w = x.shape
    spec = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
    spec = torch.stack((spec.real, spec.imag), dim=-1).permute(0, 1, 4, 2, 3).reshape(b, 2 * c, h, -1)
    spec = F.relu(batch_norm(s, f"{prefix}.bn", F.conv2d(spec, s[f"{prefix}.conv_layer.weight"])))
    spec = spec.reshape(b, c, 2, h, -1).permute(0, 1, 3, 4, 2)
    return torch.fft.irfftn(torch.complex(spec[..., 0], spec[..., 1]), s=(h, w), dim=(-2, -1), norm="ortho")


@torch.no_grad()
@pytest.mark.parametrize("arch", ["tiny", "big-lama"])
def test_generator_computes_what_lama_s_structure_computes(arch):
    config = LAMA_ARCHS[arch]
    generator = LamaGenerator(config).eval()
    g = torch.Generator().manual_seed(1)
    for norm in (m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)):  # not identities
        for tensor, low in ((norm.weight, 0.5), (norm.bias, -0.5), (norm.running_mean, -0.5), (norm.running_var, 0.5)):
            tensor.copy_(torch.rand(tensor.shape, generator=g) + low)
    x = torch.rand(2, 4, 40, 56, generator=g)
    expected = reference_generator(generator.state_dict(), x, config.n_downsampling, config.n_blocks)
    assert torch.equal(generator(x), expected)  # the same operations in the same order: bit for bit
    assert expected.std() > 0.01  # not a saturated output


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


def lives_in(module: str):
    """Give a test stand-in the module and name of the real class or function it stands for."""

    def place(obj):
        obj.__module__, obj.__qualname__ = module, obj.__name__
        return obj

    return place


@lives_in("pytorch_lightning.callbacks.model_checkpoint")
class ModelCheckpoint:
    """Lightning 1.2.9 keys a checkpoint's callbacks dict by this class (`{type(callback): state}`)."""


@lives_in("omegaconf.base")
@dataclasses.dataclass
class Metadata:
    object_type: object = None
    key: object = None
    ref_type: object = typing.Any
    optional: bool = True
    flags: dict = dataclasses.field(default_factory=dict)
    resolver_cache: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))


@lives_in("omegaconf.nodes")
class AnyNode:
    def __init__(self, value, key, parent):
        self._val, self._parent, self._metadata = value, parent, Metadata(key=key)


@lives_in("omegaconf.dictconfig")
class DictConfig:
    """Pickles as OmegaConf's DictConfig does: its __dict__ (metadata, parent, content of nodes), by NEWOBJ+BUILD."""

    def __init__(self, content: dict, key=None, parent=None):
        self._metadata, self._parent = Metadata(object_type=dict, key=key), parent
        self._metadata.resolver_cache["oc.env"]["HOME"] = "/root"
        self._content = {
            k: DictConfig(v, k, self) if isinstance(v, dict) else AnyNode(v, k, self) for k, v in content.items()
        }


@contextlib.contextmanager
def importable(*objects):
    """Make stand-ins findable under their module while saving (pickle checks a global by importing it); they are
    gone again afterwards, so a loader that imported them would fail."""
    with pytest.MonkeyPatch.context() as patch:
        for obj in objects:
            parts = obj.__module__.split(".")
            for name in (".".join(parts[: i + 1]) for i in range(len(parts))):
                if name not in sys.modules:
                    patch.setitem(sys.modules, name, types.ModuleType(name))
            patch.setattr(sys.modules[obj.__module__], obj.__name__, obj, raising=False)
        yield


def lightning_1_2_9_checkpoint(generator: nn.Module) -> dict:
    """A checkpoint laid out as Lightning 1.2.9's dump_checkpoint writes LaMa's best.ckpt: the training module's
    state_dict (generator, discriminator, losses, evaluators), AdamW states, the ModelCheckpoint callback's state
    keyed by its class, and the training config as a DictConfig (and its class)."""
    parts = {
        "generator": generator,
        "discriminator": nn.Conv2d(3, 4, 3),
        "loss_resnet_pl.impl": nn.Conv2d(3, 4, 1),
        "val_evaluator.scores.lpips.model.net": nn.Conv2d(3, 2, 1),
        "test_evaluator.scores.lpips.model.net": nn.Conv2d(3, 2, 1),
    }
    state = collections.OrderedDict((f"{p}.{k}", v) for p, m in parts.items() for k, v in m.state_dict().items())
    optimizers = []
    for module in (copy.deepcopy(generator), parts["discriminator"]):
        optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
        for parameter in module.parameters():
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        optimizers.append(optimizer.state_dict())
    config = {"generator": {"kind": "ffc_resnet", "ngf": 64, "n_blocks": 18}, "optimizers": {"generator": {"lr": 1e-3}}}
    return {
        "epoch": 40,
        "global_step": 1_000_000,
        "pytorch-lightning_version": "1.2.9",
        "callbacks": {
            ModelCheckpoint: {
                "monitor": "val_ssim_fid100_f1_total_mean",
                "best_model_score": torch.tensor(0.93),
                "best_model_path": "/experiments/big-lama/models/best.ckpt",
                "current_score": torch.tensor(0.93),
                "dirpath": "/experiments/big-lama/models",
            }
        },
        "optimizer_states": optimizers,
        "lr_schedulers": [],
        "state_dict": state,
        "hyper_parameters": DictConfig(config),
        "hparams_type": DictConfig,
    }


def loaded_modules(*packages: str) -> set[str]:
    return {name for name in sys.modules if name.split(".")[0] in packages}


@pytest.fixture(params=["zip", "legacy"])  # torch.save's format since torch 1.6, and the one before
def lightning_ckpt(request, tiny, tmp_path) -> tuple[Path, dict]:
    """A Lightning 1.2.9 best.ckpt of the tiny generator, saved while its stand-in classes were importable."""
    path = tmp_path / "best.ckpt"
    with importable(ModelCheckpoint, DictConfig, AnyNode, Metadata):
        checkpoint = lightning_1_2_9_checkpoint(tiny.net.generator)
        torch.save(checkpoint, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, checkpoint


@torch.no_grad()
def test_lightning_best_ckpt_loads_without_lightning_or_omegaconf(tiny, lightning_ckpt):
    path, _ = lightning_ckpt
    with pytest.raises(pickle.UnpicklingError):  # why this file needs more than torch.load's weights_only
        torch.load(path, weights_only=True)
    assert not loaded_modules("pytorch_lightning", "omegaconf")

    loaded = load_lama(path, TINY)
    assert not loaded.training and not loaded.scripted
    images, mask = batch(24, 40)
    assert torch.equal(loaded(images, mask), tiny(images, mask))
    assert not loaded_modules("pytorch_lightning", "omegaconf")


def test_unknown_classes_come_back_as_inert_stand_ins(lightning_ckpt):
    path, checkpoint = lightning_ckpt
    contents = read_checkpoint(path)
    ((callback, callback_state),) = contents["callbacks"].items()
    assert issubclass(callback, Unresolved) and callback is not ModelCheckpoint
    assert (callback.__module__, callback.__name__) == (
        "pytorch_lightning.callbacks.model_checkpoint",
        "ModelCheckpoint",
    )
    assert torch.equal(callback_state["best_model_score"], torch.tensor(0.93))
    config = contents["hyper_parameters"]
    assert isinstance(config, Unresolved) and type(config) is contents["hparams_type"]
    generator_config = config.state["_content"]["generator"]
    assert generator_config.state["_parent"] is config and generator_config.state["_content"]["ngf"].state["_val"] == 64
    cache = config.state["_metadata"].state["resolver_cache"]  # a defaultdict: not allowed, filled item by item
    assert isinstance(cache, Unresolved) and cache.items == {"oc.env": {"HOME": "/root"}}
    expected, got = checkpoint["optimizer_states"][0], contents["optimizer_states"][0]
    assert got["param_groups"] == expected["param_groups"]
    assert torch.equal(got["state"][0]["exp_avg"], expected["state"][0]["exp_avg"])
    assert list(contents["state_dict"]) == list(checkpoint["state_dict"])


@pytest.mark.parametrize("protocol", [2, 3])  # torch.save's default, and one that names builtins as Python 3 does
def test_tensors_and_plain_containers_come_back_as_themselves(tmp_path, protocol):
    saved = {"set": {1, 2}, "frozen": frozenset({3}), "ordered": collections.OrderedDict(a=torch.ones(2))}
    torch.save({**saved, "parameter": nn.Parameter(torch.arange(3.0))}, tmp_path / "x.pt", pickle_protocol=protocol)
    contents = read_checkpoint(tmp_path / "x.pt")
    assert {k: type(v) for k, v in contents.items()} == {
        "set": set,
        "frozen": frozenset,
        "ordered": collections.OrderedDict,
        "parameter": nn.Parameter,
    }
    assert (
        contents["set"] == {1, 2} and contents["frozen"] == {3} and torch.equal(contents["ordered"]["a"], torch.ones(2))
    )
    assert torch.equal(contents["parameter"], torch.arange(3.0))


@lives_in("somelib.things")
class Tags(list):
    """A list subclass: pickled as a new object whose elements are appended."""


def test_stand_ins_of_list_subclasses_keep_their_elements(tmp_path):
    with importable(Tags):
        torch.save({"tags": Tags(["a", torch.ones(1)])}, tmp_path / "x.pt")
    tags = read_checkpoint(tmp_path / "x.pt")["tags"]
    assert isinstance(tags, Unresolved) and tags.elements[0] == "a" and torch.equal(tags.elements[1], torch.ones(1))


def test_a_malicious_pickle_is_neither_imported_nor_called(tiny, tmp_path, monkeypatch):
    ran = tmp_path / "ran"
    (tmp_path / "vprlib_trap.py").write_text(f"open({str(ran)!r}, 'w').close()\n\n\ndef boom(*args):\n    pass\n")

    @lives_in("vprlib_trap")
    def boom(*args):
        raise AssertionError("only pickled by reference")

    class Call:
        def __init__(self, function, *args):
            self.function, self.args = function, args

        def __reduce__(self):
            return self.function, self.args

    state = {f"generator.{k}": v for k, v in tiny.net.generator.state_dict().items()}
    with importable(boom):
        torch.save({"state_dict": state, "shell": Call(os.system, f"touch {ran}"), "trap": Call(boom)}, tmp_path / "x")
    monkeypatch.syspath_prepend(str(tmp_path))  # importing vprlib_trap now would run it

    contents = read_checkpoint(tmp_path / "x")
    load_lama(tmp_path / "x", TINY)
    assert not ran.exists() and "vprlib_trap" not in sys.modules
    shell = contents["shell"]
    assert isinstance(shell, Unresolved) and type(shell).__name__ == "system" and shell.args == (f"touch {ran}",)
    assert type(contents["trap"]).__module__ == "vprlib_trap"


def test_a_pickle_cannot_alter_the_functions_it_may_call():
    rebuild = torch._utils._rebuild_tensor_v2
    defaults = rebuild.__defaults__
    # GLOBAL torch._utils._rebuild_tensor_v2, then BUILD with slot state {"__defaults__": (7,)}: setattr on it.
    payload = b"ctorch._utils\n_rebuild_tensor_v2\n" + pickle.dumps((None, {"__defaults__": (7,)}), 0)[:-1] + b"b."
    try:
        loaded = InertUnpickler(io.BytesIO(payload)).load()
        assert loaded.__defaults__ == (7,)
        assert rebuild.__defaults__ == defaults
    finally:
        rebuild.__defaults__ = defaults


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("drop", r"missing \(1\): model\.5\.conv1\.ffc\.convg2g\.fu\.conv_layer\.weight"),
        ("add", r"unexpected \(1\): model\.99\.weight"),
        ("replace", r"not tensors \(1\): model\.5\.conv1\.ffc\.convg2g\.fu\.conv_layer\.weight"),
    ],
)
def test_a_checkpoint_without_exactly_the_generator_s_weights_is_refused_naming_keys(tiny, tmp_path, change, named):
    state = {f"generator.{k}": v for k, v in tiny.net.generator.state_dict().items()}
    key = "generator.model.5.conv1.ffc.convg2g.fu.conv_layer.weight"
    if change == "drop":
        state.pop(key)
    elif change == "add":
        state["generator.model.99.weight"] = torch.zeros(1)
    else:
        state[key] = "not a tensor"
    torch.save({"state_dict": state}, tmp_path / "best.ckpt")
    with pytest.raises(ValueError, match=named):
        load_lama(tmp_path / "best.ckpt", TINY)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    torch.save({"state_dict": {"discriminator.model0.weight": torch.zeros(1)}}, tmp_path / "best.ckpt")
    with pytest.raises(ValueError, match=r"missing \(\d+\): model\.1\.bn_l\.bias, .* \.\.\.; unexpected \(1\)"):
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


@torch.no_grad()
def test_torchscript_traced_from_the_bare_generator(tiny, tmp_path):
    traced = torch.jit.trace(tiny.net.generator, torch.rand(1, 4, 32, 32), check_trace=False)
    traced.save(str(tmp_path / "big-lama.pt"))
    loaded = load_lama(tmp_path / "big-lama.pt", TINY)
    assert loaded.scripted
    images, mask = batch(37, 45, seed=2)
    torch.testing.assert_close(loaded(images, mask), tiny(images, mask))


class ThreeInputs(nn.Module):
    def forward(self, image: torch.Tensor, mask: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return image * mask + extra


def test_torchscript_of_another_signature_is_refused_naming_the_expected_exports(tmp_path):
    torch.jit.script(ThreeInputs()).save(str(tmp_path / "big-lama.pt"))
    with pytest.raises(ValueError, match=r"takes 3 inputs\. Expected LaMa's export .*forward\(image .* mask .*bare"):
        load_lama(tmp_path / "big-lama.pt", TINY)
