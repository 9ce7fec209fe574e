"""Building blocks shared by the zoo architectures, each written once.

Conventions every block follows, because later stages depend on them:

* Attention pooling is written as tensor reductions (``x.mean(dim=(2, 3), keepdim=True)``,
  ``x.amax(dim=(2, 3), keepdim=True)``, and over ``dim=1`` for spatial gates), never as
  adaptive max pooling: litert-torch has no lowering for ``adaptive_max_pool2d`` and the reductions
  export to plain ``ReduceMean``/``ReduceMax`` in ONNX.
* A gate is applied as a plain element-wise multiplication ``x * gate`` and its layers are
  ordinary ``nn.Conv2d``/``nn.BatchNorm2d`` modules with stable attribute names (``fc1``, ``fc2``,
  ``conv``, ``bn``, ...), so Torch-Pruning's dependency graph can trace and shrink them.
* Convolutions use "same" padding for stride 1 (odd kernels only); with stride 2 the padding is
  the symmetric ``dilation * (k - 1) // 2`` of PyTorch rather than Keras' asymmetric "same".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

ActFactory = Callable[[], nn.Module]

__all__ = [
    "CBAM",
    "ChannelGate",
    "ConvBNAct",
    "GaussianNoise",
    "InvertedResidual",
    "MultiReceptiveField",
    "SeparableConv2d",
    "SpatialGate",
    "SqueezeExcite",
    "init_weights",
    "same_padding",
]


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 ("same"); odd kernels only."""
    if kernel_size % 2 != 1:
        raise ValueError(f"'same' padding needs an odd kernel size, got {kernel_size}")
    return dilation * (kernel_size - 1) // 2


class SeparableConv2d(nn.Module):
    """Depthwise ``k x k`` convolution followed by a pointwise ``1 x 1`` convolution.

    Mirrors Keras ``SeparableConv2D`` (depth multiplier 1): the depthwise kernel has no bias and
    the optional bias belongs to the pointwise convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 stride: int = 1, dilation: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   padding=same_padding(kernel_size, dilation),
                                   dilation=dilation, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ConvBNAct(nn.Module):
    """``Conv2d`` (no bias) → ``BatchNorm2d`` → activation (``act=None`` for a linear output)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
                 stride: int = 1, dilation: int = 1, groups: int = 1,
                 act: ActFactory | None = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=same_padding(kernel_size, dilation), dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average → ``fc1`` → ReLU → ``fc2`` → sigmoid, multiplied in.

    ``hidden`` defaults to ``max(min_hidden, channels // ratio)`` (PruDensNet: ``max(8, C//16)``).
    Both 1x1 convolutions carry a bias, as Keras ``Dense`` layers do.
    """

    def __init__(self, channels: int, *, ratio: int = 16, min_hidden: int = 8,
                 hidden: int | None = None) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // ratio) if hidden is None else hidden
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class ChannelGate(nn.Module):
    """CBAM channel attention: one shared MLP on the global-average and global-max pooled
    features, the two results summed, sigmoid, multiplied in.

    The MLP is ``channels → max(1, channels // ratio) → channels`` with biases (Keras ``Dense``).
    """

    def __init__(self, channels: int, *, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def _mlp(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(s)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return x * self.gate(self._mlp(avg) + self._mlp(mx))


class SpatialGate(nn.Module):
    """Spatial attention: ``[mean; max]`` over channels → ``k x k`` conv (2 → 1) → sigmoid,
    multiplied in. PruDensNet uses ``k = 7`` with bias, CBAM ``k = 5`` without. ``conv`` (and
    ``max_first``: ``[max; mean]``) wrap an existing gate convolution (a ``.pt2`` program's, found
    by ``edgekit.prune.graph``) so the pruning engine treats it as this block."""

    def __init__(self, kernel_size: int = 7, *, bias: bool = True, conv: nn.Conv2d | None = None,
                 max_first: bool = False) -> None:
        super().__init__()
        self.conv = conv if conv is not None else nn.Conv2d(
            2, 1, kernel_size, padding=same_padding(kernel_size), bias=bias)
        self.gate = nn.Sigmoid()
        self.max_first = max_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, peak = x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        pooled = torch.cat([peak, mean] if self.max_first else [mean, peak], dim=1)
        return x * self.gate(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial."""

    def __init__(self, channels: int, *, ratio: int = 16, spatial_kernel: int = 7,
                 spatial_bias: bool = False) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, ratio=ratio)
        self.spatial = SpatialGate(spatial_kernel, bias=spatial_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class MultiReceptiveField(nn.Module):
    """Multi-receptive-field block: ``1x1`` expand (BN+ReLU) → parallel ``3x3`` depthwise
    branches with dilations ``(1, 2, 3)`` (BN+ReLU each) → concatenate → ``1x1`` pointwise fuse
    + BN (linear). Residual connection when ``stride == 1`` and ``in == out`` channels.

    ``stride`` is applied in every depthwise branch, so the block also downsamples.
    """

    def __init__(self, in_channels: int, out_channels: int, *, expansion: float = 2.0,
                 stride: int = 1, dilations: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        hidden = int(round(in_channels * expansion))
        self.expand = ConvBNAct(in_channels, hidden, 1, act=nn.ReLU)
        self.branches = nn.ModuleList(
            ConvBNAct(hidden, hidden, 3, stride=stride, dilation=d, groups=hidden, act=nn.ReLU)
            for d in dilations
        )
        self.fuse = ConvBNAct(hidden * len(dilations), out_channels, 1, act=None)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x)
        y = self.fuse(torch.cat([branch(h) for branch in self.branches], dim=1))
        return x + y if self.use_residual else y


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al., CVPR 2018): optional ``1x1`` expand
    (ReLU6) → ``3x3`` depthwise (ReLU6) → ``1x1`` linear projection; residual when the stride is
    1 and the channel count is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int,
                 expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, act=nn.ReLU6),
            ConvBNAct(hidden, out_channels, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class GaussianNoise(nn.Module):
    """Adds ``N(0, sigma²)`` noise in training mode only; the identity in eval mode (and so in
    every exported graph). Equivalent to Keras ``GaussianNoise``."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.sigma > 0:
            return x + torch.randn_like(x) * self.sigma
        return x

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def init_weights(model: nn.Module) -> nn.Module:
    """He (Kaiming) normal initialisation, fan-in, for every convolution and linear layer, with
    zero biases; BatchNorm at identity.

    PyTorch's default (Kaiming-uniform with a = √5) shrinks the signal by about √3 per layer.
    Networks without BatchNorm and with multiplicative attention gates, such as DSConv-CBAM,
    then start with logits that do not depend on the input, and did not learn at all in 600
    AdamW steps on the phantoms; with this initialisation they do. Keras, where DSConv-CBAM
    was published, initialises with Glorot-uniform and zero biases.
    """
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return model
