"""Read and repair TensorFlow graphs: the input pixel range and final activation read from the
ops right after the input and right before the output, random ops refused, and a SavedModel
serving graph traced in training mode put back into inference form (random scopes bypassed,
training-mode BatchNormalization given its moving statistics)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError

# Graph ops: value-preserving ops between the input and the first scaling op, ops that only
# read a shape, ops that draw random numbers.
_PASS_OPS = frozenset({
    "Identity", "Cast", "EnsureShape", "StopGradient", "CheckNumerics", "Reshape", "Squeeze",
    "ExpandDims", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea",
    "ScaleAndTranslate", "StridedSlice", "Slice", "Pad", "MirrorPad", "PlaceholderWithDefault"})


_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})


_RANDOM_OP = re.compile(r"Random|TruncatedNormal|Multinomial|Shuffle")


def refuse_random_ops(path: Path, graph_def: Any) -> None:
    ops = sorted({n.op for n in graph_def.node if _RANDOM_OP.search(n.op)})
    for f in graph_def.library.function:
        ops += sorted({n.op for n in f.node_def if _RANDOM_OP.search(n.op)} - set(ops))
    if ops:
        raise DataError(f"{path}: the model draws random numbers at inference "
                        f"({', '.join(ops)}) in a layer edgekit cannot remove; its outputs "
                        "would change from call to call")


def graph_values(graph: Any) -> Callable[[Any], np.ndarray | None]:
    """Constant value of a graph tensor: Const chains, captured constants and variables."""
    import tensorflow as tf

    captured = {id(internal): external for external, internal in getattr(graph, "captures", [])}
    variables = {}
    for v in getattr(graph, "variables", []) or []:
        with contextlib.suppress(Exception):
            variables[id(v.handle)] = v

    def value(t: Any, depth: int = 0) -> np.ndarray | None:
        if depth > 8:
            return None
        with contextlib.suppress(Exception):
            v = tf.get_static_value(t)
            if v is not None:
                return np.asarray(v)
        op = t.op
        if op.type == "Placeholder" and id(t) in captured:
            ext = captured[id(t)]
            if ext.dtype == tf.resource:
                return None
            with contextlib.suppress(Exception):
                return np.asarray(ext.numpy())
            return None
        if op.type == "ReadVariableOp":
            handle = op.inputs[0]
            ext = captured.get(id(handle))
            var = variables.get(id(ext)) if ext is not None else None
            return np.asarray(var.numpy()) if var is not None else None
        if op.type in ("Identity", "Cast", "Reshape", "Squeeze", "ExpandDims"):
            inner = value(op.inputs[0], depth + 1)
            if inner is None:
                return None
            if op.type == "Reshape":
                shape = value(op.inputs[1], depth + 1)
                return inner.reshape(shape) if shape is not None else inner
            return inner
        return None

    return value


def _layer_of(op_name: str, layer_classes: dict[str, str]) -> str:
    """"Rescaling 'rescale'" for an op in a layer's name scope, else "the op 'a/b'"."""
    parts = [p for p in op_name.split("/") if not p.startswith("StatefulPartitionedCall")]
    for part in reversed(parts[:-1]):
        for cand in (part, re.sub(r"_\d+$", "", part)):
            if cand in layer_classes:
                return f"{layer_classes[cand]} '{cand}'"
    scope = "/".join(parts[-3:-1]) if len(parts) > 1 else parts[-1]
    return f"the graph scope '{scope}'"


def _fmt_scale(s: float) -> str:
    if s and abs(1 / s - round(1 / s)) < 1e-3 * abs(1 / s):
        return f"1/{round(1 / s):g}"
    return f"{s:.4g}"


