"""An ONNX classifier graph as a PyTorch module: how ONNX sources reach TFLite.

The LiteRT backend converts PyTorch modules with litert-torch (fp32, fp16 weights, PT2E int8
calibrated on edgekit's own images). ``OnnxModule`` replays an ONNX graph node by node with
``torch`` ops, so an ONNX source goes down that same path: nothing is downloaded, no second
converter stack (onnx2tf) is involved.

Why not onnx2torch / onnx2pytorch: both import torchvision at import time (for NMS / RoIAlign
converters a classifier never uses), and no torchvision build matches the pinned CPU torch.

What it covers: the operators of CNN classifiers as torch.onnx, tf2onnx and other exporters
write them (Conv incl. grouped/depthwise, BatchNormalization, the activations, element-wise
arithmetic, Gemm/MatMul, pooling, ReduceMean/Max/..., Flatten/Reshape/Squeeze/Unsqueeze/
Transpose/Concat/Slice/Gather/Pad, Softmax/Sigmoid). Anything computable from constants alone
(shape arithmetic, weight transposes, dequantized weights) is folded at build time with ONNX's
reference evaluator, so any operator may appear there. An operator with no translation is an
``ExportError`` naming it.

The module is built for the source's fixed input shape (batch 1: ``Shape`` is folded to the
static shape), which is what litert-torch converts. NHWC sources (tf2onnx: the input is
transposed to NCHW once) keep that single transpose: litert-torch's layout pass cancels it
against the NHWC convolutions TFLite runs, so no transpose per convolution is added.

This module imports torch and onnx at the top: import it only inside functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgekit.errors import ExportError

Value = Any  # a torch.Tensor (computed or a float constant) or a numpy array (integer constant)
Op = Callable[[list[Value], dict[str, Any], int], Sequence[Value]]


# ----------------------------------------------------------------------------- helpers
def _t(v: Value) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def _ints(v: Value | None) -> list[int]:
    if v is None:
        return []
    arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return [int(i) for i in arr.reshape(-1)]


def _scalar(v: Value | None, default: float | None) -> float | None:
    if v is None:
        return default
    arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return float(arr.reshape(-1)[0])


def _arg(args: list[Value], i: int) -> Value | None:
    return args[i] if i < len(args) else None


def _axes(args: list[Value], attrs: dict[str, Any], index: int) -> list[int] | None:
    """Axes from an attribute (older opsets) or the ``index``-th input (newer ones)."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    given = _arg(args, index)
    return None if given is None else _ints(given)


def _spatial_pads(x: torch.Tensor, attrs: dict[str, Any], kernel: list[int],
                  strides: list[int], dilations: list[int]) -> list[int]:
    """ONNX ``pads`` ([b1, b2, ..., e1, e2, ...]) with auto_pad resolved on the static shape."""
    n = len(kernel)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(n):
            size = int(x.shape[2 + i])
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * n)
    return [int(p) for p in attrs.get("pads", [0] * (2 * n))]


def _split_pads(x: torch.Tensor, pads: list[int], value: float) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads go to the op; asymmetric ones become an explicit F.pad first."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return x, begin
    flat: list[int] = []
    for i in reversed(range(n)):
        flat += [begin[i], end[i]]
    return F.pad(x, flat, value=value), [0] * n


