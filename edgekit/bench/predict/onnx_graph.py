"""Kernels of an ONNX graph, by the fusion rules :mod:`.torch_graph` applies to a module
(QDQ and QLinear INT8 included). onnx is imported when a graph is read."""

from __future__ import annotations

import math
from typing import Any

from edgekit.bench.predict.kernel import Kernel

_ONNX_FREE = {"QuantizeLinear", "DequantizeLinear", "Identity", "Dropout", "Reshape", "Flatten",
              "Squeeze", "Unsqueeze", "Cast", "DynamicQuantizeLinear"}
_ONNX_UNARY = {"BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
               "Tanh", "LeakyRelu", "Elu", "Selu", "Erf", "Gelu", "Softmax", "Neg", "Abs",
               "Sqrt", "Exp", "Log", "Reciprocal", "Mish", "PRelu", "Softplus", "FastGelu",
               "QuickGelu"}
_ONNX_BINARY = {"Add", "Mul", "Sub", "Div", "Pow", "Max", "Min"}
_ONNX_REDUCE = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "GlobalAveragePool",
                "GlobalMaxPool", "MaxPool", "AveragePool", "LpPool"}
_ONNX_GATE_REDUCE = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin"}


def _onnx_shapes(model: Any) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Static shapes of every named tensor (shape inference; symbolic dims count as 1) and the
    names of the constant tensors (initializers, Constant outputs)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                                    else 1 for d in t.shape.dim)
    consts = set()
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
        consts.add(init.name)
    for node in g.node:
        if node.op_type == "Constant":
            consts.update(node.output)
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(a.t.dims)
    return shapes, consts


def onnx_kernels(model: Any) -> list[Kernel]:
    """The fused kernels of an ONNX model (a path or a ``ModelProto``), by the fusion rules of
    :func:`kernels` read off the graph: Conv/Gemm/MatMul start kernels (QDQ and QLinear
    quantized forms included; Quantize/DequantizeLinear are free), element-wise ops fuse into
    the immediately preceding kernel, a binary op whose two inputs come from that same kernel
    fuses too (exported SiLU ``x·sigmoid(x)`` and GELU ``x·(1+erf(x/√2))/2`` are one op in
    PyTorch), broadcast ``Mul`` is a gate, reductions of a gated tensor are gates.

    BatchNorm folded into the convolution by the exporter adds a bias (``weight_elems`` can
    exceed the PyTorch module's by the channel count); MACs and kinds agree with
    :func:`kernels` of the source module."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    shapes, consts = _onnx_shapes(proto)
    ks: list[Kernel] = []
    producer: dict[str, int] = {}
    reductions: dict[str, list[int]] = {}

    def numel(name: str) -> int:
        return math.prod(shapes.get(name, ()))

    def new(kernel: Kernel, out: str) -> None:
        ks.append(kernel)
        producer[out] = len(ks) - 1

    for node in proto.graph.node:
        op = node.op_type
        ins = [i for i in node.input if i]
        acts = [i for i in ins if i not in consts]
        out = node.output[0] if node.output else ""
        if not acts:  # weights, biases, shapes: folded constants
            consts.update(node.output)
            continue
        x = acts[0]
        if out not in shapes and op in _ONNX_FREE | _ONNX_UNARY and x in shapes:
            shapes[out] = shapes[x]
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            wname = node.input[3] if op == "QLinearConv" else node.input[1]
            bname = (node.input[8] if len(node.input) > 8 else "") if op == "QLinearConv" else \
                (node.input[2] if len(node.input) > 2 and op == "Conv" else "")
            w = shapes[wname]
            o = shapes[out]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            area = math.prod(w[2:])
            if groups > 1 and w[1] == 1:
                kind = "depthwise"
            elif math.prod(o[2:]) == 1:
                kind = "fc"
            else:
                kind = "conv1x1" if area == 1 else "convkxk"
            macs = math.prod(o[1:]) * w[1] * area
            weights = math.prod(w) + (numel(bname) if bname else 0)
            new(Kernel(kind, [op], macs, numel(x), numel(out), weights), out)
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul") and \
                len(acts) == 1:
            wname = next(i for i in ins if i in consts and len(shapes.get(i, ())) >= 2)
            w = shapes[wname]
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            k_dim = w[1] if (op == "Gemm" and trans_b) else w[0]
            macs = math.prod(shapes[out][1:]) * k_dim
            weights = sum(numel(i) for i in ins if i in consts and i != x and
                          len(shapes.get(i, ())) >= 1 and numel(i) > 1)
            new(Kernel("fc", [op], macs, numel(x), numel(out), weights), out)
        elif op in _ONNX_FREE:
            if x in producer:
                producer[out] = producer[x]
        elif op in _ONNX_BINARY and len(acts) == 2:
            a, b = acts
            last = len(ks) - 1
            if shapes.get(a) != shapes.get(b) and op == "Mul":
                big = a if numel(a) >= numel(b) else b
                new(Kernel("gate", [op], 0, numel(a) + numel(b), numel(out)), out)
                for r in reductions.get(big, []):
                    ks[r].kind = "gate"
            elif producer.get(a) == producer.get(b) == last and last >= 0 and \
                    ks[last].kind not in ("pool", "gate") and numel(out) == numel(a):
                ks[last].ops.append(op)
                producer[out] = last
            else:
                new(Kernel("elementwise", [op], 0, numel(a) + numel(b), numel(out)), out)
        elif op in _ONNX_UNARY or op in _ONNX_BINARY:
            last = len(ks) - 1
            k = producer.get(x)
            if k is not None and k == last and ks[k].kind not in ("pool", "gate") \
                    and numel(out) == numel(x):
                ks[k].ops.append(op)
                producer[out] = k
            else:
                new(Kernel("elementwise", [op], 0, numel(x), numel(out)), out)
        elif op in _ONNX_REDUCE:
            new(Kernel("pool", [op], 0, numel(x), numel(out)), out)
            if op in _ONNX_GATE_REDUCE:
                reductions.setdefault(x, []).append(len(ks) - 1)
        elif op == "Concat":
            new(Kernel("elementwise", [op], 0, sum(numel(i) for i in acts), numel(out)), out)
        elif op in ("Shape", "Size", "ConstantOfShape"):
            consts.update(node.output)
        elif x in producer and numel(out) > 1:
            new(Kernel("elementwise", [op], 0, numel(x), numel(out)), out)
    return ks
