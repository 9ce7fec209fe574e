"""Editable graphs for pruning models that are not zoo architectures.

Torch-Pruning finds its groups by tracing autograd through real ``nn.Conv2d`` / ``nn.Linear`` /
``nn.BatchNorm`` modules. A ``torch.export`` program (``.pt2``) has none: ``program.module()``
is a ``GraphModule`` whose layers are ``call_function`` nodes (``aten.conv2d``,
``aten.convolution``, ``aten.linear``, ``aten.addmm``, ``aten.batch_norm``,
``aten._native_batch_norm_legit_no_training``) on ``get_attr`` weights. :func:`editable`
rewrites each of them into a ``call_module`` node of a real module that holds the same tensors
(named after the weights' own prefix, e.g. ``features.3``), so the zoo's dependency graph,
importance and policy apply unchanged. A program exported at batch 1 fixes its batch in
reshapes (``view(x, [1, -1])``): those take the batch from the input again, so recovery trains
on real batches.

A reshape to a constant shape that only merges dimensions after the batch (``x.view(-1, 64 * 8 *
8)``, or any ``flatten`` of a decomposed program) becomes ``flatten`` again, so it follows the
pruned width. Some graphs do fix a channel count in an op Torch-Pruning cannot shrink: a reshape
that splits channels (a channel shuffle), a slice or index on the channel dimension, a custom op,
a layer whose weights are computed in the graph. :func:`blockers` finds each such op and the
layers whose output channels reach it; the engine keeps those layers' groups whole (pruning
around the op) and says so, and refuses with the op's name when nothing else is left.

torch is imported inside the functions (edgekit.sources imports the engine without torch).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from edgekit.errors import ConfigError

# ops through which a tensor keeps its channels where Torch-Pruning can follow them
_CHANNEL_SAFE = frozenset((
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardswish",
    "hardswish_", "hardsigmoid", "leaky_relu", "elu", "selu", "mish", "hardtanh", "hardtanh_",
    "clamp", "clamp_min", "clamp_max", "add", "add_", "sub", "mul", "mul_", "div", "neg", "abs",
    "pow", "sqrt", "rsqrt", "exp", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_avg_pool2d", "mean", "sum", "amax",
    "max", "dropout", "feature_dropout", "native_dropout", "flatten", "cat", "clone",
    "contiguous", "alias", "detach", "_to_copy", "to", "upsample_nearest2d",
    "upsample_bilinear2d", "constant_pad_nd", "pad", "softmax", "_softmax", "log_softmax",
    "_log_softmax", "squeeze", "unsqueeze", "lift_fresh_copy", "type_as", "sym_size",
    "_assert_tensor_metadata", "scalar_tensor", "full_like", "zeros_like", "ones_like",
))
_RESHAPES = frozenset(("view", "reshape", "_unsafe_view"))
_CHANNEL_INDEXING = frozenset(("slice", "select", "narrow", "index_select", "split",
                               "split_with_sizes", "chunk", "unbind", "index", "gather",
                               "tensor_split"))
_INT_MAX = 2 ** 62
PROGRAM_METADATA = "edgekit.json"  # the extra file of a pruned .pt2: classes, spec, record


@dataclass(frozen=True)
class Blocker:
    """An op that fixes a channel count, and the layers whose output channels reach it."""

    node: str  # the FX node's name
    target: str  # the op, e.g. aten.view.default
    why: str  # "fixes 4096 features", "indexes channels (dim 1)", "is a custom op"
    layers: tuple[str, ...]

    def describe(self) -> str:
        return (f"{self.target} at node '{self.node}' {self.why}"
                + (f" (fed by {', '.join(self.layers)})" if self.layers else ""))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers)}


def _op(target: Any) -> tuple[str, str]:
    """(namespace, base name) of a call_function target: ("aten", "view")."""
    packet = getattr(target, "_overloadpacket", None)
    if packet is not None:
        return str(getattr(target, "namespace", "aten")), packet.__name__
    if target is operator.getitem:
        return "operator", "getitem"
    return getattr(target, "__module__", "") or "", getattr(target, "__name__", str(target))


def _fetch(gm: Any, node: Any) -> Any:
    """The tensor of a get_attr node (None for None)."""
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        raise LookupError
    return operator.attrgetter(node.target)(gm)


def _normalized(node: Any) -> dict[str, Any] | None:
    from torch.fx.operator_schemas import normalize_function

    pair = normalize_function(node.target, tuple(node.args), dict(node.kwargs),
                              normalize_to_only_use_kwargs=True)
    return None if pair is None else dict(pair.kwargs)


def _layer(gm: Any, node: Any) -> tuple[Any, Any, list[Any]] | None:
    """(real module, input node, weight get_attr nodes) for a conv/linear/BN call, or None
    (not a layer, or one whose weights are not plain attributes: a blocker then)."""
    import torch.nn as nn

    ns, name = _op(node.target)
    if ns != "aten" or name not in ("conv2d", "convolution", "linear", "addmm", "batch_norm",
                                    "_native_batch_norm_legit_no_training"):
        return None
    kw = _normalized(node)
    if kw is None:
        return None
    try:
        if name in ("conv2d", "convolution"):
            w, b = _fetch(gm, kw["weight"]), _fetch(gm, kw.get("bias"))
            if w.dim() != 4 or kw.get("transposed", False) or isinstance(kw.get("padding"), str):
                return None
            out_c, in_per_group, kh, kw_ = w.shape
            groups = int(kw.get("groups", 1))
            m = nn.Conv2d(in_per_group * groups, out_c, (kh, kw_), stride=tuple(kw["stride"]),
                          padding=tuple(kw["padding"]), dilation=tuple(kw.get("dilation", (1, 1))),
                          groups=groups, bias=b is not None)
            if any(int(p) for p in kw.get("output_padding", ()) or ()):
                return None
            m.weight = w
            if b is not None:
                m.bias = b
            return m, kw["input"], [kw["weight"], kw.get("bias")]
        if name == "linear":
            w, b = _fetch(gm, kw["weight"]), _fetch(gm, kw.get("bias"))
            m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            m.weight = w
            if b is not None:
                m.bias = b
            return m, kw["input"], [kw["weight"], kw.get("bias")]
        if name == "addmm":  # addmm(bias, x, t(weight)) with beta = alpha = 1
            t = kw["mat2"]
            if kw.get("beta", 1) != 1 or kw.get("alpha", 1) != 1 or \
                    getattr(t, "op", None) != "call_function" or _op(t.target)[1] not in (
                        "t", "permute") or (_op(t.target)[1] == "permute"
                                            and list(t.args[1]) != [1, 0]):
                return None
            bias = kw["self"] if "self" in kw else kw["input"]  # the schema's name varies
            w, b = _fetch(gm, t.args[0]), _fetch(gm, bias)
            if b is None or b.dim() != 1:
                return None
            m = nn.Linear(w.shape[1], w.shape[0])
            m.weight, m.bias = w, b
            return m, kw["mat1"], [t.args[0], bias]
        # batch norm (inference form)
        w, b = _fetch(gm, kw.get("weight")), _fetch(gm, kw.get("bias"))
        mean, var = _fetch(gm, kw["running_mean"]), _fetch(gm, kw["running_var"])
        if name == "batch_norm" and kw.get("training"):
            return None
        val = kw["input"].meta.get("val") if hasattr(kw["input"], "meta") else None
        cls = nn.BatchNorm1d if getattr(val, "dim", lambda: 4)() == 2 else nn.BatchNorm2d
        m = cls(mean.shape[0], eps=float(kw["eps"]), momentum=float(kw["momentum"]),
                affine=w is not None)
        if w is not None:
            m.weight, m.bias = w, b
        m.running_mean, m.running_var = mean, var
        return m, kw["input"], [kw.get("weight"), kw.get("bias"), kw["running_mean"],
                                kw["running_var"]]
    except (LookupError, TypeError, ValueError, AttributeError):
        return None


def _module_name(gm: Any, attrs: list[Any], fallback: str) -> str:
    """Where the new module goes: the weights' own prefix (``features.3`` for
    ``features.3.weight``) when that holder has nothing else the graph reads; else the node."""
    targets = [a.target for a in attrs if a is not None]
    prefixes = {t.rpartition(".")[0] for t in targets}
    if len(prefixes) == 1 and (prefix := prefixes.pop()):
        try:
            holder = gm.get_submodule(prefix)
        except AttributeError:
            holder = None
        if holder is not None and not any(True for _ in holder.children()):
            own = {f"{prefix}.{n}" for n, _ in holder.named_parameters(recurse=False)}
            own |= {f"{prefix}.{n}" for n, _ in holder.named_buffers(recurse=False)}
            readers = {n.target for n in gm.graph.nodes if n.op == "get_attr" and n.users
                       and n.target.startswith(prefix + ".")}
            if readers <= set(targets) and own - {f"{prefix}.num_batches_tracked"} <= set(targets):
                return prefix
    return fallback


def is_graph(module: Any) -> bool:
    """An FX graph (a ``torch.export`` program's ``module()``, edgekit's wrapper of one, any
    ``GraphModule``): what :func:`editable` rewrites."""
    import torch

    return isinstance(getattr(module, "graph_module", module), torch.fx.GraphModule)


def editable(module: Any, example: Any) -> Any:
    """A copy of ``module`` that Torch-Pruning can prune: a ``torch.export`` program's graph
    (or any ``GraphModule``) with its conv/linear/BN calls turned into real modules and its
    batch-1 reshapes made batch-free; any other module is copied as it is."""
    import torch

    gm = getattr(module, "graph_module", module)  # edgekit's ExportedModule wraps the graph
    if not isinstance(gm, torch.fx.GraphModule):
        return copy.deepcopy(module)
    with warnings.catch_warnings():  # torch's own pytree deprecation, raised by the copy
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        gm = copy.deepcopy(gm)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)  # input guards of the export; re-export writes its own
    made: dict[tuple[str, ...], str] = {}
    for node, (layer, inp, attrs) in _convertible(gm).items():
        key = tuple(a.target for a in attrs)
        if key not in made:  # weights used by several calls (a CBAM MLP): one module, reused
            made[key] = _module_name(gm, attrs, node.name)
            for a in attrs:
                _drop_attr(gm, a.target)
            gm.add_submodule(made[key], layer)
        inp = node.args[inp] if isinstance(inp, int) else node.kwargs[inp]  # as rewired now
        with graph.inserting_before(node):
            new = graph.call_module(made[key], (inp,))
        new.meta = dict(node.meta)
        if _op(node.target)[1] == "_native_batch_norm_legit_no_training":  # (out, mean, rstd)
            for user in list(node.users):
                if user.target is operator.getitem and user.args[1] == 0:
                    user.replace_all_uses_with(new)
                    graph.erase_node(user)
            if node.users:
                raise ConfigError(f"node '{node.name}' ({node.target}): its saved statistics are "
                                  "read by the graph, which edgekit cannot prune")
        else:
            node.replace_all_uses_with(new)
        graph.erase_node(node)
        for a in attrs:
            for via in list(a.users):  # addmm's transpose of its weight, now unread
                if not via.users:
                    graph.erase_node(via)
            if not a.users:
                graph.erase_node(a)
    for node in list(graph.nodes):  # e.g. a BatchNorm's num_batches_tracked, never read
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    _spatial_gates(gm)
    _flexible_reshapes(graph)
    _batch_free(gm, example)
    _plain_call(graph)
    graph.eliminate_dead_code()
    graph.lint()
    out = torch.fx.GraphModule(gm, graph)
    out.delete_all_unused_submodules()
    return out.eval()


def _convertible(gm: Any) -> dict[Any, tuple[Any, int | str, list[Any]]]:
    """Layer calls to rewrite, with their modules, where their input sits in the call and the
    weights they read: those whose weights only layer calls of
    the same kind and settings read (a weight also read by any other op stays as it is, and
    :func:`blockers` names that op)."""
    found = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and (layer := _layer(gm, node)) is not None:
            # where the input sits in the call (the node itself is replaced as earlier layers
            # are rewritten)
            where = next((i for i, a in enumerate(node.args) if a is layer[1]), None)
            if where is None:
                where = next((k for k, a in node.kwargs.items() if a is layer[1]), None)
            if where is not None:
                found[node] = (layer[0], where, [a for a in layer[2] if a is not None])
    by_key: dict[tuple[str, ...], list[Any]] = {}
    for node, (_, _, attrs) in found.items():
        by_key.setdefault(tuple(a.target for a in attrs), []).append(node)
    keep = {}
    for nodes in by_key.values():
        readers = {r for n in nodes for a in found[n][2] for u in a.users
                   for r in (u.users if _op(u.target)[1] in ("t", "permute") else (u,))}
        if readers == set(nodes) and len({repr(found[n][0]) for n in nodes}) == 1:
            keep.update({n: found[n] for n in nodes})
    return keep


def _channel_reduction(node: Any) -> tuple[str, Any] | None:
    """``("mean" | "max", x)`` for a keep-dim reduction of ``x`` over its channels (dim 1 of a
    4-D tensor): ``mean(x, [1], True)``, ``amax(x, [1], True)`` or ``max(x, 1, True)[0]``."""
    if getattr(node, "op", None) != "call_function":
        return None
    ns, name = _op(node.target)
    if ns == "operator" and name == "getitem" and node.args[1] == 0:
        inner = node.args[0]
        if getattr(inner, "op", None) == "call_function" and _op(inner.target) == ("aten", "max"):
            found = _normalized(inner) or {}
            if found.get("dim") in (1, -3) and found.get("keepdim"):
                return "max", found.get("input")
        return None
    if ns != "aten" or name not in ("mean", "amax"):
        return None
    found = _normalized(node) or {}
    dims = found.get("dim")
    dims = list(dims) if isinstance(dims, list | tuple) else [dims]
    if dims in ([1], [-3]) and found.get("keepdim"):
        return ("mean" if name == "mean" else "max"), found.get("input", node.args[0])
    return None


def _spatial_gate_type() -> type:
    """The zoo's spatial gate block (torch-bound: imported when a graph is edited)."""
    from edgekit.zoo.blocks import SpatialGate

    return SpatialGate


