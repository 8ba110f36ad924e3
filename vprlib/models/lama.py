"""Inpainter L: Big-LaMa, the Fast Fourier Convolution ResNet generator of Suvorov et al., "Resolution-robust
Large Mask Inpainting with Fourier Convolutions" (WACV 2022), used by the paper (III-B, [39]) to remove dynamic objects.

The generator here is written to the published big-lama configuration (ngf 64, 3 stride-2 downsamplings, 18 FFC
ResNet blocks whose channels are 75% global (spectral) and 25% local, no LFU, reflect padding, sigmoid output) and
its state_dict keys and shapes are exactly those of the `generator.` part of the published `best.ckpt`
(e.g. `model.5.conv1.ffc.convg2g.fu.conv_layer.weight`), so that checkpoint loads strictly.

Inference follows LaMa's predictor: mask binarised (> 0), image and mask padded bottom/right to a multiple of 8 by
symmetric reflection (numpy's `symmetric`, as LaMa's dataset does), generator input = image * (1 - mask) ++ mask,
output mask * pred + (1 - mask) * image, cropped back.

`load_lama` reads big-lama.zip's `models/best.ckpt` as distributed: a PyTorch Lightning 1.2.9 checkpoint that
pickles, besides tensors, an OmegaConf DictConfig and a callbacks dict keyed by Lightning's ModelCheckpoint class.
`read_checkpoint` unpickles it with neither library installed and without running pickled code: tensors and plain
containers are rebuilt, every other class becomes an inert `Unresolved` stand-in. The TorchScript `big-lama.pt`
(LaMa's `bin/to_jit.py` export, as lama-cleaner distributes it: `(image, mask) -> inpainted`) and a TorchScript
traced from the bare generator (one B,4,H,W input) are accepted too and run through the same padding and blending.
"""

import collections
import pickle
from pathlib import Path

import torch
from torch import nn

from vprlib.models.archs import LAMA_ARCHS, LamaConfig


class FourierUnit(nn.Module):
    """1x1 convolution in the frequency domain: rFFT2 (ortho) -> conv+BN+ReLU on (real, imag) -> inverse rFFT2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(2 * channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        spec = torch.fft.rfftn(x.float(), dim=(-2, -1), norm="ortho")  # B,C,H,W/2+1 complex
        # Interleave real/imag per channel (c0.re, c0.im, c1.re, ...), the layout the published weights expect.
        spec = torch.stack((spec.real, spec.imag), dim=2).reshape(b, 2 * c, h, -1)
        spec = self.relu(self.bn(self.conv_layer(spec))).float()
        spec = spec.reshape(b, c, 2, h, -1)
        spec = torch.complex(spec[:, :, 0], spec[:, :, 1])
        return torch.fft.irfftn(spec, s=(h, w), dim=(-2, -1), norm="ortho")


class SpectralTransform(nn.Module):
    """Global branch of an FFC: 1x1 reduce -> Fourier unit (+ skip) -> 1x1 expand (stride 1, no LFU)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half = out_channels // 2
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(True))
        self.fu = FourierUnit(half)
        self.conv2 = nn.Conv2d(half, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(x + self.fu(x))


Pair = tuple[torch.Tensor | None, torch.Tensor | None]  # (local, global) feature maps; None where a branch is empty


class FFC(nn.Module):
    """Fast Fourier Convolution: local/global channel split with four cross paths (absent paths hold no weights)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, ratio_in: float, ratio_out: float, stride=1, padding=0):
        super().__init__()
        in_g, out_g = int(in_ch * ratio_in), int(out_ch * ratio_out)
        in_l, out_l = in_ch - in_g, out_ch - out_g

        def conv(cin: int, cout: int) -> nn.Conv2d | None:
            if cin == 0 or cout == 0:
                return None
            return nn.Conv2d(cin, cout, kernel, stride, padding, bias=False, padding_mode="reflect")

        self.convl2l, self.convl2g, self.convg2l = conv(in_l, out_l), conv(in_l, out_g), conv(in_g, out_l)
        self.convg2g = SpectralTransform(in_g, out_g) if in_g and out_g else None
        if self.convg2g is not None and stride != 1:
            raise ValueError("a strided FFC with a global-to-global path is not part of big-lama")

    @staticmethod
    def _sum(*terms: torch.Tensor | None) -> torch.Tensor | None:
        present = [t for t in terms if t is not None]
        return sum(present[1:], present[0]) if present else None

    def forward(self, x: Pair) -> Pair:
        x_l, x_g = x

        def apply(path: nn.Module | None, t: torch.Tensor | None) -> torch.Tensor | None:
            return None if path is None or t is None else path(t)

        out_l = self._sum(apply(self.convl2l, x_l), apply(self.convg2l, x_g))
        out_g = self._sum(apply(self.convl2g, x_l), apply(self.convg2g, x_g))
        return out_l, out_g


class FFCBnAct(nn.Module):
    """FFC followed by BatchNorm and ReLU on each non-empty branch."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, ratio_in: float, ratio_out: float, stride=1, padding=0):
        super().__init__()
        self.ffc = FFC(in_ch, out_ch, kernel, ratio_in, ratio_out, stride, padding)
        out_g = int(out_ch * ratio_out)
        self.bn_l = nn.BatchNorm2d(out_ch - out_g) if out_ch - out_g else None
        self.bn_g = nn.BatchNorm2d(out_g) if out_g else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor | Pair) -> Pair:
        x_l, x_g = self.ffc(x if isinstance(x, tuple) else (x, None))
        x_l = None if x_l is None else self.act(self.bn_l(x_l))
        x_g = None if x_g is None else self.act(self.bn_g(x_g))
        return x_l, x_g


