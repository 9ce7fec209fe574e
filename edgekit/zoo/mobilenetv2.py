"""MobileNetV2, width 1.0: the baseline the DSConv-CBAM paper compares against and the most
published edge-latency reference.

Reference: Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018. The layout and initialisation follow the common reference
implementation (torchvision's), which this module re-implements because torchvision and timm
are not available with our CPU build of torch:

* stem 3×3 conv stride 2, 32 channels, BN, ReLU6;
* inverted residual stages (expansion t, channels c, repeats n, first stride s):
  (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
  (6, 320, 1, 1); residual when stride 1 and channels unchanged; linear (no activation)
  projection;
* last 1×1 conv to 1280 channels, BN, ReLU6; global average pool → Dropout 0.2 → Linear.

3,504,872 parameters with 1000 classes (as the reference), 2,228,996 with 4; 299.5 M MACs at
224² with 4 classes (300.8 M with 1000). The model returns logits (no softmax). No pretrained weights are loaded (nothing
downloads at run time).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgekit.zoo.blocks import ConvBNAct, InvertedResidual
from edgekit.zoo.registry import register_model

__all__ = ["MobileNetV2", "mobilenetv2"]

LABELS = ("glioma", "meningioma", "notumor", "pituitary")
# expansion t, output channels c, repeats n, stride of the first repeat s
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
DROPOUT = 0.2


class MobileNetV2(nn.Module):
    """MobileNetV2 at width multiplier 1.0."""

    def __init__(self, num_classes: int = 1000, *, dropout: float = DROPOUT) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, STEM_CHANNELS, 3, stride=2, act=nn.ReLU6)]
        channels = STEM_CHANNELS
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(channels, c, stride=s if i == 0 else 1,
                                               expand_ratio=t))
                channels = c
        layers.append(ConvBNAct(channels, LAST_CHANNELS, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(LAST_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


@register_model(
    "mobilenetv2",
    task="multiclass",
    modality="mri",
    num_classes=4,
    input_size=224,
    labels=LABELS,
    summary="MobileNetV2 width 1.0 baseline (inverted residuals, ReLU6); 2.23 M params",
    reference="Sandler et al. 2018, MobileNetV2, CVPR",
)
def mobilenetv2(num_classes: int, input_size: int) -> nn.Module:
    """MobileNetV2 width 1.0, randomly initialised; any ``input_size`` works (global pool)."""
    del input_size  # the global average pool makes the head independent of the input size
    return MobileNetV2(num_classes)