def _gate_at(gm: Any, mul: Any) -> tuple[Any, Any, list[Any], bool] | None:
    """``(x, conv node, nodes the gate replaces, max first)`` when ``mul`` is the product of a
    spatial attention gate (see :func:`_spatial_gates`) whose parts nothing else reads."""
    import torch.nn as nn

    if mul.op != "call_function" or _op(mul.target) != ("aten", "mul") or len(mul.args) != 2:
        return None
    for x, sig in (mul.args, mul.args[::-1]):
        if getattr(sig, "op", None) != "call_function" or _op(sig.target) != ("aten", "sigmoid"):
            continue
        conv = sig.args[0]
        if getattr(conv, "op", None) != "call_module":
            continue
        layer, cat = gm.get_submodule(conv.target), conv.args[0]
        if not (isinstance(layer, nn.Conv2d) and layer.in_channels == 2
                and layer.out_channels == 1 and getattr(cat, "op", None) == "call_function"
                and _op(cat.target) == ("aten", "cat") and len(cat.args[0]) == 2
                and (cat.args[1] if len(cat.args) > 1 else 0) in (1, -3)):
            continue
        parts = [_channel_reduction(n) for n in cat.args[0]]
        if any(p is None or p[1] is not x for p in parts) or \
                {p[0] for p in parts} != {"mean", "max"}:  # type: ignore[index]
            continue
        internal = [sig, conv, cat, *cat.args[0]]
        if all(len(n.users) == 1 for n in internal):  # a part read elsewhere: left as it is
            return x, conv, internal, parts[0][0] == "max"  # type: ignore[index]
    return None