class FFCResnetBlock(nn.Module):
    """Two 3x3 FFC-BN-ReLU layers with an identity skip on both branches."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.conv1 = FFCBnAct(dim, dim, 3, ratio, ratio, padding=1)
        self.conv2 = FFCBnAct(dim, dim, 3, ratio, ratio, padding=1)

    def forward(self, x: Pair) -> Pair:
        y_l, y_g = self.conv2(self.conv1(x))
        return x[0] + y_l, x[1] + y_g


class ConcatBranches(nn.Module):
    """(local, global) -> one tensor with the local channels first."""

    def forward(self, x: Pair) -> torch.Tensor:
        return torch.cat([t for t in x if t is not None], dim=1)


def _generator_layers(config: LamaConfig) -> list[nn.Module]:
    ngf, mf, r = config.ngf, config.max_features, config.ratio_global
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), FFCBnAct(4, ngf, 7, 0.0, 0.0)]
    for i in range(config.n_downsampling):
        ratio_out = r if i == config.n_downsampling - 1 else 0.0  # the last one splits into local/global
        layers.append(FFCBnAct(min(mf, ngf * 2**i), min(mf, ngf * 2 ** (i + 1)), 3, 0.0, ratio_out, 2, 1))
    dim = min(mf, ngf * 2**config.n_downsampling)
    layers += [FFCResnetBlock(dim, r) for _ in range(config.n_blocks)]
    layers.append(ConcatBranches())
    for i in range(config.n_downsampling):
        mult = 2 ** (config.n_downsampling - i)
        cin, cout = min(mf, ngf * mult), min(mf, ngf * mult // 2)
        layers += [nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1), nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Sigmoid()]
    return layers


class LamaGenerator(nn.Module):
    """FFC ResNet generator. B,4,H,W (masked image ++ mask; H,W multiples of 2**n_downsampling) -> B,3,H,W in [0,1]."""

    def __init__(self, config: LamaConfig = LAMA_ARCHS["big-lama"]):
        super().__init__()
        self.model = nn.Sequential(*_generator_layers(config))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LamaNet(nn.Module):
    """LaMa's inference step at a padded size: (image B,3,H,W, mask B,1,H,W) -> blended B,3,H,W.

    Same signature as the published TorchScript `big-lama.pt`, so either runs inside `LamaInpainter`. The generator
    is a `LamaGenerator` or a TorchScript traced from one (B,4,H,W -> B,3,H,W).
    """

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pred = self.generator(torch.cat([image * (1 - mask), mask], dim=1))
        return mask * pred + (1 - mask) * image


def pad_symmetric(x: torch.Tensor, modulo: int, min_size: int = 0) -> torch.Tensor:
    """Pad B,C,H,W bottom/right to multiples of `modulo` (and at least `min_size`) like numpy's 'symmetric' mode."""
    for dim in (-2, -1):
        n = x.shape[dim]
        extra = max(-n % modulo, min_size - n)
        if extra:
            k = torch.arange(n, n + extra, device=x.device) % (2 * n)
            mirrored = torch.where(k < n, k, 2 * n - 1 - k)
            x = torch.cat([x, x.index_select(dim, mirrored)], dim=dim)
    return x