def input_range(graph: Any, start: Any, value_of: Callable[[Any], np.ndarray | None],
                 layer_classes: dict[str, str]) -> tuple[str, str]:
    """("0-255" | "0-1", reason) from the first value-changing op after the input."""
    t = start
    for _ in range(64):
        users = [op for op in t.consumers() if op.type not in _SHAPE_OPS]
        if len(users) != 1:
            break
        op = users[0]
        if op.type in _PASS_OPS:
            if op.inputs[0] is not t:
                break
            t = op.outputs[0]
            continue
        others = [i for i in op.inputs if i is not t]
        const = value_of(others[0]) if len(others) == 1 else None
        if const is None or const.size == 0:
            break
        c = np.asarray(const, dtype=np.float64)
        where = _layer_of(op.name, layer_classes)
        if op.type == "Mul":
            s = float(np.max(np.abs(c)))
            if 0 < s < 0.1:
                return "0-255", (f"{where} multiplies the input by {_fmt_scale(s)} right after "
                                 "it (in-graph rescaling): the model takes 0-255 pixels")
            return "0-1", (f"{where} multiplies the input by {_fmt_scale(s)} first (not a "
                           "0-255 rescale): the model takes 0-1 inputs")
        if op.type in ("RealDiv", "Div", "TrueDiv", "FloorDiv") and op.inputs[0] is t:
            s = float(np.min(np.abs(c)))
            if s > 10:
                return "0-255", (f"{where} divides the input by {s:g} right after it "
                                 "(in-graph rescaling): the model takes 0-255 pixels")
            return "0-1", f"{where} divides the input by {s:g} first: the model takes 0-1 inputs"
        if op.type in ("Sub", "AddV2", "Add", "BiasAdd"):
            if op.type == "Sub" and op.inputs[0] is not t:
                break
            mean = float(np.mean(c)) * (1 if op.type == "Sub" else -1)
            if mean > 2:
                return "0-255", (f"{where} subtracts a mean of {mean:.4g} right after the input "
                                 "(normalization adapted on 0-255 data): the model takes "
                                 "0-255 pixels")
            return "0-1", (f"{where} subtracts a mean of {mean:.4g} right after the input "
                           "(normalization of 0-1 data): the model takes 0-1 inputs")
        break
    return "0-1", ("no in-graph rescaling right after the input (no Rescaling with a scale "
                   "below 0.1, no Normalization with a mean above 2): the model takes 0-1 "
                   "inputs")


def final_activation(out: Any) -> str:
    op = out.op
    for _ in range(16):
        if op.type in ("Identity", "IdentityN", "Cast", "Reshape", "Squeeze", "EnsureShape",
                       "StopGradient"):
            op = op.inputs[0].op
            continue
        break
    return {"Softmax": "softmax", "Sigmoid": "sigmoid", "MatMul": "linear", "BiasAdd": "linear",
            "AddV2": "linear", "Add": "linear"}.get(op.type, "unknown")


def _tensor_name(inp: str) -> str:
    node, _, index = inp.partition(":")
    return f"{node}:{index or 0}"


def _strip_folded(name: str) -> str:
    return name[len("ConstantFolding/"):] if name.startswith("ConstantFolding/") else name


def _prune(graph_def: Any, out_node: str, tf: Any) -> Any:
    """Only the nodes the output depends on (data and control inputs)."""
    by_name = {n.name: n for n in graph_def.node}
    keep, todo = set(), [out_node]
    while todo:
        name = todo.pop()
        if name in keep or name not in by_name:
            continue
        keep.add(name)
        todo.extend(i.lstrip("^").split(":")[0] for i in by_name[name].input)
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    return out


def _static_graph(graph_def: Any, tf: Any) -> Any:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def _scope_label(prefix: str) -> str:
    parts = [p for p in prefix.strip("/").split("/") if not p.startswith("StatefulPartitionedCall")]
    return "/".join(parts[1:] if len(parts) > 1 else parts)


def bypass_random_scopes(graph_def: Any, out_node: str, tf: Any) -> tuple[Any, list[str]]:
    """Rewire around every name scope that draws random numbers and maps exactly one outside
    tensor to exactly one tensor used outside, of the same dtype and (4-D) shape: an
    augmentation, dropout or noise layer traced in training mode, the identity at inference.
    The smallest such scope around each random op is taken."""
    removed: list[str] = []
    graph = None  # static shapes, read once: rewiring around same-shape scopes keeps them
    for _ in range(256):
        random_nodes = [n for n in graph_def.node if _RANDOM_OP.search(n.op)]
        if not random_nodes:
            break
        by_name = {n.name: n for n in graph_def.node}
        graph = graph or _static_graph(graph_def, tf)
        done = False
        for r in random_nodes:
            parts = _strip_folded(r.name).split("/")
            for k in range(len(parts) - 1, 0, -1):
                prefix = "/".join(parts[:k]) + "/"
                inside = {n.name for n in graph_def.node if _strip_folded(n.name).startswith(prefix)}
                ext_in, ext_out = set(), set()
                for n in graph_def.node:
                    for inp in n.input:
                        if inp.startswith("^"):
                            continue
                        src = inp.split(":")[0]
                        if n.name in inside and src not in inside and \
                                by_name[src].op not in ("Const",):
                            ext_in.add(_tensor_name(inp))
                        if n.name not in inside and src in inside:
                            ext_out.add(_tensor_name(inp))
                if out_node in inside:
                    break  # the scope holds the model's output: not a layer in the middle
                if len(ext_in) != 1 or len(ext_out) != 1:
                    continue
                src_t, dst_t = next(iter(ext_in)), next(iter(ext_out))
                a, b = graph.get_tensor_by_name(src_t), graph.get_tensor_by_name(dst_t)
                if a.dtype != b.dtype or a.shape.rank is None or a.shape.rank < 2 or \
                        a.shape.as_list() != b.shape.as_list():
                    continue
                for n in graph_def.node:
                    if n.name in inside:
                        continue
                    for i, inp in enumerate(n.input):
                        if not inp.startswith("^") and _tensor_name(inp) == dst_t:
                            n.input[i] = src_t
                ops = sorted({by_name[s].op for s in inside
                              if _RANDOM_OP.search(by_name[s].op) or "Image" in by_name[s].op})
                removed.append(f"{_scope_label(prefix)} (random ops in the serving graph: "
                               f"{', '.join(ops)}; the identity at inference)")
                graph_def = _prune(graph_def, out_node, tf)
                done = True
                break
            if done:
                break
        if not done:
            break
    return graph_def, removed