def _spatial_gates(gm: Any) -> None:
    """Rewrite each spatial attention gate of the graph — ``x * sigmoid(conv(cat([mean_c(x),
    max_c(x)])))`` with a 2 → 1 channel convolution module, either order — into one
    ``SpatialGate`` module holding that convolution (in its place when the convolution's holder
    has nothing else), so the engine's channel-preserving gate pruner applies as in the zoo's
    CBAM. Left as it is, the tracer couples the gate's single channel with every gated channel
    (a width-1 group: the gated layers cannot be pruned at all)."""
    graph = gm.graph
    for mul in list(graph.nodes):
        found = _gate_at(gm, mul)
        if found is None:
            continue
        x, conv, internal, max_first = found
        gate = _spatial_gate_type()(conv=gm.get_submodule(conv.target), max_first=max_first)
        holder, _, leaf = conv.target.rpartition(".")
        if holder and leaf == "conv" and len(list(gm.get_submodule(holder).children())) == 1:
            name = holder  # the gate takes the holder's place: the conv keeps its name
        else:
            name = f"{conv.target.replace('.', '_')}_spatial_gate"
        gm.add_submodule(name, gate)
        with graph.inserting_before(mul):
            new = graph.call_module(name, (x,))
        new.meta = dict(mul.meta)
        mul.replace_all_uses_with(new)
        graph.erase_node(mul)
        for n in internal:
            if not n.users:
                graph.erase_node(n)