class LamaInpainter(nn.Module):
    """Big-LaMa object removal. images B,3,H,W in [0,1], mask B,1,H,W (1 = fill) -> B,3,H,W float32.

    Pixels outside the mask are returned unchanged (bit for bit). Any H,W: inputs are padded to `pad_modulo`.
    """

    def __init__(self, net: nn.Module, config: LamaConfig = LAMA_ARCHS["big-lama"]):
        super().__init__()
        self.net = net
        self.config = config
        self.scripted = any(isinstance(m, torch.jit.ScriptModule) for m in net.modules())

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.dim() == 3:
            mask = mask[:, None]
        hole = mask > 0
        h, w = images.shape[-2:]
        # Reflect padding in the bottleneck needs it at least 2 pixels wide.
        min_size = 2 * 2**self.config.n_downsampling
        image = pad_symmetric(images.float(), self.config.pad_modulo, min_size)
        padded_mask = pad_symmetric(hole.float(), self.config.pad_modulo, min_size)
        # TorchScript modules are not autocast-aware: run them in float32. (channels_last measured no faster.)
        use_bf16 = self.config.bf16 and image.device.type == "cuda" and not self.scripted
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = self.net(image, padded_mask)
        out = out[..., :h, :w].float().contiguous()
        return torch.where(hole, out, images.float())