def repair_training_bn(path: Path, graph_def: Any, out_node: str,
                        variables: dict[str, list[Any]],
                        tf: Any) -> tuple[Any, list[str]]:
    """Replace the batch mean/variance of training-mode BatchNormalization (``tf.nn.moments``:
    ``<scope>/moments/mean`` and ``<scope>/moments/variance``) with the layer's moving
    statistics, found among the SavedModel's variables as ``<layer>/moving_mean``."""
    from tensorflow.core.framework import attr_value_pb2

    names = {n.name for n in graph_def.node}
    scopes = sorted({n.name[:-len("/moments/variance")] for n in graph_def.node
                     if n.op == "Mean" and n.name.endswith("/moments/variance")
                     and f"{n.name[:-len('/variance')]}/mean" in names})
    if not scopes:
        return graph_def, []
    graph = _static_graph(graph_def, tf)
    by_name = {n.name: n for n in graph_def.node}
    repaired = []
    for scope in scopes:
        layer = scope.split("/")[-1]
        found = None
        for cand in dict.fromkeys((layer, re.sub(r"_\d+$", "", layer))):
            mm = variables.get(f"{cand}/moving_mean", [])
            mv = variables.get(f"{cand}/moving_variance", [])
            if len(mm) == 1 and len(mv) == 1:  # two layers of that name: ambiguous, refuse
                found = (cand, mm[0].numpy(), mv[0].numpy())
                break
        if found is None:
            raise DataError(
                f"{path}: the serving graph runs BatchNormalization '{_scope_label(scope + '/')}' "
                "in training mode (it normalises with batch statistics, so a prediction depends "
                "on the other images in the batch) and edgekit cannot find its moving mean and "
                "variance among the SavedModel's variables. Load the .keras/.h5 file instead, or "
                "export again after removing the random augmentation layers.")
        cand, mean, var = found
        inner = f"{scope}/moments/"
        for n in list(graph_def.node):
            if n.name.startswith(inner):
                continue
            for i, inp in enumerate(n.input):
                if inp.startswith("^") or not inp.startswith(inner):
                    continue
                t = graph.get_tensor_by_name(_tensor_name(inp))
                stat = _moments_kind(by_name, inp.split(":")[0], inner)
                if stat is None or not t.shape.is_fully_defined():
                    raise DataError(f"{path}: cannot restore inference-mode BatchNormalization "
                                    f"'{_scope_label(scope + '/')}' in the serving graph")
                value = (mean if stat == "mean" else var).astype(t.dtype.as_numpy_dtype)
                const_name = f"{scope}/edgekit_moving_{stat}"
                if const_name not in by_name:
                    node = graph_def.node.add()
                    node.name, node.op = const_name, "Const"
                    node.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(type=t.dtype.as_datatype_enum))
                    node.attr["value"].CopyFrom(attr_value_pb2.AttrValue(
                        tensor=tf.make_tensor_proto(value.reshape(t.shape.as_list()))))
                    by_name[const_name] = node
                n.input[i] = const_name
        repaired.append(f"BatchNormalization '{_scope_label(scope + '/')}' ran in training mode: "
                        f"its batch statistics were replaced by {cand}/moving_mean and "
                        f"{cand}/moving_variance")
    return _prune(graph_def, out_node, tf), repaired


def _moments_kind(by_name: dict[str, Any], node: str, inner: str) -> str | None:
    """"mean" or "variance": which ``tf.nn.moments`` result a tensor of the scope carries."""
    for _ in range(8):
        n = by_name.get(node)
        if n is None or not n.name.startswith(inner):
            return None
        if n.name == f"{inner}mean":
            return "mean"
        if n.name == f"{inner}variance":
            return "variance"
        if n.op not in ("Squeeze", "Identity", "Reshape", "StopGradient"):
            return None
        node = n.input[0].split(":")[0]
    return None