def _plain_call(graph: Any) -> None:
    """A single-output program called as ``module(x) -> tensor`` without its pytree wrapper
    (whose specs copy slowly and with warnings on every deepcopy the pruner makes)."""
    import torch

    codegen = getattr(graph, "_codegen", None)
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    value = out.args[0]
    if type(codegen).__name__ != "_PyTreeCodeGen" or not (
            isinstance(value, tuple | list) and len(value) == 1) or any(
            n.op == "placeholder" and n.next.op == "placeholder" for n in graph.nodes):
        return
    out.args = (value[0],)
    graph._codegen = torch.fx.graph.CodeGen()


def _drop_attr(gm: Any, target: str) -> None:
    prefix, _, attr = target.rpartition(".")
    holder = gm.get_submodule(prefix) if prefix else gm
    if hasattr(holder, attr):
        delattr(holder, attr)


def _flexible_reshapes(graph: Any) -> None:
    """A reshape that only merges neighbouring dimensions after the batch (what ``flatten``
    decomposes into, and ``x.view(-1, 64 * 8 * 8)`` after the last convolution) becomes
    ``flatten(start, end)``, and a reshape to the same shape goes: the same values, but a
    width that follows the pruned channels instead of fixing them."""
    import torch

    for node in list(graph.nodes):
        if node.op != "call_function" or _op(node.target)[1] not in _RESHAPES:
            continue
        src = node.args[0]
        shapes = [getattr(getattr(n, "meta", {}).get("val"), "shape", None) for n in (src, node)]
        if any(sh is None or not all(isinstance(d, int) for d in sh) for sh in shapes):
            continue
        a, b = (list(sh) for sh in shapes)
        if a == b:
            node.replace_all_uses_with(src)
            graph.erase_node(node)
            continue
        span = next(((i, j) for i in range(1, len(a)) for j in range(i + 1, len(a))
                     if b == a[:i] + [math.prod(a[i:j + 1])] + a[j + 1:]), None)
        if span is None:
            continue
        with graph.inserting_before(node):
            flat = graph.call_function(torch.ops.aten.flatten.using_ints, (src, *span))
        flat.meta = dict(node.meta)
        node.replace_all_uses_with(flat)
        graph.erase_node(node)