def build_lama(name: str = "big-lama", seed: int = 0, **overrides) -> LamaInpainter:
    """A LaMa inpainter of a named architecture with seeded random weights (no download)."""
    if name not in LAMA_ARCHS:
        raise ValueError(f"unknown LaMa architecture {name!r}; known: {sorted(LAMA_ARCHS)}")
    config = LamaConfig(**{**LAMA_ARCHS[name].__dict__, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LamaInpainter(LamaNet(LamaGenerator(config)), config).eval()


class Unresolved:
    """Stands in for an object of a class that a checkpoint names but vprlib does not load (Lightning's
    ModelCheckpoint, OmegaConf's DictConfig and nodes, typing.Any, ...). It records what the pickle hands it
    (constructor arguments, state, dict items, list elements) and does nothing else: no code of the named class
    runs, since that class is never imported."""

    def __new__(cls, *args, **kwargs):
        stand_in = super().__new__(cls)
        stand_in.args, stand_in.kwargs, stand_in.state, stand_in.items, stand_in.elements = args, kwargs, None, {}, []
        return stand_in

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:  # pickle fills stand-ins of dict subclasses item by item
        self.items[key] = value

    def extend(self, values) -> None:  # ... and those of list subclasses a batch of elements at a time
        self.elements.extend(values)


# The globals a checkpoint may name that come back as themselves: tensor rebuilding and plain containers.
# Protocol-2 pickles spell builtins with Python 2's module name.
_ALLOWED_GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "__builtin__.set": set,
    "builtins.frozenset": frozenset,
    "__builtin__.frozenset": frozenset,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
}


class InertUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds tensors and plain containers only (`_ALLOWED_GLOBALS`).

    Every other global a pickle names becomes a subclass of `Unresolved` of that module and name, made here: nothing
    is imported and no pickled class or function is called, so a pickle whose reduce calls os.system only makes an
    inert stand-in named `system`. Allowed functions come back wrapped anew for each load, so a pickle that sets
    attributes on an object it loaded (pickle's BUILD) can change only that wrapper, never torch's function.
    """

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get(f"{module}.{name}")
        if isinstance(allowed, type):
            return allowed
        if allowed is not None:
            return _wrapped(allowed)
        # Pickle's memo hands back this same class wherever the pickle names it again (a dict key stays one key).
        return type(name, (Unresolved,), {"__module__": module, "__qualname__": name})


def _wrapped(function):
    """A new function that calls `function`: what a pickle may alter in place of `function` itself."""

    def call(*args, **kwargs):
        return function(*args, **kwargs)

    return call


class _InertPickle:
    """What torch.load needs of a pickle module (`Unpickler`, `load`), unpickling with `InertUnpickler`."""

    Unpickler = InertUnpickler

    @staticmethod
    def load(file, **kwargs):
        return InertUnpickler(file, **kwargs).load()


def read_checkpoint(path: str | Path):
    """The contents of a torch.save file, a Lightning checkpoint included, with tensors and plain containers rebuilt
    and objects of any other class as inert `Unresolved` stand-ins (see `InertUnpickler`).

    torch.load(weights_only=True) refuses LaMa's best.ckpt: Lightning 1.2.9 pickled an OmegaConf DictConfig into it
    (hyper_parameters, and the class itself as hparams_type) and keyed its callbacks dict by the ModelCheckpoint
    class. Allow-listing those (torch.serialization.safe_globals) would need pytorch_lightning and omegaconf
    imported and still fail on any class not listed in advance; stand-ins need neither library and cover any name.
    torch.load's weights_only=False is what lets it take this pickle module; the module is what keeps it safe.
    """
    return torch.load(path, map_location="cpu", pickle_module=_InertPickle, weights_only=False)


def _read_state_dict(path: Path) -> dict:
    """The state_dict of a .safetensors file, or of a torch.save file (its "state_dict" entry when it has one)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, neither a state_dict nor a checkpoint with one")
    return state


def generator_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The generator's weights out of a LaMa training checkpoint (`generator.` prefix stripped; discriminator,
    loss and evaluator weights dropped). A bare generator state_dict is returned as is."""
    prefix = "generator."
    if not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _generator_weights(path: Path, generator: LamaGenerator) -> dict[str, torch.Tensor]:
    """The generator's tensors in a checkpoint; ValueError naming the keys unless they are exactly the generator's
    keys, all tensors (the shapes are checked by the strict load that follows)."""
    state = generator_state_dict(_read_state_dict(path))
    expected = generator.state_dict().keys()
    problems = {
        "missing": sorted(expected - state.keys()),
        "unexpected": sorted(state.keys() - expected),
        "not tensors": sorted(k for k in expected & state.keys() if not isinstance(state[k], torch.Tensor)),
    }
    found = [
        f"{what} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
        for what, keys in problems.items()
        if keys
    ]
    if found:
        raise ValueError(
            f"{path} does not hold this LaMa generator's weights (keys without 'generator.'); " + "; ".join(found)
        )
    return state


def _torchscript_net(path: Path) -> nn.Module:
    """A TorchScript LaMa as (image, mask) -> inpainted: LaMa's export as is, a bare generator wrapped in `LamaNet`.

    The number of inputs of its forward tells them apart; anything else is refused naming the expected exports.
    """
    module = torch.jit.load(str(path), map_location="cpu").eval()
    inputs = len(module.forward.schema.arguments) - 1  # the first argument is self
    if inputs == 2:
        return module
    if inputs == 1:
        return LamaNet(module)
    raise ValueError(
        f"{path} is a TorchScript module whose forward takes {inputs} inputs. Expected LaMa's export as lama-cleaner "
        "distributes it (big-lama.pt, from LaMa's bin/to_jit.py: forward(image B,3,H,W, mask B,1,H,W) -> inpainted "
        "image) or the bare generator traced on one B,4,H,W input (masked image ++ mask); or use big-lama.zip's "
        "models/best.ckpt."
    )


def load_lama(path: str | Path, config: LamaConfig = LAMA_ARCHS["big-lama"]) -> LamaInpainter:
    """Load Big-LaMa from LaMa's `best.ckpt` as distributed (or a .safetensors/.pt state_dict) or a TorchScript.

    Checkpoints are read by `read_checkpoint` (no pickled code runs); the `generator.` weights load strictly into a
    generator of `config` and everything else in the file (discriminator, losses, evaluators, optimizer states,
    callbacks, hyper-parameters) is left unused. Returns the inpainter in eval mode on CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"LaMa checkpoint {path} not found. Download big-lama.zip from the LaMa repository "
            "(github.com/advimman/lama, 'big-lama') and unzip it so that big-lama/models/best.ckpt exists, or get "
            "the TorchScript big-lama.pt, and put it at that path."
        )
    if _is_torchscript(path):
        return LamaInpainter(_torchscript_net(path), config).eval()
    generator = LamaGenerator(config)
    generator.load_state_dict(_generator_weights(path, generator), strict=True)
    return LamaInpainter(LamaNet(generator), config).eval()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a `constants.pkl`/`code/` entry; state dicts are not."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
