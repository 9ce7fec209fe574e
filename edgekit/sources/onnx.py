"""ONNX sources (``.onnx``): the user's file, run as it is by ONNX Runtime for the reference.

An ONNX file carries no class names (they come from the data folder). What its graph fixes is
read from it: the input size, the layout (NHWC when the last input dim is 1 or 3 and dim 1 is
not), the channel count (1: greyscale) and a final Softmax/Sigmoid (its outputs are
probabilities); the rest of the preprocessing is declared (``--preprocess FILE.yaml`` and the
flags, ``edgekit.sources.declared``) or edgekit's default [0, 1] RGB bilinear. The ONNX Runtime
and OpenVINO backends convert from the file itself; the LiteRT backend converts
``torch_module()``, the graph replayed with PyTorch ops (``edgekit.sources.onnx_torch``), with
litert-torch like any PyTorch source — offline, calibrated on edgekit's own images (onnx2tf is
not used: it downloads sample data for calibration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit.backends.onnxruntime import NAME as ORT_NAME
from edgekit.errors import BackendUnavailable, DataError
from edgekit.sources.base import Source, default_head, require_file, shaped_spec
from edgekit.sources.declared import DeclaredPreprocess

# nodes that pass a final activation's values through unchanged (up to shape)
_PASS_THROUGH = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast")


@dataclass(frozen=True, kw_only=True)
class OnnxSource(Source):
    """An ONNX graph on disk."""

    kind: ClassVar[str] = "onnx"
    runtime: ClassVar[str] = ORT_NAME
    runtime_label: ClassVar[str] = "ONNX Runtime"

    path: Path

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        fixed = sess.get_inputs()[0].shape[0] == 1
        step = 1 if fixed else batch_size
        return np.concatenate([sess.run(None, {name: np.ascontiguousarray(x[i:i + step])})[0]
                               for i in range(0, len(x), step)]).astype(np.float32)

    def onnx_file(self) -> Path:
        return self.path

    def torch_module(self) -> Any:
        """The graph as a PyTorch module for the batch-1 input shape (built once per source;
        ``edgekit.sources.onnx_torch``); an ExportError names an operator it cannot translate."""
        def graph() -> Any:
            import onnx

            return onnx.load(str(self.path))

        return replayed(self, graph)


def replayed(source: Source, graph: Callable[[], Any]) -> Any:
    """``source``'s ONNX graph (``graph()``, a ModelProto) replayed as a PyTorch module for its
    batch-1 input shape (``edgekit.sources.onnx_torch``), built once per source."""
    cached = source.__dict__.get("_torch_module")
    if cached is None:
        from edgekit.sources.onnx_torch import onnx_to_torch

        cached = onnx_to_torch(graph(), source.spec.input_shape(1))
        object.__setattr__(source, "_torch_module", cached)
    return cached


def final_activation(graph: Any) -> str | None:
    """"softmax" or "sigmoid" when the graph's (first) output is computed by one, through
    shape-only nodes; None otherwise."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(graph.output[0].name) if graph.output else None
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0]) if node.input else None
    if node is not None and node.op_type in ("Softmax", "LogSoftmax", "Sigmoid"):
        return {"Softmax": "softmax", "Sigmoid": "sigmoid"}.get(node.op_type)
    return None


def from_onnx(path: Path, decl: DeclaredPreprocess | None) -> OnnxSource:
    require_file(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        import onnx
    except ImportError as exc:
        raise BackendUnavailable("Reading ONNX sources needs onnx: pip install 'edgekit[torch]'") from exc
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable ONNX model ({exc})") from exc
    if not model.graph.input:  # protobuf reads many non-ONNX files as an empty model
        raise DataError(f"{path}: not an ONNX model (no graph inputs; an empty or foreign "
                        "protobuf file)")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in model.graph.input[0].type.tensor_type.shape.dim]
    spec, origins = shaped_spec(dims, decl, path)
    head = default_head()
    if final_activation(model.graph) is not None:
        head["scores_are"] = "probs"
    return OnnxSource(path=path, name=path.stem, task="multiclass", class_names=(), spec=spec,
                      source=str(path), pretrained=True, head=head, spec_sources=origins)