def _batch_free(gm: Any, example: Any) -> None:
    """Reshapes that repeat the export's batch of 1 (``view(x, [1, -1])``) take the batch from
    their input instead, so the graph runs at any batch size."""
    batch = int(example.shape[0])
    if batch != 1:
        return
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or _op(node.target)[1] not in _RESHAPES | {"expand"}:
            continue
        shape = node.args[1] if len(node.args) > 1 else None
        src = node.args[0]
        val = getattr(src, "meta", {}).get("val")
        if not isinstance(shape, list | tuple) or not shape or shape[0] != 1 or val is None \
                or val.dim() < 1 or not isinstance(val.shape[0], int) or val.shape[0] != 1:
            continue
        with graph.inserting_before(node):
            size = graph.call_function(_sym_size(), (src, 0))
        node.args = (src, [size, *shape[1:]], *node.args[2:])


def _sym_size() -> Any:
    import torch

    return torch.ops.aten.sym_size.int


def blockers(module: Any) -> list[Blocker]:
    """Ops of ``module``'s FX graph that fix a channel count Torch-Pruning would change, each
    with the layers whose output channels reach it. [] for a module without an FX graph."""
    import torch
    import torch.nn as nn

    gm = getattr(module, "graph_module", module)
    if not isinstance(gm, torch.fx.GraphModule):
        return []
    mods = dict(gm.named_modules())
    layers = (nn.Conv2d, nn.Linear)
    carries: set[Any] = set()  # nodes whose value has channels some layer could lose
    found: list[Blocker] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = mods.get(node.target)
            if isinstance(m, layers + (nn.BatchNorm1d, nn.BatchNorm2d)):
                carries.add(node)
            elif any(a in carries for a in node.all_input_nodes) and \
                    isinstance(m, _channel_safe_modules()):
                carries.add(node)
            elif any(a in carries for a in node.all_input_nodes):
                carries.add(node)
                found.append(Blocker(node.name, f"module {type(m).__name__}",
                                     "is a module edgekit cannot see into", ()))
            continue
        if node.op != "call_function":
            continue
        inputs = [a for a in node.all_input_nodes if a in carries]
        if not inputs:
            continue
        carries.add(node)
        ns, name = _op(node.target)
        why = _why(node, ns, name)
        if why:
            target = (str(node.target) if hasattr(node.target, "_overloadpacket")
                      else f"{ns}.{name}")
            found.append(Blocker(node.name, target, why, ()))
    return [dataclasses.replace(b, layers=tuple(_feeding_layers(gm, b.node, mods)))
            for b in found]


