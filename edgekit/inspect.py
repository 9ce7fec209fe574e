"""Parameters, MACs and a per-layer table of a model, measured on a real forward pass.

MACs are counted for the layers that do the arithmetic: convolutions (output elements ×
input channels per group × kernel area) and linear layers (in × out per row). Element-wise
work (BN, activations, attention multiplications, pooling) is listed with 0 MACs; BN folds into
the preceding convolution at export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import ConfigError
from edgekit.prune.graph import editable, is_graph

if TYPE_CHECKING:  # sources load pruned checkpoints with the pruning engine, which counts MACs here
    from edgekit.sources import Source


@dataclass
class LayerInfo:
    name: str
    type: str
    output_shape: list[int]
    params: int
    macs: int


@dataclass
class ModelSummary:
    name: str
    task: str
    class_names: list[str]
    params: int
    trainable_params: int
    macs: int
    input_shape: list[int]
    layers: list[LayerInfo]
    preprocess: dict[str, Any]
    source: str
    pretrained: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_macs(module: Any, inputs: tuple, output: Any) -> int:
    """MACs of one call of a leaf module (conv / linear; 0 for everything else)."""
    import torch.nn as nn

    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        return int(output.numel() // output.shape[0] * (module.in_channels // module.groups) * kernel)
    if isinstance(module, nn.Linear):
        rows = output.numel() // output.shape[-1] // output.shape[0]
        return int(rows * module.in_features * module.out_features)
    return 0


def layer_table(module: Any, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """One row per leaf module in execution order, from one forward pass at ``input_shape``."""
    import torch

    module = module.eval()
    rows: list[LayerInfo] = []
    handles = []

    def hook(name: str):
        def fn(mod: Any, inputs: tuple, output: Any) -> None:
            out = output if isinstance(output, torch.Tensor) else \
                next((o for o in output or () if isinstance(o, torch.Tensor)), None)
            if out is None:  # a module that checks or records, returning no tensor
                return
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            rows.append(LayerInfo(name, type(mod).__name__, list(out.shape[1:]), params,
                                  layer_macs(mod, inputs, out)))
        return fn

    for name, mod in module.named_modules():
        if name and not any(True for _ in mod.children()):
            handles.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            module(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return rows


def summarize(loaded: Source, input_size: int | None = None) -> ModelSummary:
    """Run one batch-1 forward pass with hooks and return the per-layer table and totals."""
    if getattr(loaded, "module", None) is None:  # ONNX and Keras sources have no torch module
        raise ConfigError(f"{loaded.source}: inspect counts layers of a PyTorch model; this "
                          f"is a {loaded.kind} file (open it in Netron, or inspect the "
                          "checkpoint it was exported from)")
    import torch

    spec = loaded.spec if input_size is None else loaded.spec.with_size(input_size)
    # a torch.export program's layers are aten calls: counted on its editable form, whose
    # convolutions and linear layers are real modules (what pruning sees, too)
    module = (editable(loaded.module, torch.zeros(spec.input_shape(1)))
              if is_graph(loaded.module) else loaded.module).eval()
    rows = layer_table(module, tuple(spec.input_shape(1)))
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return ModelSummary(loaded.name, loaded.task, list(loaded.class_names), params, trainable,
                        sum(r.macs for r in rows), list(spec.input_shape(1)), rows,
                        spec.to_dict(), loaded.source, loaded.pretrained)
