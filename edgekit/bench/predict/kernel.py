"""One fused kernel of a forward pass: what it computes and the elements it moves.

The record both kernel readers produce (:mod:`.torch_graph` from an ``nn.Module``,
:mod:`.onnx_graph` from an ONNX graph) and the latency model costs. No torch, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("conv1x1", "convkxk", "depthwise", "fc", "elementwise", "pool", "gate")
CONV_KINDS = ("conv1x1", "convkxk", "depthwise", "fc")
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclass
class Kernel:
    """One fused kernel: what it computes and the element counts it moves (batch 1)."""

    kind: str
    ops: list[str]
    macs: int
    in_elems: int
    out_elems: int
    weight_elems: int = 0
    # the channel count (dim 1) the kernel's work scales with, where the reader knows it (the
    # torch reader): its output's, a reduction's input's. The pruning profile finds the layer a
    # kernel's time belongs to by it. Not part of equality.
    channels: int | None = field(default=None, compare=False)

    @property
    def work(self) -> int:
        """MACs for conv kinds; elements touched for element-wise, pool and gate kernels."""
        return self.macs if self.kind in CONV_KINDS else max(self.in_elems, self.out_elems)

    def bytes(self, precision: str = "fp32") -> int:
        return (self.in_elems + self.out_elems + self.weight_elems) * BYTES[precision]
