"""Reference ImageNet architectures with the published shapes, for calibrating the latency model.

Only the layer shapes matter (the weights are random): the latency model
(:mod:`edgekit.bench.predict`) turns a forward pass into fused kernels and fits its coefficients
on published latencies of these networks. MACs at 224² with 1000 classes (Conv2d + Linear,
counted as :func:`edgekit.inspect.layer_macs` does) against the published figures:

=================== ========== ============ ===================================================
network             here       published    layout
=================== ========== ============ ===================================================
mobilenet_v1        568.7 M    569 M        Howard et al. 2017, width 1.0
mobilenet_v2        300.8 M    300 M        ``edgekit.zoo`` MobileNetV2, 1000 classes
mobilenet_v3_large  ~217 M     219 M        Howard et al. 2019 (torchvision layout, SE ``/4``)
mobilenet_v3_small  ~57 M      56 M         same
efficientnet_b0     ~386 M     390 M        Tan & Le 2019 (SE on the block input ``/4``)
resnet18            1.82 G     1.82 G       He et al. 2016, basic blocks
resnet50            4.09 G     4.1 G        bottleneck, stride on the 3×3 (torchvision "v1.5")
=================== ========== ============ ===================================================

``create_refnet(name, width=α)`` narrows MobileNetV1 and the ResNets (channels × α, multiples of
8) for calibrating on more shapes than the published networks (``edgekit targets calibrate``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from edgekit.zoo.blocks import ConvBNAct, SqueezeExcite
from edgekit.zoo.mobilenetv2 import MobileNetV2

__all__ = ["PUBLISHED_MACS", "REFNETS", "WIDTH_NETS", "create_refnet"]

PUBLISHED_MACS = {"mobilenet_v1": 569e6, "mobilenet_v2": 300e6, "mobilenet_v3_large": 219e6,
                  "mobilenet_v3_small": 56e6, "efficientnet_b0": 390e6, "resnet18": 1.82e9,
                  "resnet50": 4.1e9}


def _div8(v: float) -> int:
    """Round to a multiple of 8, never below 90 % of ``v`` (MobileNet's ``_make_divisible``)."""
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


class _Head(nn.Module):
    """Global average pool → (optional hidden Linear + act) → Linear."""

    def __init__(self, cin: int, classes: int, hidden: int | None = None,
                 act: Callable[[], nn.Module] = nn.Hardswish) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(cin, hidden), act()]
            cin = hidden
        self.fc = nn.Sequential(*layers, nn.Linear(cin, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class _Residual(nn.Module):
    """``body(x) (+ x when shapes match)``; ``shortcut`` projects otherwise; ``post`` after."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None, *, add: bool = True,
                 post: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.shortcut, self.add = body, shortcut, add
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.add:
            y = y + (self.shortcut(x) if self.shortcut is not None else x)
        return self.post(y)


class _HardSE(SqueezeExcite):
    """MobileNetV3 squeeze-excitation: hard-sigmoid gate."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__(channels, hidden=hidden)
        self.gate = nn.Hardsigmoid()


class _SiluSE(SqueezeExcite):
    """EfficientNet squeeze-excitation: SiLU inside, sigmoid gate."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__(channels, hidden=hidden)
        self.act = nn.SiLU()


def _mbconv(cin: int, exp: int, cout: int, k: int, stride: int, act: Callable[[], nn.Module],
            se: nn.Module | None) -> nn.Module:
    layers: list[nn.Module] = []
    if exp != cin:
        layers.append(ConvBNAct(cin, exp, 1, act=act))
    layers.append(ConvBNAct(exp, exp, k, stride=stride, groups=exp, act=act))
    if se is not None:
        layers.append(se)
    layers.append(ConvBNAct(exp, cout, 1, act=None))
    return _Residual(nn.Sequential(*layers), add=stride == 1 and cin == cout)


def mobilenet_v1(classes: int = 1000, width: float = 1.0) -> nn.Module:
    cin = _div8(32 * width)
    layers: list[nn.Module] = [ConvBNAct(3, cin, 3, stride=2)]
    for c, s in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                 (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)):
        cout = _div8(c * width)
        layers += [ConvBNAct(cin, cin, 3, stride=s, groups=cin), ConvBNAct(cin, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, _Head(cin, classes))


# (kernel, expanded, out, SE, hard-swish, stride)
_V3_LARGE = ((3, 16, 16, 0, 0, 1), (3, 64, 24, 0, 0, 2), (3, 72, 24, 0, 0, 1),
             (5, 72, 40, 1, 0, 2), (5, 120, 40, 1, 0, 1), (5, 120, 40, 1, 0, 1),
             (3, 240, 80, 0, 1, 2), (3, 200, 80, 0, 1, 1), (3, 184, 80, 0, 1, 1),
             (3, 184, 80, 0, 1, 1), (3, 480, 112, 1, 1, 1), (3, 672, 112, 1, 1, 1),
             (5, 672, 160, 1, 1, 2), (5, 960, 160, 1, 1, 1), (5, 960, 160, 1, 1, 1))
_V3_SMALL = ((3, 16, 16, 1, 0, 2), (3, 72, 24, 0, 0, 2), (3, 88, 24, 0, 0, 1),
             (5, 96, 40, 1, 1, 2), (5, 240, 40, 1, 1, 1), (5, 240, 40, 1, 1, 1),
             (5, 120, 48, 1, 1, 1), (5, 144, 48, 1, 1, 1), (5, 288, 96, 1, 1, 2),
             (5, 576, 96, 1, 1, 1), (5, 576, 96, 1, 1, 1))


def _mobilenet_v3(cfg: tuple, last: int, hidden: int, classes: int) -> nn.Module:
    layers: list[nn.Module] = [ConvBNAct(3, 16, 3, stride=2, act=nn.Hardswish)]
    cin = 16
    for k, exp, cout, se, hs, s in cfg:
        act = nn.Hardswish if hs else nn.ReLU
        layers.append(_mbconv(cin, exp, cout, k, s, act,
                              _HardSE(exp, _div8(exp / 4)) if se else None))
        cin = cout
    layers.append(ConvBNAct(cin, last, 1, act=nn.Hardswish))
    return nn.Sequential(*layers, _Head(last, classes, hidden))


def mobilenet_v3_large(classes: int = 1000) -> nn.Module:
    return _mobilenet_v3(_V3_LARGE, 960, 1280, classes)


def mobilenet_v3_small(classes: int = 1000) -> nn.Module:
    return _mobilenet_v3(_V3_SMALL, 576, 1024, classes)


def efficientnet_b0(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [ConvBNAct(3, 32, 3, stride=2, act=nn.SiLU)]
    cin = 32
    for t, k, s, cout, n in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                             (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                             (6, 3, 1, 320, 1)):
        for i in range(n):
            exp = cin * t
            layers.append(_mbconv(cin, exp, cout, k, s if i == 0 else 1, nn.SiLU,
                                  _SiluSE(exp, max(1, cin // 4))))
            cin = cout
    layers.append(ConvBNAct(cin, 1280, 1, act=nn.SiLU))
    return nn.Sequential(*layers, _Head(1280, classes))


def _resnet(bottleneck: bool, depths: tuple[int, ...], classes: int,
            multiplier: float = 1.0) -> nn.Module:
    stem = _div8(64 * multiplier)
    layers: list[nn.Module] = [ConvBNAct(3, stem, 7, stride=2), nn.MaxPool2d(3, 2, padding=1)]
    cin, exp = stem, 4 if bottleneck else 1
    for stage, n in enumerate(depths):
        width = _div8(64 * 2 ** stage * multiplier)
        for i in range(n):
            s = 2 if stage > 0 and i == 0 else 1
            cout = width * exp
            if bottleneck:
                body = nn.Sequential(ConvBNAct(cin, width, 1),
                                     ConvBNAct(width, width, 3, stride=s),
                                     ConvBNAct(width, cout, 1, act=None))
            else:
                body = nn.Sequential(ConvBNAct(cin, width, 3, stride=s),
                                     ConvBNAct(width, cout, 3, act=None))
            short = (None if s == 1 and cin == cout
                     else ConvBNAct(cin, cout, 1, stride=s, act=None))
            layers.append(_Residual(body, short, post=nn.ReLU()))
            cin = cout
    return nn.Sequential(*layers, _Head(cin, classes))


def resnet18(classes: int = 1000, width: float = 1.0) -> nn.Module:
    return _resnet(False, (2, 2, 2, 2), classes, width)


def resnet50(classes: int = 1000, width: float = 1.0) -> nn.Module:
    return _resnet(True, (3, 4, 6, 3), classes, width)


REFNETS: dict[str, Callable[[int], nn.Module]] = {
    "mobilenet_v1": mobilenet_v1, "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_large": mobilenet_v3_large, "mobilenet_v3_small": mobilenet_v3_small,
    "efficientnet_b0": efficientnet_b0, "resnet18": resnet18, "resnet50": resnet50}


WIDTH_NETS = ("mobilenet_v1", "resnet18", "resnet50")  # take a channel width multiplier


def create_refnet(name: str, classes: int = 1000, width: float = 1.0) -> nn.Module:
    """A reference network in eval mode (random weights: only the shapes are meaningful).

    ``width`` multiplies every layer's channels (rounded to multiples of 8) for the networks of
    :data:`WIDTH_NETS` (MobileNetV1's α; the same for the ResNets)."""
    if name not in REFNETS:
        raise KeyError(f"unknown reference network {name!r}; known: {', '.join(REFNETS)}")
    if width != 1.0:
        if name not in WIDTH_NETS:
            raise ValueError(f"{name} has no width multiplier (only {', '.join(WIDTH_NETS)})")
        return REFNETS[name](classes, width).eval()  # type: ignore[call-arg]
    return REFNETS[name](classes).eval()