def _window(x: torch.Tensor, attrs: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides = [int(s) for s in attrs.get("strides", [1] * len(kernel))]
    dilations = [int(d) for d in attrs.get("dilations", [1] * len(kernel))]
    return kernel, strides, dilations


# ----------------------------------------------------------------------------- operators
def _conv(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x, w, b = args[0], _t(args[1]), _arg(args, 2)
    if w.dim() != 4:
        raise _unsupported("Conv", f"{w.dim() - 2}-D convolution (only 2-D is translated)")
    kernel = [int(k) for k in attrs.get("kernel_shape", w.shape[2:])]
    strides = [int(s) for s in attrs.get("strides", [1, 1])]
    dilations = [int(d) for d in attrs.get("dilations", [1, 1])]
    x, pads = _split_pads(x, _spatial_pads(x, attrs, kernel, strides, dilations), 0.0)
    return [F.conv2d(x, w, None if b is None else _t(b), strides, pads, dilations,
                     int(attrs.get("group", 1)))]


def _max_pool(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    kernel, strides, dilations = _window(x, attrs)
    x, pads = _split_pads(x, _spatial_pads(x, attrs, kernel, strides, dilations), -np.inf)
    return [F.max_pool2d(x, kernel, strides, pads, dilations,
                         ceil_mode=bool(attrs.get("ceil_mode", 0)))]


def _avg_pool(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    kernel, strides, dilations = _window(x, attrs)
    if any(d != 1 for d in dilations):
        raise _unsupported("AveragePool", "dilations")
    pads = _spatial_pads(x, attrs, kernel, strides, dilations)
    include = bool(attrs.get("count_include_pad", 0))
    n = len(kernel)
    if pads[:n] != pads[n:] or any(2 * p > k for p, k in zip(pads[:n], kernel, strict=True)):
        if any(pads) and not include:
            raise _unsupported("AveragePool", "asymmetric padding without count_include_pad")
        x, pads = _split_pads(x, pads, 0.0)
    return [F.avg_pool2d(x, kernel, strides, pads[:n], ceil_mode=bool(attrs.get("ceil_mode", 0)),
                         count_include_pad=include)]


def _batch_norm(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x, scale, bias, mean, var = args[:5]
    return [F.batch_norm(x, _t(mean), _t(var), _t(scale), _t(bias), False, 0.0,
                         float(attrs.get("epsilon", 1e-5)))]


def _gemm(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    a, b, c = _t(args[0]), _t(args[1]), _arg(args, 2)
    if attrs.get("transA", 0):
        a = a.t()
    if not attrs.get("transB", 0):  # a constant B is stored transposed already (see _prepare)
        b = b.t()
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha == 1.0 and beta == 1.0 and c is not None and _t(c).dim() == 1:
        return [F.linear(a, b, _t(c))]  # one FULLY_CONNECTED with its bias
    y = F.linear(a, b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (_t(c) if beta == 1.0 else beta * _t(c))
    return [y]


def _matmul(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    a, b = _t(args[0]), _t(args[1])
    if attrs.get("_linear"):  # constant 2-D right operand, stored as (out, in)
        return [F.linear(a, b)]
    return [torch.matmul(a, b)]


def _clip(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    if opset >= 11:
        lo, hi = _scalar(_arg(args, 1), None), _scalar(_arg(args, 2), None)
    else:
        lo, hi = attrs.get("min"), attrs.get("max")
    x = args[0]
    if lo == 0.0 and hi is None:
        return [F.relu(x)]
    if lo == 0.0 and hi == 6.0:
        return [F.relu6(x)]
    return [torch.clamp(x, lo, hi)]


def _reduce(fn: str) -> Op:
    def op(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
        x = _t(args[0])
        axes = _axes(args, attrs, 1)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        dims = tuple(a % x.dim() for a in axes)
        if fn == "mean":
            return [x.mean(dim=dims, keepdim=keep)]
        if fn == "sum":
            return [x.sum(dim=dims, keepdim=keep)]
        if fn == "max":
            return [x.amax(dim=dims, keepdim=keep)]
        if fn == "min":
            return [x.amin(dim=dims, keepdim=keep)]
        if fn == "l2":
            return [x.square().sum(dim=dims, keepdim=keep).sqrt()]
        raise AssertionError(fn)  # pragma: no cover
    return op


def _softmax(fn: Callable[..., torch.Tensor]) -> Op:
    def op(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
        x = args[0]
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1)) % x.dim()
        if opset >= 13 or axis == x.dim() - 1:
            return [fn(x, dim=axis)]
        shape = x.shape  # before opset 13: over the input flattened to 2-D at ``axis``
        return [fn(x.reshape(int(np.prod(shape[:axis])), -1), dim=1).reshape(shape)]
    return op


def _reshape(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x, shape = args[0], _ints(args[1])
    if not attrs.get("allowzero", 0):
        shape = [int(x.shape[i]) if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1)
    return [x.reshape(int(np.prod(x.shape[:axis])), -1)]


def _squeeze(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    axes = _axes(args, attrs, 1)
    if axes is None:
        axes = [i for i, s in enumerate(x.shape) if s == 1]
    keep = [s for i, s in enumerate(x.shape) if i not in {a % x.dim() for a in axes}]
    return [x.reshape(keep)]


def _unsqueeze(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    axes = _axes(args, attrs, 1) or []
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    return [x.reshape(shape)]


def _transpose(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    perm = [int(p) for p in attrs.get("perm", reversed(range(x.dim())))]
    return [x.permute(perm)]


def _concat(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    parts = [_t(a) for a in args if a is not None]
    return [torch.cat(parts, dim=int(attrs["axis"]))]


def _gather(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x, idx = _t(args[0]), args[1]
    if isinstance(idx, torch.Tensor):
        raise _unsupported("Gather", "indices computed from the input")
    axis = int(attrs.get("axis", 0)) % x.dim()
    index = np.asarray(idx, dtype=np.int64)
    index = np.where(index < 0, index + x.shape[axis], index)
    if index.ndim == 0:
        return [x.select(axis, int(index))]
    picked = x.index_select(axis, torch.as_tensor(index.reshape(-1)))
    shape = [*x.shape[:axis], *index.shape, *x.shape[axis + 1:]]
    return [picked.reshape(shape)]


def _slice(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    if opset >= 10:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(_arg(args, 3)) or list(range(len(starts)))
        steps = _ints(_arg(args, 4)) or [1] * len(starts)
    else:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step <= 0:
            raise _unsupported("Slice", "negative steps")
        size = int(x.shape[axis])
        start = min(max(start + size if start < 0 else start, 0), size)
        end = min(max(end + size if end < 0 else end, 0), size)
        index[axis % x.dim()] = slice(start, end, step)
    return [x[tuple(index)]]


def _pad(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x = args[0]
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if opset >= 11:
        pads, value = _ints(args[1]), _scalar(_arg(args, 2), 0.0)
        axes = _ints(_arg(args, 3)) or list(range(x.dim()))
    else:
        pads, value = [int(p) for p in attrs["pads"]], float(attrs.get("value", 0.0))
        axes = list(range(x.dim()))
    n = len(axes)
    full = [(0, 0)] * x.dim()
    for i, axis in enumerate(axes):
        full[axis % x.dim()] = (pads[i], pads[i + n])
    flat: list[int] = []
    for begin, end in reversed(full):
        flat += [begin, end]
    while flat[-2:] == [0, 0] and len(flat) > 2:  # torch pads the trailing dims only
        flat = flat[:-2]
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
    if torch_mode is None:
        raise _unsupported("Pad", f"mode {mode!r}")
    if torch_mode == "constant":
        return [F.pad(x, flat, value=float(value or 0.0))]
    return [F.pad(x, flat, mode=torch_mode)]


def _cast(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    np_type = helper.tensor_dtype_to_np_dtype(int(attrs["to"]))
    x = args[0]
    if isinstance(x, torch.Tensor):
        return [x.to(torch.from_numpy(np.zeros(0, np_type)).dtype)]
    return [np.asarray(x).astype(np_type)]


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Op:
    def op(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
        return [fn(_t(args[0]), _t(args[1]))]
    return op


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mean: bool = False) -> Op:
    def op(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
        out = _t(args[0])
        for a in args[1:]:
            out = fn(out, _t(a))
        return [out / len(args) if mean else out]
    return op


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    def op(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
        return [fn(_t(args[0]))]
    return op


def _leaky_relu(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    return [F.leaky_relu(args[0], float(attrs.get("alpha", 0.01)))]


def _elu(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    return [F.elu(args[0], float(attrs.get("alpha", 1.0)))]


def _hard_sigmoid(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-6 and beta == 0.5:
        return [F.hardsigmoid(args[0])]
    return [torch.clamp(args[0] * alpha + beta, 0.0, 1.0)]


def _prelu(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    x, slope = args[0], _t(args[1])
    return [torch.where(x >= 0, x, x * slope)]


def _gelu(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    approx = attrs.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return [F.gelu(args[0], approximate=approx)]


def _identity(args: list[Value], attrs: dict[str, Any], opset: int) -> Sequence[Value]:
    return [args[0]]


_OPS: dict[str, Op] = {
    "Conv": _conv, "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "BatchNormalization": _batch_norm, "Gemm": _gemm, "MatMul": _matmul,
    "GlobalAveragePool": lambda a, at, o: [a[0].mean(dim=(2, 3), keepdim=True)],
    "GlobalMaxPool": lambda a, at, o: [a[0].amax(dim=(2, 3), keepdim=True)],
    "ReduceMean": _reduce("mean"), "ReduceSum": _reduce("sum"), "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"), "ReduceL2": _reduce("l2"),
    "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp), "Log": _unary(torch.log), "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg), "Abs": _unary(torch.abs), "Reciprocal": _unary(torch.reciprocal),
    "Erf": _unary(torch.erf), "Softplus": _unary(F.softplus), "HardSwish": _unary(F.hardswish),
    "Mish": _unary(F.mish), "Floor": _unary(torch.floor), "Ceil": _unary(torch.ceil),
    "LeakyRelu": _leaky_relu, "Elu": _elu, "HardSigmoid": _hard_sigmoid, "PRelu": _prelu,
    "Gelu": _gelu, "Clip": _clip,
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
    "Div": _binary(torch.div), "Pow": _binary(torch.pow),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
    "Mean": _variadic(torch.add, mean=True),
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "Reshape": _reshape, "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Transpose": _transpose, "Concat": _concat, "Gather": _gather, "Slice": _slice, "Pad": _pad,
    "Cast": _cast, "Identity": _identity, "Dropout": _identity,
}


# inputs read as Python values (shapes, axes, bounds): kept numpy, never buffers
_STATIC: dict[str, tuple[int, ...]] = {
    "Clip": (1, 2), "Pad": (1, 2, 3), "Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "Slice": (1, 2, 3, 4), "Gather": (1,), "ReduceMean": (1,), "ReduceSum": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,), "ReduceL2": (1,),
}


def _unsupported(op: str, what: str = "") -> ExportError:
    detail = f" ({what})" if what else ""
    return ExportError(f"the ONNX operator {op}{detail} has no PyTorch translation in edgekit's "
                       "ONNX → PyTorch step")


# ----------------------------------------------------------------------------- the module
@dataclass
class _Step:
    op: Op
    op_type: str
    inputs: list[tuple[str, Any]]  # ("live", name) | ("buffer", attr) | ("const", ndarray) | ("none", None)
    outputs: list[str]
    attrs: dict[str, Any]
    name: str


class OnnxModule(torch.nn.Module):
    """The ONNX graph ``model`` as a torch module taking ``input_shape`` float32 inputs.

    Float constants the computation reads (weights, biases, scalars) are buffers; integer
    constants (shapes, axes, indices) stay numpy and are read as Python values, so
    ``torch.export`` sees a static graph.
    """

    def __init__(self, model: onnx.ModelProto, input_shape: Sequence[int]) -> None:
        super().__init__()
        graph = model.graph
        self.opset = next((int(o.version) for o in model.opset_import
                           if o.domain in ("", "ai.onnx")), 13)
        consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t)
                                         for t in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in consts]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ExportError(f"edgekit converts classifiers with one input and one output; "
                              f"this graph has {len(inputs)} input(s) and {len(graph.output)} "
                              "output(s)")
        self.input_name, self.output_name = inputs[0], graph.output[0].name
        dims = next(i for i in graph.input if i.name == self.input_name).type.tensor_type.shape.dim
        # symbolic input dims (a dynamic batch) this batch-1 module fixes
        self.symbolic_dims = [d.dim_param or "?" for d in dims
                              if not (d.HasField("dim_value") and d.dim_value > 0)]
        nodes = _fold_scale_shift(list(graph.node), consts, {o.name for o in graph.output})
        live: dict[str, Value] = {self.input_name: torch.zeros(tuple(input_shape))}
        self._steps: list[_Step] = []
        self._buffers_of: dict[str, str] = {}  # constant name → buffer attribute
        with torch.no_grad():
            for node in nodes:
                self._add(node, consts, live)
        if self.output_name not in live:
            raise ExportError("the ONNX graph's output does not depend on its input")

    def _add(self, node: Any, consts: dict[str, np.ndarray],
             live: dict[str, Value]) -> None:
        op_type = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            raise _unsupported(f"{op_type} (domain {node.domain})")
        if op_type == "Constant":
            consts[node.output[0]] = _constant(node)
            return
        present = [i for i in node.input if i]
        if op_type == "Shape" and node.input[0] in live:
            shape = list(live[node.input[0]].shape)
            start, end = int(attrs.get("start", 0)), attrs.get("end")
            consts[node.output[0]] = np.asarray(shape[start:None if end is None else int(end)],
                                                np.int64)
            return
        if all(i in consts for i in present):  # constant subgraph: fold it now
            for name, value in zip(node.output, _fold(node, consts, self.opset), strict=False):
                consts[name] = value
            return
        op = _OPS.get(op_type)
        if op is None:
            raise _unsupported(op_type)
        for i in present:
            if i not in consts and i not in live:
                raise ExportError(f"ONNX node {node.name or op_type}: input {i!r} is not "
                                  "computed before it (the graph is not topologically sorted)")
        step_inputs = []
        prepared = _prepare(op_type, node, consts, attrs)
        for pos, name in enumerate(node.input):
            if not name:
                step_inputs.append(("none", None))
            elif name in live:
                step_inputs.append(("live", name))
            else:
                value = prepared.get(pos, consts[name])
                if value.dtype.kind == "f" and pos not in _STATIC.get(op_type, ()):
                    key = f"{name}#T" if pos in prepared else name
                    if key not in self._buffers_of:
                        self._buffers_of[key] = f"c{len(self._buffers_of)}"
                        self.register_buffer(self._buffers_of[key], torch.from_numpy(
                            np.array(value, np.float32)))
                    step_inputs.append(("buffer", self._buffers_of[key]))
                else:
                    step_inputs.append(("const", value))
        step = _Step(op, op_type, step_inputs, list(node.output), attrs, node.name or op_type)
        try:
            outs = self._run(step, live)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - a translation failure names the node
            raise ExportError(f"the ONNX node {step.name} ({op_type}) failed in PyTorch: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
        for name, value in zip(step.outputs, outs, strict=False):
            live[name] = value
        self._steps.append(step)

    def _run(self, step: _Step, env: dict[str, Value]) -> Sequence[Value]:
        args: list[Value] = []
        for kind, ref in step.inputs:
            if kind == "live":
                args.append(env[ref])
            elif kind == "buffer":
                args.append(getattr(self, ref))
            else:
                args.append(ref)
        return step.op(args, step.attrs, self.opset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Value] = {self.input_name: x}
        for step in self._steps:
            for name, value in zip(step.outputs, self._run(step, env), strict=False):
                env[name] = value
        return env[self.output_name]


def _per_channel(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as a (channels,) vector when it broadcasts against an NCHW conv output only
    along the channel axis; None otherwise."""
    if value.dtype.kind != "f" or value.ndim > 4:
        return None
    try:
        if np.broadcast_shapes(value.shape, (1, channels, 1, 1)) != (1, channels, 1, 1):
            return None
    except ValueError:
        return None
    return np.broadcast_to(value.reshape((1,) * (4 - value.ndim) + value.shape),
                           (1, channels, 1, 1)).reshape(channels).astype(np.float32)


def _fold_scale_shift(nodes: list[Any], consts: dict[str, np.ndarray],
                      outputs: set[str]) -> list[Any]:
    """MatMul + Add(bias) as one Gemm, and Conv → Mul(constant) / Add(constant) chains that act
    per channel folded into the conv's weights and bias. tf2onnx leaves a depthwise convolution's BatchNorm as such a Mul + Add;
    folded, INT8 quantizes one convolution instead of running the Mul/Add in float between
    QUANTIZE/DEQUANTIZE ops (measured: 17 float islands in a MobileNetV2)."""
    users: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            users.setdefault(name, []).append(i)
    dropped: set[int] = set()
    for i, node in enumerate(nodes):  # MatMul(x, W) + b → one Gemm (a FULLY_CONNECTED with bias)
        if node.op_type != "MatMul" or node.input[1] not in consts or node.output[0] in outputs:
            continue
        weight, after = consts[node.input[1]], users.get(node.output[0], [])
        if weight.ndim != 2 or len(after) != 1 or nodes[after[0]].op_type != "Add":
            continue
        add = nodes[after[0]]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        bias = consts.get(other)
        if bias is None or bias.dtype.kind != "f" or bias.reshape(-1).shape != (weight.shape[1],):
            continue
        consts[f"{other}#vec{i}"] = bias.reshape(-1).astype(np.float32)
        nodes[i] = helper.make_node("Gemm", [node.input[0], node.input[1], f"{other}#vec{i}"],
                                    [add.output[0]], name=node.name or f"MatMul{i}")
        dropped.add(after[0])
    for i, conv in enumerate(nodes):
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in consts:
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if has_bias and conv.input[2] not in consts:
            continue
        w = consts[conv.input[1]].astype(np.float32)
        if w.ndim != 4:
            continue
        b = consts[conv.input[2]].astype(np.float32) if has_bias else np.zeros(w.shape[0],
                                                                                 np.float32)
        out, folded = conv.output[0], False
        while out not in outputs and len(users.get(out, [])) == 1:
            j = users[out][0]
            nxt = nodes[j]
            if nxt.op_type not in ("Mul", "Add") or len(nxt.input) != 2 or j in dropped:
                break
            other = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
            vec = _per_channel(consts[other], w.shape[0]) if other in consts else None
            if vec is None:
                break
            if nxt.op_type == "Mul":
                w, b = w * vec.reshape(-1, 1, 1, 1), b * vec
            else:
                b = b + vec
            dropped.add(j)
            out, folded = nxt.output[0], True
        if folded:
            wname, bname = f"{conv.input[1]}#folded{i}", f"{conv.output[0]}#bias{i}"
            consts[wname], consts[bname] = w, b
            new = onnx.NodeProto()
            new.CopyFrom(conv)
            del new.input[:]
            new.input.extend([conv.input[0], wname, bname])
            new.output[0] = out
            nodes[i] = new
    return [node for i, node in enumerate(nodes) if i not in dropped]


def _constant(node: Any) -> np.ndarray:
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return numpy_helper.to_array(value)
    if attr.name in ("value_float", "value_floats"):
        return np.asarray(value, np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.asarray(value, np.int64)
    raise _unsupported("Constant", f"attribute {attr.name}")


def _fold(node: Any, consts: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    """A node whose inputs are all constants, evaluated with ONNX's reference evaluator."""
    feeds = {i: consts[i] for i in node.input if i}
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for i, v in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
         for o in node.output if o])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        outs = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - any evaluator failure names the node
        raise ExportError(f"folding the constant ONNX node {node.name or node.op_type} "
                          f"({node.op_type}) failed: {exc}") from exc
    return [np.asarray(o) for o in outs]


def _prepare(op_type: str, node: Any, consts: dict[str, np.ndarray],
             attrs: dict[str, Any]) -> dict[int, np.ndarray]:
    """Constant weights stored the way the torch op wants them (no transpose at run time):
    Gemm's B as (out, in), a 2-D constant MatMul right operand as (out, in)."""
    if op_type == "Gemm" and len(node.input) > 1 and node.input[1] in consts:
        if not attrs.get("transB", 0):
            attrs["transB"] = 1
            return {1: np.ascontiguousarray(consts[node.input[1]].T)}
    if op_type == "MatMul" and node.input[1] in consts and node.input[0] not in consts \
            and consts[node.input[1]].ndim == 2:
        attrs["_linear"] = True
        return {1: np.ascontiguousarray(consts[node.input[1]].T)}
    return {}


def onnx_to_torch(model: onnx.ModelProto, input_shape: Sequence[int]) -> OnnxModule:
    """``model`` as an eval-mode ``OnnxModule`` for ``input_shape`` (batch 1)."""
    return OnnxModule(model, input_shape).eval()
