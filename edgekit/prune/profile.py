"""Where the time goes: a per-layer time profile of the UNPRUNED model on the target, for
latency-weighted pruning (``pruning.cost: latency``).

Remote targets (a board edgekit cannot profile from here) use their latency model's
prediction per fused kernel instead (:func:`profile_predicted`, ``source: predicted``).

Local targets are profiled with OpenVINO fp32 (``PERF_COUNT``): every executed node is traced
back to the torch convolution / linear layer it was converted from (BatchNorm and activations
fused into a convolution count as that convolution). Time no prunable layer owns (concats,
layout reorders, element-wise ops, attention-gate pooling) is attributed to the latest traced
layer before it, in execution order, whose output has as many channels as the node's output —
the node's time scales with those channels (``side_ms``); the latest layer when no width
matches — and what comes before any layer (input reorders) is ``fixed_ms``. The predicted time
of a pruned copy scales each layer's time with its kept ``in × out`` channels (a depthwise
convolution with its channels) and each side time with the owner's kept outputs.

:class:`TimeProfile` is plain data (JSON in the outcome / manifest); only
:func:`profile_openvino` needs a runtime, imported when called.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.openvino import NAME as OPENVINO_NAME
from edgekit.backends.openvino import disable_telemetry
from edgekit.bench import predict as latency_model
from edgekit.errors import ConfigError
from edgekit.targets import load_target

PROFILE_BACKEND = OPENVINO_NAME  # per-layer PERF_COUNT timing comes from OpenVINO
_OV_CONV = ("Convolution", "GroupConvolution", "MatMul")


@dataclass
class LayerTime:
    """One conv/linear layer's share of the unpruned model's time."""

    ms: float  # the layer's own nodes (convolution / matmul with what is fused into it)
    side_ms: float  # nodes after it that no layer owns (concat, reorders, gates, adds)
    in_channels: int
    out_channels: int
    depthwise: bool = False


def _layer_times(calls: list[tuple[str, Any, list[int]]]) -> dict[str, LayerTime]:
    """A zero-time row per conv/linear layer of ``calls`` (:func:`_leaves`), in call order."""
    import torch.nn as nn

    layers: dict[str, LayerTime] = {}
    for name, m, _ in calls:
        conv = isinstance(m, nn.Conv2d)
        layers.setdefault(name, LayerTime(
            0.0, 0.0, m.in_channels if conv else m.in_features,
            m.out_channels if conv else m.out_features,
            conv and m.groups > 1 and m.groups == m.in_channels))
    return layers


@dataclass
class TimeProfile:
    """Per-layer time of an unpruned model on one backend (minimum per node over ``iters``
    profiled inferences: the least disturbed estimate on a shared machine)."""

    backend: str
    threads: int
    iters: int
    layers: dict[str, LayerTime]
    fixed_ms: float  # time no layer's width scales (before the first layer, model I/O)
    source: str = "measured"  # measured on the target; predicted (its latency model); uniform
    nodes: int = 0
    untraced_conv_nodes: list[str] = field(default_factory=list)
    detail: str = ""  # how the time was had, beyond the runtime (a latency model's route)

    @property
    def label(self) -> str:
        """The runtime, with ``detail`` in brackets when there is one (status lines, reports)."""
        return f"{self.backend} ({self.detail})" if self.detail else self.backend

    @property
    def total_ms(self) -> float:
        return self.fixed_ms + sum(t.ms + t.side_ms for t in self.layers.values())

    def predict_ms(self, module: Any) -> float:
        """Predicted time of ``module`` (this profile's model, possibly pruned): each profiled
        layer's time scaled by its kept channels."""
        import torch.nn as nn

        mods = dict(module.named_modules())
        total = self.fixed_ms
        for name, t in self.layers.items():
            m = mods.get(name)
            if isinstance(m, nn.Conv2d):
                cin, cout = m.in_channels, m.out_channels
            elif isinstance(m, nn.Linear):
                cin, cout = m.in_features, m.out_features
            else:  # a layer the module lost: keep its time (conservative)
                total += t.ms + t.side_ms
                continue
            fo = cout / t.out_channels if t.out_channels else 1.0
            fi = cin / t.in_channels if t.in_channels else 1.0
            total += t.ms * (fo if t.depthwise else fi * fo) + t.side_ms * fo
        return total

    def group_ms(self) -> dict[str, float]:
        """ms per layer (own + side), largest first (for reports)."""
        return dict(sorted(((n, round(t.ms + t.side_ms, 4)) for n, t in self.layers.items()),
                           key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_ms"] = round(self.total_ms, 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimeProfile:
        d = {k: v for k, v in d.items() if k != "total_ms"}
        d["layers"] = {n: LayerTime(**t) for n, t in d["layers"].items()}
        return cls(**d)


def _leaves(module: Any, example: Any) -> list[tuple[str, Any, list[int]]]:
    """(name, layer, output shape) of every Conv2d/Linear call in execution order."""
    import torch
    import torch.nn as nn

    names = {m: n for n, m in module.named_modules()}
    order: list[tuple[str, Any, list[int]]] = []
    hooks = [m.register_forward_hook(
        lambda m, i, o: order.append((names[m], m, list(o.shape))))
        for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def _signature(m: Any, out_shape: list[int]) -> tuple:
    """What identifies a conv/linear call in the OpenVINO IR (names are lost when BatchNorm is
    folded into the convolution): weight shape, groups and output size."""
    import torch.nn as nn

    if isinstance(m, nn.Linear):
        return ("linear", m.out_features, m.in_features)
    return ("conv", m.out_channels, m.in_channels // m.groups, *m.kernel_size, m.groups,
            *out_shape[2:])


def ov_module(names: list[str]) -> str | None:
    """The deepest torch module path named in OpenVINO node names converted from PyTorch."""
    found = [m.group(1) for n in names if (m := re.search(r"__module\.([^/]+)/", n))]
    return max(found, key=lambda x: x.count("."), default=None)


def ir_to_torch(ir: Any, calls: list[tuple[str, Any, list[int]]]) -> dict[str, str]:
    """IR node name -> torch conv/linear layer: by the torch name where the IR kept it, else by
    signature in order (the first unused call with the same weight shape and output size)."""
    return match_ir(ir, [(name, _signature(m, shape)) for name, m, shape in calls])


def match_ir(ir: Any, layers: list[tuple[str, tuple]]) -> dict[str, str]:
    """:func:`ir_to_torch` over ``(torch layer name, signature)`` pairs in call order."""
    pending = list(layers)
    known = {name for name, _ in layers}
    out: dict[str, str] = {}
    for op in ir.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in _OV_CONV:
            continue
        named = ov_module([op.get_friendly_name()])
        if named not in known:
            w = list(op.input(1).get_partial_shape().to_shape())
            o = list(op.output(0).get_partial_shape().to_shape())
            if kind == "Convolution":
                sig: tuple = ("conv", w[0], w[1], w[2], w[3], 1, *o[2:])
            elif kind == "GroupConvolution":
                sig = ("conv", w[0] * w[1], w[2], w[3], w[4], w[0], *o[2:])
            else:
                i = list(op.input(0).get_partial_shape().to_shape())
                sig = ("linear", o[-1], i[-1])
        for j, (tname, tsig) in enumerate(pending):
            if (named in known and tname == named) or (named not in known and tsig == sig):
                out[op.get_friendly_name()] = tname
                del pending[j]
                break
    return out


def _channels(op: Any) -> int | None:
    """The channel count a runtime node's work scales with: its output's (NCHW: dim 1; a 2-D
    output: the last), a reduction's input's (a channel mean reads every channel and writes 1:
    its time is the gated convolution's, not that of the last 1-channel gate before it)."""
    info = op.get_rt_info()
    reduce = "layerType" in info and info["layerType"].astype(str) == "Reduce"
    if reduce and op.get_input_size():
        shape = op.input(0).get_partial_shape()
    else:
        shape = op.output(0).get_partial_shape() if op.get_output_size() else None
    if shape is None or shape.rank.is_dynamic or len(shape) < 2:
        return None
    dim = shape[1] if len(shape) == 4 else shape[-1]
    return dim.get_length() if dim.is_static else None


def _owner(seen: list[str], widths: dict[str, int], width: int | None) -> str:
    """Who owns an untraced node's time: the latest layer whose output width (``widths``:
    output channels by layer) is the node's (the node's work scales with those channels: an
    attention gate's multiply belongs to the convolution whose output it gates, not to the
    1-channel gate convolution before it), else the latest layer."""
    if width is not None:  # the recent layers only: a distant one of the same width is
        for name in reversed(seen[-64:]):  # another block's, not this tensor's producer
            if widths[name] == width:
                return name
    return seen[-1]


def profile_openvino(module: Any, example: Any, *, threads: int,
                     options: dict[str, Any] | None = None, iters: int = 30) -> TimeProfile:
    """Profile ``module`` (an unpruned torch model) with OpenVINO fp32 on this machine:
    ``PERF_COUNT`` per executed node, the minimum over ``iters`` inferences, attributed to the
    torch layers as the module docstring says."""

    disable_telemetry()
    try:
        import openvino as ov
    except ImportError as exc:  # pragma: no cover - part of edgekit[openvino]
        raise ConfigError("the latency cost profiles the model with OpenVINO: "
                          "pip install 'edgekit[openvino]'") from exc
    module = module.eval()
    calls = _leaves(module, example)
    with tempfile.TemporaryDirectory(prefix="edgekit-profile-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(ov.convert_model(module, example_input=example,
                                       input=[tuple(example.shape)]), str(xml),
                      compress_to_fp16=False)
        core = ov.Core()
        ir = core.read_model(str(xml))
        to_torch = ir_to_torch(ir, calls)
        compiled = core.compile_model(ir, "CPU", {**(options or {}), "PERF_COUNT": True,
                                                  "INFERENCE_NUM_THREADS": threads,
                                                  "INFERENCE_PRECISION_HINT": "f32"})
    origin: dict[str, str | None] = {}
    width: dict[str, int | None] = {}
    exec_order: list[str] = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        names = [n for n in info["originalLayersNames"].astype(str).split(",") if n] \
            if "originalLayersNames" in info else []
        origin[op.get_friendly_name()] = next((to_torch[n] for n in names if n in to_torch), None)
        width[op.get_friendly_name()] = _channels(op)
        exec_order.append(op.get_friendly_name())
    req = compiled.create_infer_request()
    x = np.zeros(tuple(example.shape), np.float32)
    for _ in range(3):
        req.infer({0: x})
    times: dict[str, list[float]] = {}
    types: dict[str, str] = {}
    for _ in range(iters):
        req.infer({0: x})
        for p in req.profiling_info:
            if p.status.name == "NOT_RUN":
                continue
            times.setdefault(p.node_name, []).append(p.real_time.total_seconds() * 1e3)
            types[p.node_name] = p.node_type
    layers = _layer_times(calls)
    fixed, seen, untraced = 0.0, [], []
    widths = {n: t.out_channels for n, t in layers.items()}
    for node in exec_order:
        if node not in times:
            continue
        t = min(times[node])
        layer = origin.get(node)
        if layer is not None and layer in layers:
            layers[layer].ms += t
            seen.append(layer)
            continue
        if types.get(node) in _OV_CONV + ("FullyConnected",):
            untraced.append(node)
        if not seen or types.get(node) in ("Input", "Output", "Parameter", "Result"):
            fixed += t
        else:
            layers[_owner(seen, widths, width.get(node))].side_ms += t
    for t in layers.values():
        t.ms, t.side_ms = round(t.ms, 5), round(t.side_ms, 5)
    return TimeProfile(PROFILE_BACKEND, threads, iters, layers, round(fixed, 5),
                       nodes=len(times), untraced_conv_nodes=untraced)


def uniform_profile(module: Any, example: Any, ms: dict[str, float] | None = None,
                    default_ms: float = 1.0) -> TimeProfile:
    """A constructed profile (tests, what-if): every conv/linear layer ``default_ms`` unless
    ``ms`` names it."""
    layers = _layer_times(_leaves(module.eval(), example))
    for name, t in layers.items():
        t.ms = (ms or {}).get(name, default_ms)
    return TimeProfile("constructed", 0, 0, layers, 0.0, source="uniform")


def profile_predicted(module: Any, example: Any, target: Any, *, threads: int | None = None
                      ) -> tuple[TimeProfile | None, str]:
    """``(profile, why)``: the per-layer time of ``module`` as ``target``'s latency model
    predicts it for its first preferred fp32 runtime (``edgekit.bench.predict``: a roofline
    time per fused kernel, fitted on the board's published latencies), at the fitted thread
    count nearest ``threads`` (default: the board's cores). Convolution / linear kernels are
    the layers' own time; element-wise, pooling and gate kernels are side time of the latest
    layer with as many output channels (else the latest layer), as in the measured profile;
    ``c0`` and what precedes the first layer are fixed. ``None`` with the reason when the
    target has no usable model."""
    tm = latency_model.target_latency_model(target)
    if tm.error:
        return None, tm.error
    backend = next((b for b in target.preferred.get("fp32", [])
                    if (r := tm.routes.get(b, {}).get("fp32")) is not None
                    and not r.unsupported), None)
    if backend is None:
        return None, f"no fp32 route in {target.name}'s latency model"
    route = tm.routes[backend]["fp32"]
    fitted = {c.threads: c for k, c in tm.groups.items() if k.rsplit("/", 1)[0] == route.group}
    if not fitted:
        return None, f"no fitted {route.group} group in {target.name}'s latency model"
    want = threads or (tm.hardware.cores if tm.hardware else max(fitted))
    n = min(fitted, key=lambda t: (abs(t - want), -t))
    coeffs = dataclasses.replace(fitted[n], precision=route.compute or route.group.split("/")[1])
    module = module.eval()
    calls = _leaves(module, example)
    ks = latency_model.kernels(module, tuple(example.shape))
    convs = [k for k in ks if k.kind in latency_model.CONV_KINDS]
    if len(convs) != len(calls):  # a functional convolution the layers do not own
        return None, (f"the latency model's {len(convs)} convolution kernels do not match the "
                      f"model's {len(calls)} convolution / linear calls")
    c0, times = latency_model.kernel_times(ks, coeffs, tm.hardware)
    layers = _layer_times(calls)
    widths = {n: t.out_channels for n, t in layers.items()}
    fixed, seen, call = c0, [], iter(calls)
    for k, t in zip(ks, times, strict=True):
        if k.kind in latency_model.CONV_KINDS:
            name = next(call)[0]
            layers[name].ms += t
            seen.append(name)
        elif not seen:
            fixed += t
        else:
            layers[_owner(seen, widths, k.channels)].side_ms += t
    for lt in layers.values():
        lt.ms, lt.side_ms = round(lt.ms, 5), round(lt.side_ms, 5)
    return TimeProfile(backend, n, 0, layers, round(fixed, 5), source="predicted",
                       nodes=len(ks), detail=f"{route.group}/{n} latency model"), ""


def profile_for_target(module: Any, example: Any, target: Any, *, threads: int | None = None,
                       iters: int = 30) -> tuple[TimeProfile | None, str]:
    """``(profile, why)``: the profile the latency cost uses on ``target``: measured with
    OpenVINO fp32 on a local target; predicted by the target's latency model for a remote one
    (:func:`profile_predicted`); ``None`` with the reason when it has none (the caller falls
    back to MACs and says so)."""
    if isinstance(target, str):
        target = load_target(target)
    if target.access.kind != "local":
        return profile_predicted(module, example, target, threads=threads)
    threads = threads or max(target.thread_counts(os.cpu_count() or 1))
    options = {k: v for k, v in (target.runtime_options.get(PROFILE_BACKEND) or {}).items()
               if k != "INFERENCE_PRECISION_HINT"}
    return profile_openvino(module, example, threads=threads, options=options, iters=iters), ""

