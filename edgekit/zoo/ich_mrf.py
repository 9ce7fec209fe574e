"""Efficient intracranial-haemorrhage network: depthwise-separable convolutions with
multi-receptive-field blocks, six sigmoid outputs on head CT.

Reference: Yu-Ruei Chen, Chih-Chieh Chen, Chang-Fu Kuo, Ching-Heng Lin, "An efficient deep
neural network for automatic classification of acute intracranial hemorrhages in brain CT
scans", Computers in Biology and Medicine 176 (2024) 108587. Published: mean AUROC 0.952 on
RSNA ICH, "3 % of the parameters of MobileNetV3" (≈ 46 k–164 k), depthwise-separable
convolutions plus a multi-receptive-field mechanism.

The block design is not public; everything below is **chosen** (docs/SEED_MODELS.md):

* input 256×256, three CT windows stacked as channels (brain L40/W80, subdural L80/W200, bone
  L600/W2800), each scaled to [0, 1];
* stem: SeparableConv 3×3 stride 2 (3 → 16, no bias) → BN → ReLU;
* multi-receptive-field block (:class:`~edgekit.zoo.blocks.MultiReceptiveField`): 1×1 expand
  (×2, BN+ReLU) → three parallel 3×3 depthwise branches with dilation 1, 2, 3 (BN+ReLU each)
  → concatenate → 1×1 pointwise fuse + BN; residual when the shapes match. Downsampling blocks
  put stride 2 in the depthwise branches;
* stages (out channels × blocks, first block's stride): 16×1 s1 (128²), 24×2 s2 (64²),
  32×2 s2 (32²), 48×2 s2 (16²), 64×2 s2 (8²);
* head: global average pool → Dropout 0.2 → Linear 6. The model returns logits; apply a sigmoid
  per label (multi-label: any, epidural, intraparenchymal, intraventricular, subarachnoid,
  subdural). Training loss: BCE-with-logits with "any" weighted ×2.

Size: 131,409 parameters and 131 M MACs at 256² (inside the 100 k–160 k target).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgekit.zoo.blocks import MultiReceptiveField, SeparableConv2d
from edgekit.zoo.registry import register_model

__all__ = ["ICHMRFNet", "ich_mrf"]

LABELS = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
STEM_WIDTH = 16
# (out_channels, blocks, stride of the first block)
STAGES = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (48, 2, 2), (64, 2, 2))
EXPANSION = 2.0
DROPOUT = 0.2


class ICHMRFNet(nn.Module):
    """Separable stem, multi-receptive-field stages, GAP → Dropout → Linear head."""

    def __init__(self, num_classes: int = 6, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            SeparableConv2d(in_channels, STEM_WIDTH, 3, stride=2, bias=False),
            nn.BatchNorm2d(STEM_WIDTH),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        channels = STEM_WIDTH
        for width, depth, stride in STAGES:
            for i in range(depth):
                blocks.append(MultiReceptiveField(channels, width, expansion=EXPANSION,
                                                  stride=stride if i == 0 else 1))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))


@register_model(
    "ich_mrf",
    task="multilabel",
    modality="ct",
    num_classes=6,
    input_size=256,
    labels=LABELS,
    summary="Separable stem + multi-receptive-field (dilation 1/2/3) blocks; 131 k params",
    reference="Chen, Chen, Kuo, Lin 2024, Computers in Biology and Medicine 176, 108587",
)
def ich_mrf(num_classes: int, input_size: int) -> nn.Module:
    """The efficient ICH network; fully convolutional up to a global pool, any ``input_size``."""
    del input_size  # the global average pool makes the head independent of the input size
    return ICHMRFNet(num_classes)
