"""DSConv-CBAM: depthwise-separable convolutions with CBAM attention for brain-tumour MRI.

Reference: Weiyu Chen, Peiyao Sun, Yujia Zhang, "A brain tumor diagnosis approach based on deep
separable convolutional networks and attention mechanisms", Applied and Computational
Engineering 67. Reported 97.41 % accuracy on the Kaggle Brain Tumor MRI Testing folder; built
in Keras.

The published Keras layer list, with 'same' padding::

    SeparableConv2D(32, 3×3, ReLU) → MaxPool 2×2 → CBAM
    → SeparableConv2D(64, 3×3, ReLU) → MaxPool 2×2 → CBAM
    → SeparableConv2D(128, 3×3, ReLU) → MaxPool 2×2 → CBAM
    → Flatten → Dense 128 (ReLU) → Dense num_classes

CBAM (Woo et al., ECCV 2018): a shared MLP ``C → C/16 → C`` (ReLU between) on the
global-average and global-max pooled features, summed, sigmoid, multiplied in; then spatial
attention: ``[mean; max]`` over channels → 5×5 conv → sigmoid, multiplied in.

**Chosen** bias placement (the paper is silent; this reproduces the Keras layer list's
12,860,227 parameters at 224² and 4 classes exactly): separable convolutions with a pointwise
bias (Keras default), shared-MLP Dense layers with biases, the 5×5 spatial convolution without
bias.
The conv + attention trunk has 14,527 parameters and 63.8 M MACs at 224²; the whole paper
network is 76.6 M MACs (12.8 M of them in the Flatten → Dense 128 layer).

Two variants are registered:

* ``dsconv_cbam`` — the paper's head. 99.9 % of its parameters are the Flatten → Dense 128
  layer, whose input is ``(input_size / 8)² × 128`` features, so ``input_size`` must be divisible
  by 8 (:class:`InputSizeError`, a ``ConfigError`` and ``ValueError``, otherwise) and is fixed
  when the model is built. Keras flattens NHWC while this model flattens NCHW:
  the parameter count is identical, only the row order of the Dense weight differs (a Keras
  weight import must permute it).
* ``dsconv_cbam_gap`` — the same trunk with a global-average-pool head (GAP → Dense 128 ReLU →
  Dense num_classes): 31,555 parameters at 4 classes, independent of the input size.

The model returns logits (no softmax).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgekit.errors import ConfigError
from edgekit.zoo.blocks import CBAM, SeparableConv2d
from edgekit.zoo.registry import register_model

__all__ = ["DSConvCBAM", "DSConvCBAMTrunk", "InputSizeError", "dsconv_cbam", "dsconv_cbam_gap"]

LABELS = ("glioma", "meningioma", "notumor", "pituitary")
WIDTHS = (32, 64, 128)
CBAM_RATIO = 16
CBAM_SPATIAL_KERNEL = 5
HIDDEN = 128
REFERENCE = "Chen, Sun, Zhang, Applied and Computational Engineering 67"
DOWNSAMPLE = 2 ** len(WIDTHS)


class InputSizeError(ConfigError, ValueError):
    """An input size the Flatten head cannot take. A ``ConfigError`` (exit code 2 in the CLI)
    and a ``ValueError`` for plain-Python callers."""


class DSConvCBAMTrunk(nn.Module):
    """Three ``SeparableConv2D(ReLU) → MaxPool → CBAM`` stages (32, 64, 128 channels)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        for width in WIDTHS:
            stages.append(nn.Sequential(
                SeparableConv2d(in_channels, width, 3, bias=True),
                nn.ReLU(),
                nn.MaxPool2d(2),
                CBAM(width, ratio=CBAM_RATIO, spatial_kernel=CBAM_SPATIAL_KERNEL,
                     spatial_bias=False),
            ))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


class DSConvCBAM(nn.Module):
    """DSConv-CBAM with either the paper's Flatten head (``head="flatten"``) or a global
    average pool head (``head="gap"``)."""

    def __init__(self, num_classes: int = 4, input_size: int = 224, *,
                 head: str = "flatten") -> None:
        super().__init__()
        if head not in ("flatten", "gap"):
            raise ValueError(f"head must be 'flatten' or 'gap', got {head!r}")
        self.trunk = DSConvCBAMTrunk()
        channels = self.trunk.out_channels
        if head == "flatten":
            if input_size % DOWNSAMPLE != 0:
                raise InputSizeError(
                    f"dsconv_cbam flattens its feature map, so input_size must be divisible "
                    f"by {DOWNSAMPLE}; got {input_size} (try {_nearest_multiple(input_size)} or "
                    f"use 'dsconv_cbam_gap', which takes any size)"
                )
            features = channels * (input_size // DOWNSAMPLE) ** 2
        else:
            features = channels
        self.head = head
        self.input_size = input_size
        self.fc = nn.Linear(features, HIDDEN)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        x = torch.flatten(x, 1) if self.head == "flatten" else x.mean(dim=(2, 3))
        return self.classifier(self.act(self.fc(x)))


def _nearest_multiple(size: int) -> int:
    return max(DOWNSAMPLE, round(size / DOWNSAMPLE) * DOWNSAMPLE)


@register_model(
    "dsconv_cbam",
    task="multiclass",
    modality="mri",
    num_classes=4,
    input_size=224,
    labels=LABELS,
    summary="Separable convs + CBAM, Flatten→Dense head as published; 12.86 M params at 224²",
    reference=REFERENCE,
)
def dsconv_cbam(num_classes: int, input_size: int) -> nn.Module:
    """The published network; ``input_size`` must be divisible by 8 (Flatten head)."""
    return DSConvCBAM(num_classes, input_size, head="flatten")


@register_model(
    "dsconv_cbam_gap",
    task="multiclass",
    modality="mri",
    num_classes=4,
    input_size=224,
    labels=LABELS,
    summary="DSConv-CBAM trunk with a global-average-pool head; 31.6 k params",
    reference=REFERENCE,
)
def dsconv_cbam_gap(num_classes: int, input_size: int) -> nn.Module:
    """The DSConv-CBAM trunk with a GAP head; any ``input_size`` works."""
    return DSConvCBAM(num_classes, input_size, head="gap")