def _channel_safe_modules() -> tuple[type, ...]:
    """Leaf modules of a traced graph (``torch.fx.symbolic_trace``) that keep channels where
    Torch-Pruning follows them: activations, pooling, dropout, identity, flatten, upsampling,
    and the spatial gates :func:`_spatial_gates` makes (the engine's gate pruner follows them)."""
    import torch.nn as nn
    from torch.nn.modules import activation, dropout, pooling

    from_modules = [c for mod in (activation, pooling, dropout) for c in vars(mod).values()
                    if isinstance(c, type) and issubclass(c, nn.Module)
                    and c not in (nn.MultiheadAttention, nn.Softmax2d, nn.Module)]
    return (*from_modules, nn.Identity, nn.Flatten, nn.Upsample, _spatial_gate_type())


def _why(node: Any, ns: str, name: str) -> str | None:
    """Why this op (whose input carries prunable channels) blocks pruning; None if it does not."""
    if ns == "operator" and name == "getitem":
        return None
    if ns not in ("aten", "prims"):
        return "is a custom op"
    if name in _RESHAPES:
        shape = list(node.args[1]) if len(node.args) > 1 else []
        tail = shape[1:]
        if tail and not any(isinstance(s, int) and s == -1 for s in tail) and \
                all(isinstance(s, int) for s in tail):
            n = math.prod(tail)
            return (f"fixes {n} features" if len(tail) == 1
                    else f"fixes the shape [N, {', '.join(map(str, tail))}]")
        return None
    if name in _CHANNEL_INDEXING:
        dim = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], int) else \
            node.kwargs.get("dim", 0)
        if name == "index":
            return "indexes channels with a tensor index"
        val = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
        ndim = val.dim() if val is not None else 4
        if dim % max(ndim, 1) != 1:
            return None
        if name == "slice":
            start = node.args[2] if len(node.args) > 2 else 0
            end = node.args[3] if len(node.args) > 3 else _INT_MAX
            step = node.args[4] if len(node.args) > 4 else 1
            width = int(val.shape[1]) if val is not None else None
            if start in (0, None) and step == 1 and (end is None or (isinstance(end, int) and (
                    end >= _INT_MAX or (width is not None and end >= width)))):
                return None  # x[:, :] — the whole channel range
        return "indexes channels (dim 1) at fixed positions"
    if name in ("conv2d", "convolution", "linear", "addmm", "batch_norm",
                "_native_batch_norm_legit_no_training", "conv1d", "conv3d", "mm", "matmul",
                "bmm", "layer_norm", "group_norm", "instance_norm", "native_layer_norm",
                "native_group_norm"):
        return "has weights edgekit cannot turn into a prunable layer"
    if name in ("expand", "repeat", "permute", "transpose", "t", "unflatten"):
        return f"rearranges the channel dimension ({name})"
    if name in _CHANNEL_SAFE:
        return None
    return f"is an op edgekit does not know to keep channels ({name})"


def _feeding_layers(gm: Any, node_name: str, mods: dict[str, Any]) -> list[str]:
    """The conv/linear layers whose output channels reach node ``node_name``: walking back
    through channel-preserving ops, BatchNorm and depthwise convolutions."""
    import torch.nn as nn

    nodes = {n.name: n for n in gm.graph.nodes}
    todo, seen, out = list(nodes[node_name].all_input_nodes), set(), []
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module":
            m = mods.get(n.target)
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1 and \
                m.groups == m.in_channels == m.out_channels
            if isinstance(m, nn.Conv2d | nn.Linear) and not depthwise:
                out.append(str(n.target))
                continue
        if n.op in ("call_module", "call_function"):
            todo.extend(n.all_input_nodes)
    return list(dict.fromkeys(out))


def check_runs(module: Any, example: Any) -> None:
    """Run ``module`` once; a failure inside an FX graph names the node and op that failed."""
    import torch

    gm = getattr(module, "graph_module", module)
    if not isinstance(gm, torch.fx.GraphModule):
        return

    class Named(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            try:
                return super().run_node(n)
            except Exception as exc:
                raise ConfigError(
                    f"the pruned graph fails at node '{n.name}' ({n.target}): {exc}. That op "
                    "fixes a channel count; protect the layers that feed it (--protect)") from exc

    with torch.no_grad():
        Named(gm).run(example)


def export_program(module: Any, example: Any, path: Any, extra: dict[str, str]) -> None:
    """Write ``module`` as a ``torch.export`` program at ``example``'s shape to ``path``, with
    ``extra`` JSON files (class names, preprocessing, the pruning record) beside the graph."""
    import torch

    module = module.eval()
    with torch.no_grad():
        program = torch.export.export(module, (example,))
    torch.export.save(program, str(path), extra_files=extra)
