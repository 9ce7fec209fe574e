"""Latency model: predict a CNN's batch-1 CPU latency on a target that cannot be reached.

A forward pass is split into **fused kernels** (as nn-Meter does); each kernel costs a roofline
time and the sum is calibrated on published latencies of reference networks
(:mod:`edgekit.bench.refnets`)::

    t_ms = c0 + Σ_k max(work_k / (η_kind · peak), bytes_k / (η_mem · bandwidth)) + c_op · n_kernels

``peak`` is the target's all-core MAC/s for the precision, scaled by ``threads / cores`` and by
the clock of the measurement; ``bandwidth`` is the target's DRAM bandwidth (RPi 4: the STREAM
figure). The η are fitted per (board, runtime, precision, threads) group: a maximum-a-posteriori
least-squares fit of log latencies, with log-normal priors that pull every η_kind toward one
common η (times a prior kind ratio: depthwise and element-wise kernels are slower per MAC) and
the common η, η_mem, c0 and c_op toward defaults or toward a related group's fit (``prior=``).
With few points the priors decide the shape and the data only the overall scale; with many
points the data decide. Every prediction carries an expected relative error: the RMS of the
fit's leave-one-out relative residuals (``DEFAULT_REL_ERR`` when a group has under 3 points).

**Fusion rules** of :func:`kernels` (one forward pass on the meta device, recorded at the
``torch.nn.functional`` / tensor-method level):

1. ``conv*d`` and ``linear`` start a kernel: ``depthwise`` (groups = in channels), ``fc``
   (linear, or a convolution with a 1×1 output map, as SE layers are), ``conv1x1``, ``convkxk``.
2. A unary element-wise op (BN, ReLU/ReLU6/hard-swish/SiLU/GELU/sigmoid…, a tensor-scalar
   op) whose input is the output of the *immediately preceding* kernel fuses into it; otherwise
   it is an ``elementwise`` kernel of its own. Residual adds are ``elementwise`` (not fused into
   the conv) and a following activation fuses into the add.
3. A broadcast multiplication (``x * gate``) is a ``gate`` kernel, and so are the reductions
   (mean/amax/sum) of that same ``x``; other reductions and pooling ops are ``pool``.
4. ``cat`` is an ``elementwise`` copy; views, flatten and dropout are free.

``macs`` counts conv/linear multiply-accumulates only (as :mod:`edgekit.inspect`); ``work`` is
``macs`` for conv kinds and the larger of input and output elements for the others. Bytes
moved = (input + output activations + weights) × bytes per element (fp32 4, fp16 2, int8 1;
int32 biases are counted at the same width as the weights; caches are ignored).
:func:`onnx_kernels` applies the same rules to an ONNX graph (QDQ INT8 included) and yields the
same MACs and kinds as :func:`kernels` of the source module for every zoo model.

**Targets** (:func:`predict_bundle`, the bench's entry point). A profile's ``predict.routes``
says which group family (``runtime/precision``) predicts each edgekit backend at each artifact
precision, at which compute precision the kernels are costed (``compute``), how much error a
proxy adds (``proxy_rel_err``: ONNX Runtime and OpenVINO on ARM boards have no published
figures and use the ncnn groups) and a ``basis`` text carried into every row. Decisions:

* fp16 artifacts on a CPU without fp16 arithmetic (RPi 4, Jetson Nano, x86) are costed as
  fp32 compute AND fp32 bytes: LiteRT and OpenVINO expand the fp16 weights to fp32 at load, the
  activations are fp32 anyway; only the file is smaller.
* OpenVINO INT8 on ARM runs in floating point (fp16 by default; edgekit opens INT8 IRs in f32):
  costed as fp32, never as int8. On ARMv8.0 cores without fp16 arithmetic (RPi 4, Jetson Nano)
  OpenVINO 2026.4 cannot compile INT8 IRs at all: the route is ``unsupported`` and the row is
  an error saying so, not a number.
* A thread count without a fitted group lies on the Amdahl curve through the two fitted counts
  around it, else is scaled from the nearest fitted count by the target's ``thread_scaling``
  (Amdahl's law fitted on ncnn's 1- vs 4-thread figures), with that fit's error added.
* The expected error of a row combines, in quadrature, the group's leave-one-out error, the
  proxy error, the thread-scaling error and (x86 profiles predicted from another x86 machine's
  calibration) the transfer error; ``low``/``high`` are ``p50 ÷ (1 + e)`` and ``p50 × (1 + e)``.

**Local calibration** (``edgekit targets calibrate x86-local``, :mod:`edgekit.bench.calibrate`):
groups measured on this machine, stored in ``$EDGEKIT_CONFIG_DIR/calibration/x86-local.json``
(default ``~/.config/edgekit``) under a key of CPU model, core count and edgekit version; read
back by :func:`local_coeffs`, refused on any other machine or version.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from edgekit.bench.hostinfo import normalize_arch

KINDS = ("conv1x1", "convkxk", "depthwise", "fc", "elementwise", "pool", "gate")
CONV_KINDS = ("conv1x1", "convkxk", "depthwise", "fc")
BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
# prior efficiency of each kind relative to the common η (depthwise and element-wise code runs
# far from the FMA peak); the fit moves them with log-normal priors of width SIGMA_KIND
KIND_RATIO = {"conv1x1": 1.0, "convkxk": 1.0, "depthwise": 0.3, "fc": 0.5,
              "elementwise": 0.1, "pool": 0.1, "gate": 0.1}
DEFAULT_PRIOR = {"c0_ms": 0.5, "c_op_ms": 0.02, "eta_mem": 0.7, "eta": 0.35}
SIGMA_DATA, SIGMA_KIND, SIGMA_PRIOR = 0.1, 0.5, 1.0
DEFAULT_REL_ERR = 0.35
MIN_REL_ERR = 0.10  # LOO over a handful of similar networks is optimistic: floor it
_UNARY = {"batch_norm", "relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid",
          "silu", "gelu", "tanh", "leaky_relu", "elu", "clamp", "clip", "softmax", "neg"}
_BINARY = {"add", "mul", "sub", "div", "iadd", "imul", "radd", "rmul", "add_", "mul_", "truediv"}
_REDUCE = {"mean", "amax", "sum", "max", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d",
           "adaptive_max_pool2d", "amin"}
_FREE = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "dropout", "contiguous",
         "identity", "detach", "clone"}


@dataclass
class Kernel:
    """One fused kernel: what it computes and the element counts it moves (batch 1)."""

    kind: str
    ops: list[str]
    macs: int
    in_elems: int
    out_elems: int
    weight_elems: int = 0

    @property
    def work(self) -> int:
        """MACs for conv kinds; elements touched for element-wise, pool and gate kernels."""
        return self.macs if self.kind in CONV_KINDS else max(self.in_elems, self.out_elems)

    def bytes(self, precision: str = "fp32") -> int:
        return (self.in_elems + self.out_elems + self.weight_elems) * BYTES[precision]


def _tensors(args: Any) -> list[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (list, tuple)):
        return [t for a in args for t in _tensors(a)]
    return []


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[Kernel] = []
        self.producer: dict[int, int] = {}  # id(tensor) -> kernel index
        self.keep: list[torch.Tensor] = []  # keep tensors alive so ids stay unique
        self.reductions: dict[int, list[int]] = {}  # id(input) -> reduction kernel indices

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "").strip("_")
        res = out[0] if isinstance(out, tuple) and out else out
        if isinstance(res, torch.Tensor) and name:
            self._record(name, args, kwargs, res)
        return out

    def _new(self, kernel: Kernel, out: torch.Tensor) -> None:
        self.kernels.append(kernel)
        self._own(len(self.kernels) - 1, out)

    def _own(self, index: int, out: torch.Tensor) -> None:
        self.producer[id(out)] = index
        self.keep.append(out)

    def _record(self, name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        ins = _tensors(args) + _tensors(list(kwargs.values()))
        if not ins:
            return
        x = ins[0]
        if name.startswith("conv") and name[-2:] in ("1d", "2d", "3d"):
            w = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            area = math.prod(w.shape[2:])
            macs = out.numel() // out.shape[0] * w.shape[1] * area
            if groups > 1 and w.shape[1] == 1:
                kind = "depthwise"
            elif math.prod(out.shape[2:]) == 1:
                kind = "fc"
            else:
                kind = "conv1x1" if area == 1 else "convkxk"
            weights = w.numel() + (bias.numel() if isinstance(bias, torch.Tensor) else 0)
            self._new(Kernel(kind, [name], macs, x.numel(), out.numel(), weights), out)
        elif name == "linear":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            macs = out.numel() // out.shape[0] * w.shape[1]
            weights = sum(t.numel() for t in ins[1:])
            self._new(Kernel("fc", [name], macs, x.numel(), out.numel(), weights), out)
        elif name in _FREE:
            if id(x) in self.producer:
                self._own(self.producer[id(x)], out)
        elif name in _BINARY and len(ins) == 2 and ins[0].shape != ins[1].shape \
                and name in ("mul", "imul", "rmul", "mul_"):
            big = max(ins, key=lambda t: t.numel())
            self._new(Kernel("gate", [name], 0, ins[0].numel() + ins[1].numel(), out.numel()),
                      out)
            for r in self.reductions.get(id(big), []):
                self.kernels[r].kind = "gate"
        elif name in _BINARY and len(ins) == 2:
            self._new(Kernel("elementwise", [name], 0, ins[0].numel() + ins[1].numel(),
                             out.numel()), out)
        elif name in _UNARY or name in _BINARY:
            last = len(self.kernels) - 1
            k = self.producer.get(id(x))
            if k is not None and k == last and self.kernels[k].kind not in ("pool", "gate") \
                    and out.numel() == x.numel():
                self.kernels[k].ops.append(name)
                self._own(k, out)
            else:
                self._new(Kernel("elementwise", [name], 0, x.numel(), out.numel()), out)
        elif name in _REDUCE:
            self._new(Kernel("pool", [name], 0, x.numel(), out.numel()), out)
            self.reductions.setdefault(id(x), []).append(len(self.kernels) - 1)
        elif name in ("cat", "concat", "concatenate", "stack"):
            self._new(Kernel("elementwise", [name], 0, sum(t.numel() for t in ins),
                             out.numel()), out)
        elif id(x) in self.producer and out.numel() > 1:
            self._new(Kernel("elementwise", [name], 0, x.numel(), out.numel()), out)


def kernels(module: nn.Module, input_shape: tuple[int, ...] | list[int]) -> list[Kernel]:
    """The fused kernels of one batch-1 forward pass of ``module`` (see the module docstring).

    The pass runs on a copy of the module on the meta device (shapes only, no arithmetic);
    ``input_shape`` is ``(C, H, W)`` or ``(1, C, H, W)``.
    """
    shape = tuple(input_shape)
    shape = (1, *shape) if len(shape) == 3 else shape
    meta = copy.deepcopy(module).eval().to("meta")
    rec = _Recorder()
    with torch.no_grad(), rec:
        meta(torch.zeros(shape, device="meta"))
    return rec.kernels


# ----------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class Hardware:
    """What the model needs to know about a CPU: all-core peaks, DRAM bandwidth and the size
    of the last-level cache (``None``: unknown, every byte is costed at ``η_mem``)."""

    peak_gmacs_fp32: float
    peak_gmacs_int8: float
    bandwidth_gbs: float
    cores: int
    clock_ghz: float
    fp16: bool = False
    cache_mb: float | None = None

    @property
    def cache_bytes(self) -> float:
        return self.cache_mb * 2 ** 20 if self.cache_mb else math.inf

    @classmethod
    def from_cpu(cls, cpu: Any) -> Hardware:
        """From an :class:`edgekit.targets.CpuSpec` (or any object with the same fields)."""
        if isinstance(cpu, Hardware):
            return cpu
        missing = [f for f in ("peak_gmacs_fp32", "memory_bandwidth_gbs", "cores", "clock_ghz")
                   if getattr(cpu, f, None) is None]
        if missing:
            raise ValueError(f"the latency model needs cpu.{', cpu.'.join(missing)}")
        cache_kb = getattr(cpu, "l3_kb", None) or getattr(cpu, "l2_kb", None)
        return cls(cpu.peak_gmacs_fp32, cpu.peak_gmacs_int8 or cpu.peak_gmacs_fp32,
                   cpu.memory_bandwidth_gbs, cpu.cores, cpu.clock_ghz,
                   "fp16" in (cpu.features or []), cache_kb / 1024 if cache_kb else None)

    def peak(self, precision: str, threads: int, clock_ghz: float | None = None) -> float:
        """MAC/s available to ``threads`` threads at ``clock_ghz`` (default: the spec's)."""
        base = {"fp32": self.peak_gmacs_fp32, "int8": self.peak_gmacs_int8,
                "fp16": self.peak_gmacs_fp32 * (2 if self.fp16 else 1)}[precision]
        scale = min(threads, self.cores) / self.cores * (clock_ghz or self.clock_ghz) / self.clock_ghz
        return base * 1e9 * scale


# From docs/TARGETS.md. RPi 5 and Jetson Nano: nominal DRAM bandwidth (no STREAM figure given).
# Graviton3: a 4-vCPU (c7g.xlarge-style) slice, see targets/graviton3.yaml.
BOARDS = {
    "rpi4": Hardware(48.0, 48.0, 5.5, 4, 1.5, cache_mb=1.0),
    "rpi5": Hardware(76.8, 307.2, 17.1, 4, 2.4, fp16=True, cache_mb=2.0),
    "jetson-nano": Hardware(45.8, 45.8, 25.6, 4, 1.43, cache_mb=2.0),
    "graviton3": Hardware(166.4, 665.6, 80.0, 4, 2.6, fp16=True, cache_mb=32.0),
}
_XNN = "google/XNNPACK README (2022)"
_NCNN = "Tencent/ncnn benchmark/README.md"
_QENG = "Qengineering TFLite RPi 64-bit README"
V1, V2, V3L, V3S = "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"
B0, R18, R50 = "efficientnet_b0", "resnet18", "resnet50"
# (board, runtime, precision, threads, clock GHz, {model: ms}, source). ncnn's "mobilenetv3" is
# taken to be V3-Large; ncnn on the RPi 5 computes in fp16 by default, hence precision fp16;
# XNNPACK's clock is not stated: the stock 1.5 GHz is assumed.
PUBLISHED: list[tuple[str, str, str, int, float, dict[str, float], str]] = [
    ("rpi4", "xnnpack", "fp32", 4, 1.5, {V1: 77, V2: 46, V3L: 40, V3S: 15}, _XNN),
    ("rpi4", "xnnpack", "int8", 4, 1.5, {V1: 24, V2: 17}, _XNN),
    ("rpi4", "ncnn", "fp32", 4, 1.8,
     {V1: 61.2, V2: 61.9, V3L: 47.5, B0: 74.2, R18: 123.1, R50: 262.8}, _NCNN),
    ("rpi4", "ncnn", "fp32", 1, 1.8, {V1: 124.3, V2: 93.5, V3L: 72.8, R18: 191.1, R50: 534.1},
     _NCNN),
    ("rpi4", "ncnn", "int8", 4, 1.8, {V1: 34.4, R18: 83.9, R50: 196.7}, _NCNN),
    ("rpi4", "tflite", "int8", 4, 1.95, {V1: 26, V2: 22}, _QENG),
    ("rpi5", "ncnn", "fp16", 4, 2.4, {V2: 10.5, V3L: 7.4, B0: 12.3, R18: 20.0, R50: 46.2}, _NCNN),
    ("rpi5", "ncnn", "fp16", 1, 2.4, {V1: 20.3, V2: 16.4, V3L: 11.8, R18: 29.7, R50: 89.4}, _NCNN),
    ("jetson-nano", "ncnn", "fp32", 4, 1.43, {V2: 33.8, R18: 83.4, R50: 204.1}, _NCNN),
    ("jetson-nano", "ncnn", "fp32", 1, 1.43, {V2: 94.0, R18: 221.6, R50: 624.8}, _NCNN),
]


@dataclass
class Point:
    """One measured (or published) latency of one model in one group."""

    model: str
    kernels: list[Kernel]
    ms: float
    hardware: Hardware
    precision: str
    threads: int
    clock_ghz: float
    board: str = ""
    runtime: str = ""
    source: str = ""

    @property
    def group(self) -> str:
        return f"{self.board}/{self.runtime}/{self.precision}/{self.threads}"


def published_points(board: str | None = None, input_size: int = 224) -> list[Point]:
    """The published latencies as fit points (kernels of the reference networks)."""
    from edgekit.bench.refnets import create_refnet

    cache: dict[str, list[Kernel]] = {}
    points = []
    for b, runtime, precision, threads, clock, rows, source in PUBLISHED:
        if board is not None and b != board:
            continue
        for model, ms in rows.items():
            if model not in cache:
                with torch.device("meta"):  # shapes only: no weight initialisation cost
                    net = create_refnet(model)
                cache[model] = kernels(net, (3, input_size, input_size))
            points.append(Point(model, cache[model], float(ms), BOARDS[b], precision, threads,
                                clock, b, runtime, source))
    return points


# -------------------------------------------------------------------------------- model
@dataclass
class Coeffs:
    """Fitted coefficients of one (runtime, precision, threads) group."""

    precision: str
    threads: int
    c0_ms: float
    c_op_ms: float
    eta_mem: float
    eta: dict[str, float] = field(default_factory=dict)
    rel_err: float = DEFAULT_REL_ERR
    n_points: int = 0
    basis: str = ""  # where the coefficients come from, when not a plain fit (a transfer)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["basis"]:
            del d["basis"]
        return {k: (round(v, 5) if isinstance(v, float) else
                    {kk: round(vv, 5) for kk, vv in v.items()} if isinstance(v, dict) else v)
                for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Coeffs:
        d = dict(d)
        d["eta"] = {k: float(v) for k, v in d.get("eta", {}).items()}
        return cls(**d)


@dataclass(frozen=True)
class Prediction:
    """A predicted latency and its expected relative error (from leave-one-out residuals)."""

    ms: float
    rel_err: float

    @property
    def low_ms(self) -> float:
        return self.ms / (1 + self.rel_err)

    @property
    def high_ms(self) -> float:
        return self.ms * (1 + self.rel_err)

    def __str__(self) -> str:
        return f"{self.ms:.1f} ms ±{100 * self.rel_err:.0f} % (predicted)"


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _arrays(ks: list[Kernel], precision: str) -> _Arrays:
    work = np.array([k.work for k in ks], dtype=float)
    act = np.array([(k.in_elems + k.out_elems) * BYTES[precision] for k in ks], dtype=float)
    wts = np.array([k.weight_elems * BYTES[precision] for k in ks], dtype=float)
    kind = np.array([KINDS.index(k.kind) for k in ks], dtype=int)
    return work, act, wts, kind


def _time_ms(arrays: _Arrays, peak: float, bw: float, c0: float, cop: float, eta_mem: float,
             eta: np.ndarray, cache: float = math.inf) -> float:
    """Roofline sum. Bytes move at ``η_mem · bw`` (η_mem > 1 where they stay in cache), except
    those that cannot stay in the last-level cache, which stream from DRAM at no more than
    its bandwidth, ``min(1, η_mem) · bw``: every weight when the model's weights plus its
    largest activations exceed the cache (a 50 MB dense layer), and the part of a kernel's
    activations beyond the cache."""
    work, act, wts, kind = arrays
    compute = work / (eta[kind] * peak)
    a_spill = np.maximum(act - cache, 0.0)
    w_spill = wts if wts.sum() + act.max(initial=0.0) > cache else 0.0 * wts
    fast, dram = eta_mem * bw * 1e9, min(1.0, eta_mem) * bw * 1e9
    memory = (act - a_spill + wts - w_spill) / fast + (a_spill + w_spill) / dram
    return c0 + 1e3 * float(np.maximum(compute, memory).sum()) + cop * len(work)


def predict(ks: list[Kernel], coeffs: Coeffs, target_cpu: Any, *,
            clock_ghz: float | None = None) -> Prediction:
    """Predicted latency (ms) of the kernels ``ks`` on ``target_cpu`` (a ``CpuSpec``,
    :class:`Hardware` or a board name of :data:`BOARDS`) with the group's ``coeffs``."""
    hw = BOARDS[target_cpu] if isinstance(target_cpu, str) else Hardware.from_cpu(target_cpu)
    eta = np.array([coeffs.eta.get(k, coeffs.eta.get("common", 0.3)) for k in KINDS])
    ms = _time_ms(_arrays(ks, coeffs.precision), hw.peak(coeffs.precision, coeffs.threads,
                  clock_ghz), hw.bandwidth_gbs, coeffs.c0_ms, coeffs.c_op_ms, coeffs.eta_mem,
                  eta, hw.cache_bytes)
    return Prediction(ms, coeffs.rel_err)


def _prior_vector(prior: Coeffs | None) -> np.ndarray:
    """Prior centres (log): c0, c_op, η_mem, common η, then one per kind."""
    if prior is None:
        common = DEFAULT_PRIOR["eta"]
        base = [DEFAULT_PRIOR["c0_ms"], DEFAULT_PRIOR["c_op_ms"], DEFAULT_PRIOR["eta_mem"], common]
        kinds = [common * KIND_RATIO[k] for k in KINDS]
    else:
        common = prior.eta.get("common", prior.eta.get("conv1x1", DEFAULT_PRIOR["eta"]))
        base = [prior.c0_ms, prior.c_op_ms, prior.eta_mem, common]
        kinds = [prior.eta.get(k, common * KIND_RATIO[k]) for k in KINDS]
    return np.log(np.array(base + kinds))


def _fit_once(points: list[Point], prior_log: np.ndarray) -> np.ndarray:
    from scipy.optimize import least_squares

    data = [(_arrays(p.kernels, p.precision), p.hardware.peak(p.precision, p.threads,
             p.clock_ghz), p.hardware.bandwidth_gbs, p.hardware.cache_bytes, math.log(p.ms))
            for p in points]
    kind_centre = prior_log[4:] - prior_log[3]  # prior log ratio of each kind to the common η

    def residuals(theta: np.ndarray) -> np.ndarray:
        c0, cop, mem = np.exp(theta[:3])
        eta = np.exp(theta[4:])
        fit = [(math.log(_time_ms(a, peak, bw, c0, cop, mem, eta, cache)) - y) / SIGMA_DATA
               for a, peak, bw, cache, y in data]
        share = (theta[4:] - theta[3] - kind_centre) / SIGMA_KIND
        anchor = (theta[:4] - prior_log[:4]) / SIGMA_PRIOR
        return np.concatenate([fit, share, anchor])

    lower = np.log([1e-4, 1e-5, 0.02, 1e-3] + [1e-3] * len(KINDS))
    upper = np.log([200.0, 5.0, 20.0, 4.0] + [4.0] * len(KINDS))  # η > 1: Winograd
    x0 = np.clip(prior_log, lower + 1e-9, upper - 1e-9)
    return least_squares(residuals, x0, bounds=(lower, upper), method="trf",
                         diff_step=1e-3, x_scale=1.0, max_nfev=2000).x


def _coeffs(theta: np.ndarray, precision: str, threads: int, n: int) -> Coeffs:
    e = np.exp(theta)
    eta = {"common": float(e[3]), **{k: float(v) for k, v in zip(KINDS, e[4:], strict=True)}}
    return Coeffs(precision, threads, float(e[0]), float(e[1]), float(e[2]), eta, n_points=n)


def fit(points: list[Point], prior: Coeffs | None = None, *, loo: bool = True) -> Coeffs:
    """Fit one group's coefficients to ``points`` (same precision and thread count).

    ``prior`` centres the priors on a related group's fit (else :data:`DEFAULT_PRIOR`). With
    ``loo`` the expected relative error is the RMS of the leave-one-out relative residuals
    (needs ≥ 3 points; otherwise :data:`DEFAULT_REL_ERR`), at least :data:`MIN_REL_ERR`.
    """
    if not points:
        raise ValueError("fit needs at least one point")
    keys = {(p.precision, p.threads) for p in points}
    if len(keys) > 1:
        raise ValueError(f"fit one (precision, threads) group at a time, got {sorted(keys)}")
    precision, threads = keys.pop()
    prior_log = _prior_vector(prior)
    coeffs = _coeffs(_fit_once(points, prior_log), precision, threads, len(points))
    if loo and len(points) >= 3:
        errs = [e for _, e in loo_errors(points, prior)]
        rms = float(np.sqrt(np.mean(np.square(errs))))
        coeffs = replace(coeffs, rel_err=max(MIN_REL_ERR, rms))
    return coeffs


def loo_errors(points: list[Point], prior: Coeffs | None = None) -> list[tuple[float, float]]:
    """Leave-one-out (predicted ms, relative error) for every point of one group."""
    out = []
    for i, p in enumerate(points):
        rest = points[:i] + points[i + 1:]
        c = (fit(rest, prior, loo=False) if rest
             else _coeffs(_prior_vector(prior), p.precision, p.threads, 0))
        ms = predict(p.kernels, c, p.hardware, clock_ghz=p.clock_ghz).ms
        out.append((ms, ms / p.ms - 1))
    return out


def group_points(points: list[Point]) -> dict[str, list[Point]]:
    """Points by ``board/runtime/precision/threads``, in first-seen order."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.group, []).append(p)
    return groups


# Boards with few published points are fitted with priors centred on a related board's fit
# (same runtime, same thread count): the RPi 4 ncnn fit. Leave-one-out median on the RPi 5 /
# Jetson Nano points: 21 % / 35 % with the default priors, 15 % / 8 % with these.
BOARD_PRIORS = {"rpi5": ("rpi4", "ncnn/fp32/{threads}"),
                "jetson-nano": ("rpi4", "ncnn/fp32/{threads}")}


def published_prior(board: str, threads: int) -> Coeffs | None:
    """The prior of ``board``'s groups at ``threads`` (:data:`BOARD_PRIORS`), or None."""
    if board not in BOARD_PRIORS:
        return None
    other, key = BOARD_PRIORS[board]
    return fit_published(other).get(key.format(threads=threads))


def fit_published(board: str) -> dict[str, Coeffs]:
    """Coefficients for every published group of ``board``, keyed ``runtime/precision/threads``
    (the keys of a target profile's ``latency_model``); priors from :data:`BOARD_PRIORS`."""
    return {k: copy.deepcopy(c) for k, c in _fit_published(board).items()}


@functools.lru_cache(maxsize=8)
def _fit_published(board: str) -> dict[str, Coeffs]:
    out = {}
    for g, ps in group_points(published_points(board)).items():
        out[g.split("/", 1)[1]] = fit(ps, published_prior(board, ps[0].threads))
    return out


def predict_module(module: nn.Module, input_shape: tuple[int, ...], coeffs: Coeffs,
                   target_cpu: Any) -> Prediction:
    """:func:`predict` for an ``nn.Module`` (its kernels are extracted first)."""
    return predict(kernels(module, input_shape), coeffs, target_cpu)


def coeffs_from_target(latency_model: dict[str, Any], key: str) -> Coeffs:
    """One group of a target profile's ``latency_model`` (``edgekit.targets.Target``)."""
    if key not in latency_model:
        raise KeyError(f"no latency-model group {key!r}; groups: {', '.join(latency_model)}")
    return Coeffs.from_dict(dict(latency_model[key]))


# ------------------------------------------------------------------------ thread scaling
@dataclass(frozen=True)
class ThreadScaling:
    """Amdahl's law between thread counts, ``t(n) ∝ (1 - p) + p / n``, for thread counts a target
    has no fitted group for (fitted on pairs of the same models at two thread counts)."""

    parallel_fraction: float
    rel_err: float
    basis: str = ""

    def factor(self, from_threads: int, to_threads: int) -> float:
        """t(to_threads) / t(from_threads)."""
        p = self.parallel_fraction
        return ((1 - p) + p / to_threads) / ((1 - p) + p / from_threads)

    def to_dict(self) -> dict[str, Any]:
        return {"parallel_fraction": round(self.parallel_fraction, 4),
                "rel_err": round(self.rel_err, 4), "basis": self.basis}

    @classmethod
    def from_dict(cls, d: Any) -> ThreadScaling:
        d = d.model_dump() if hasattr(d, "model_dump") else dict(d)
        return cls(float(d["parallel_fraction"]), float(d["rel_err"]), d.get("basis", ""))


def fit_thread_scaling(pairs: list[tuple[int, float, int, float]], basis: str = ""
                       ) -> ThreadScaling:
    """Fit Amdahl's ``p`` to ``(threads_a, ms_a, threads_b, ms_b)`` pairs (least squares on the
    log of the time ratio); ``rel_err`` is the RMS relative error of the predicted ratios (at
    least :data:`MIN_REL_ERR`)."""
    from scipy.optimize import minimize_scalar

    if not pairs:
        raise ValueError("fit_thread_scaling needs at least one pair")

    def ratio(p: float, a: int, b: int) -> float:
        return ThreadScaling(p, 0).factor(a, b)

    def loss(p: float) -> float:
        return sum((math.log(ratio(p, a, b)) - math.log(mb / ma)) ** 2 for a, ma, b, mb in pairs)

    p = float(minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded").x)
    errs = [ratio(p, a, b) / (mb / ma) - 1 for a, ma, b, mb in pairs]
    rms = float(np.sqrt(np.mean(np.square(errs))))
    return ThreadScaling(p, max(MIN_REL_ERR, rms), basis)


def published_thread_scaling(board: str) -> ThreadScaling:
    """Thread scaling of ``board`` from its published figures of the same runtime and precision
    at two thread counts (ncnn 1 vs 4 threads)."""
    pairs, names = [], set()
    for b, runtime, precision, threads, _, rows, source in PUBLISHED:
        if b != board:
            continue
        for b2, runtime2, precision2, threads2, _, rows2, _ in PUBLISHED:
            if (b2, runtime2, precision2) == (b, runtime, precision) and threads2 > threads:
                common = sorted(set(rows) & set(rows2))
                pairs += [(threads, rows[m], threads2, rows2[m]) for m in common]
                if common:
                    names.add(f"{runtime} {precision} {threads} vs {threads2} threads "
                              f"({len(common)} models, {source})")
    if not pairs:
        raise KeyError(f"no published figures of {board} at two thread counts")
    return fit_thread_scaling(pairs, "Amdahl fit to " + "; ".join(sorted(names)))


def thread_prior(coeffs: Coeffs, threads: int, scaling: ThreadScaling) -> Coeffs:
    """``coeffs`` (fitted at ``coeffs.threads``) moved to ``threads`` by Amdahl's law, as the
    prior of a fit at that thread count: the time shrinks by the speed-up S while the peak
    grows by the thread ratio, so every η becomes ``η · S · from / to``; η_mem (the bandwidth is
    not scaled by threads) ``η_mem · S``."""
    speedup = 1 / scaling.factor(coeffs.threads, threads)
    ratio = speedup * coeffs.threads / threads
    return replace(coeffs, threads=threads, eta={k: v * ratio for k, v in coeffs.eta.items()},
                   eta_mem=coeffs.eta_mem * speedup, n_points=0)


# ------------------------------------------------------------------------- ONNX kernels
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


# --------------------------------------------------------------- local (x86) calibration
CALIBRATION_FORMAT = "edgekit.latency-calibration/1"
NOT_CALIBRATED = "not calibrated: run `edgekit targets calibrate x86-local`"


class CalibrationMismatch(ValueError):
    """A calibration file exists but was made on another CPU or by another edgekit version."""


def config_dir() -> Path:
    """edgekit's per-user configuration folder: ``$EDGEKIT_CONFIG_DIR``, else
    ``$XDG_CONFIG_HOME/edgekit``, else ``~/.config/edgekit``."""
    if os.environ.get("EDGEKIT_CONFIG_DIR"):
        return Path(os.environ["EDGEKIT_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "edgekit"


def calibration_path(name: str = "x86-local") -> Path:
    """Where ``edgekit targets calibrate NAME`` writes its coefficients by default."""
    return config_dir() / "calibration" / f"{name}.json"


def machine_identity() -> dict[str, Any]:
    """What a calibration is keyed by: CPU model, usable cores, edgekit version."""
    from edgekit import __version__
    from edgekit.bench.hostinfo import cpu_info

    info = cpu_info()
    return {"cpu_model": str(info["model"]), "logical_cores": int(info["logical_cores"]),
            "arch": str(info["arch"]), "edgekit": __version__}


def _identity_key(ident: dict[str, Any]) -> str:
    return f"{ident['cpu_model']} | {ident['logical_cores']} cores | edgekit {ident['edgekit']}"


def _mac_per_cycle(features: list[str], model: str) -> float:
    """fp32 MAC per cycle per core: 2 FMA pipes × vector lanes (AMD Zen 4 runs AVX-512 on two
    256-bit pipes)."""
    if "avx512f" in features and "amd" not in model.lower():
        return 32.0
    if "fma" in features or "avx512f" in features:
        return 16.0
    return 8.0 if "avx" in features else 4.0


def measure_bandwidth_gbs(megabytes: int = 128, repeats: int = 10) -> float:
    """A quick DRAM bandwidth figure: the best of ``repeats`` numpy copies of ``megabytes``
    (bytes read + written per second; a STREAM-copy-like number, GB/s)."""
    import time

    src = np.ones(megabytes * (1 << 20) // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def last_level_cache_mb(root: str = "/sys/devices/system/cpu/cpu0/cache") -> float | None:
    """Size of the highest cache level CPU 0 sees (Linux sysfs), in MiB; None if unknown."""
    best: tuple[int, float] | None = None
    for index in sorted(Path(root).glob("index*")):
        try:
            level = int((index / "level").read_text().strip())
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or not size:
            continue
        scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(size[-1], 1 / 2 ** 20)
        try:
            mb = float(size.rstrip("KMGB")) * scale
        except ValueError:
            continue
        if best is None or level > best[0]:
            best = (level, mb)
    return best[1] if best else None


def detect_hardware(bandwidth_gbs: float | None = None) -> tuple[Hardware, dict[str, Any]]:
    """This machine as :class:`Hardware` (x86: peak from cores × clock × FMA width; INT8 peak
    4× fp32 with VNNI, 2× without; ARM: 4-lane FMA × 2 pipes, sdot 4×) and how it was derived."""
    from edgekit.bench.hostinfo import cpu_info

    info = cpu_info()
    features = list(info.get("features") or [])
    freq = info.get("freq_mhz") or {}
    mhz = freq.get("max") or freq.get("current") or 2500.0
    clock = float(mhz) / 1000.0
    cores = int(info["logical_cores"])
    if normalize_arch(info["arch"]) == "x86_64":
        per_cycle = _mac_per_cycle(features, str(info["model"]))
        int8 = 4.0 if {"avx512_vnni", "avx_vnni", "amx_int8"} & set(features) else 2.0
    else:
        per_cycle, int8 = 8.0, (4.0 if "dotprod" in features else 1.0)
    bw = bandwidth_gbs or measure_bandwidth_gbs()
    peak = cores * clock * per_cycle
    cache = last_level_cache_mb()
    hw = Hardware(round(peak, 2), round(peak * int8, 2), round(bw, 2), cores, round(clock, 3),
                  "fp16" in features and normalize_arch(info["arch"]) != "x86_64", cache)
    how = {"cpu_model": info["model"], "features": features, "clock_ghz": round(clock, 3),
           "clock_source": "cpufreq max" if freq.get("max") else "cpu MHz (current)",
           "fp32_mac_per_cycle_per_core": per_cycle, "int8_over_fp32": int8,
           "last_level_cache_mb": cache,
           "bandwidth": "given" if bandwidth_gbs else "numpy copy of 128 MB, best of 10 (read + write)"}
    return hw, how


def write_calibration(entry: dict[str, Any], path: str | Path | None = None,
                      name: str = "x86-local") -> Path:
    """Add ``entry`` (keyed by its CPU model, cores and edgekit version) to the calibration
    file (default :func:`calibration_path`), keeping other machines' entries."""
    path = Path(path) if path else calibration_path(name)
    data: dict[str, Any] = {"format": CALIBRATION_FORMAT, "entries": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if old.get("format") == CALIBRATION_FORMAT:
                data["entries"] = dict(old.get("entries") or {})
        except (OSError, json.JSONDecodeError):
            pass
    data["entries"][_identity_key(entry["identity"])] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_calibration(path: str | Path | None = None, *, name: str = "x86-local",
                     identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """This machine's entry of a calibration file. FileNotFoundError when there is none;
    :class:`CalibrationMismatch` when the file holds only other CPUs' or versions' entries."""
    path = Path(path) if path else calibration_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{NOT_CALIBRATED} (no {path})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationMismatch(f"{path}: unreadable calibration file ({exc}); run "
                                  "`edgekit targets calibrate x86-local` again") from None
    if data.get("format") != CALIBRATION_FORMAT:
        raise CalibrationMismatch(f"{path}: format {data.get('format')!r}, this edgekit reads "
                                  f"{CALIBRATION_FORMAT}; run `edgekit targets calibrate "
                                  "x86-local` again")
    ident = identity or machine_identity()
    entries = data.get("entries") or {}
    entry = entries.get(_identity_key(ident))
    if entry is None:
        others = "; ".join(sorted(entries)) or "none"
        raise CalibrationMismatch(
            f"{path} was calibrated on another machine or edgekit version ({others}), not on "
            f"this one ({_identity_key(ident)}): run `edgekit targets calibrate x86-local` here")
    return {**entry, "path": str(path)}


def local_coeffs(target: Any, path: str | Path | None = None) -> dict[str, Any] | None:
    """The latency-model groups measured on this machine for ``target`` (a target whose
    ``predict.groups_from`` is ``local-calibration`` and whose arch is this machine's), as the
    calibration entry: ``{"groups": {"onnxruntime/fp32/1": {...Coeffs}}, "hardware": {...},
    "thread_scaling": {...} | None, "identity": {...}, "created", "path", ...}``.
    None when not calibrated, calibrated on another CPU/edgekit version, or not applicable."""
    entry, _ = _local_entry(target, path)
    return entry


def _local_entry(target: Any, path: str | Path | None = None
                 ) -> tuple[dict[str, Any] | None, str | None]:
    pred = getattr(target, "predict", None)
    if pred is None or pred.groups_from != "local-calibration":
        return None, f"the {target.name} profile is not predicted from a local calibration"
    ident = machine_identity()
    if normalize_arch(ident["arch"]) != target.arch:
        return None, (f"this machine is {ident['arch']}, the {target.name} profile "
                      f"{target.arch}: a local calibration cannot stand for it")
    try:
        return read_calibration(path, identity=ident), None
    except FileNotFoundError:
        return None, NOT_CALIBRATED
    except CalibrationMismatch as exc:
        return None, str(exc)


# ---------------------------------------------------------------- targets and bundles
@dataclass
class TargetLatencyModel:
    """Everything needed to predict on one target: hardware, groups, routes, scaling."""

    name: str
    hardware: Hardware | None = None
    groups: dict[str, Coeffs] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    scaling: ThreadScaling | None = None
    origin: str = "profile"
    transfer_rel_err: float = 0.0
    error: str | None = None


def target_latency_model(target: Any, calibration: str | Path | None = None
                         ) -> TargetLatencyModel:
    """The prediction context of a :class:`edgekit.targets.Target` (``error`` says why there is
    none). Local-calibration targets read this machine's calibration (``calibration``: a file
    other than the default)."""
    tm = TargetLatencyModel(target.name)
    pred = target.predict
    if pred is None:
        tm.error = f"no latency model for {target.name} (its profile has no predict section)"
        return tm
    tm.routes = {b: dict(r) for b, r in pred.routes.items()}
    tm.scaling = ThreadScaling.from_dict(pred.thread_scaling) if pred.thread_scaling else None
    if pred.groups_from == "local-calibration":
        entry, why = _local_entry(target, calibration)
        if entry is None:
            tm.error = why
            return tm
        tm.groups = {k: Coeffs.from_dict(v) for k, v in entry["groups"].items()}
        if entry.get("thread_scaling"):
            tm.scaling = ThreadScaling.from_dict(entry["thread_scaling"])
        ident = entry["identity"]
        tm.origin = (f"local calibration of {ident['cpu_model']} ({ident['logical_cores']} "
                     f"cores, {entry.get('created', '?')[:10]})")
        if target.detect:
            tm.hardware = Hardware(**entry["hardware"])
        else:
            tm.transfer_rel_err = pred.transfer_rel_err
            tm.origin += f", transferred to the declared {target.name} CPU by its peaks"
    else:
        tm.groups = {k: Coeffs.from_dict(v) for k, v in (target.latency_model or {}).items()
                     if isinstance(v, dict) and k.count("/") == 2}
    if tm.hardware is None:
        try:
            tm.hardware = Hardware.from_cpu(target.cpu)
        except ValueError as exc:
            tm.error = f"{target.name}: {exc}"
    return tm


def _amdahl_through(ms_a: float, a: int, ms_b: float, b: int, n: int) -> float:
    """Latency at ``n`` threads (a < n < b) on the Amdahl curve through both predictions; a
    geometric interpolation in log(threads) when no Amdahl curve fits (b slower than a)."""
    ratio = ms_b / ms_a
    denom = 1 - 1 / b - ratio * (1 - 1 / a)
    p = (1 - ratio) / denom if denom else -1.0
    if 0.0 <= p <= 1.0:
        return ms_a * ThreadScaling(p, 0.0).factor(a, n)
    w = math.log(n / a) / math.log(b / a)
    return ms_a ** (1 - w) * ms_b ** w


def predict_route(tm: TargetLatencyModel, ks: list[Kernel], backend: str, precision: str,
                  threads: int) -> dict[str, Any]:
    """One prediction of kernels ``ks`` for ``backend``/``precision``/``threads`` on the target
    of ``tm``: ``{"p50_ms", "low_ms", "high_ms", "rel_err", "group", "basis"}`` or
    ``{"error"}``.

    The route names a group family (``runtime/precision``); the thread count uses its fitted
    group, else the Amdahl curve through the two fitted counts around it (group
    ``runtime/precision/a-b``), else the nearest fitted count scaled by the target's thread
    scaling. The expected error combines, in quadrature, the group's leave-one-out error, the
    route's proxy error, the thread-scaling error (when extrapolated) and the transfer error."""
    if tm.error:
        return {"error": tm.error}
    route = tm.routes.get(backend, {}).get(precision)
    if route is None:
        return {"error": f"no latency-model route for {backend} {precision} on {tm.name}"}
    if route.unsupported:
        return {"error": f"not predicted: {route.unsupported}"}
    hw = tm.hardware
    assert hw is not None
    fitted = {c.threads: (k, c) for k, c in tm.groups.items()
              if k.rsplit("/", 1)[0] == route.group}
    if not fitted:
        return {"error": f"no {route.group}/<threads> group in the latency model of {tm.name} "
                         f"({tm.origin})"}
    compute = route.compute or route.group.split("/")[1]

    def one(n: int) -> float:
        return predict(ks, replace(fitted[n][1], precision=compute), hw).ms

    def note(c: Coeffs) -> str:
        return c.basis or (f"fitted on {c.n_points} points" if c.n_points else "not fitted")

    used = min(int(threads), hw.cores)
    notes = [] if used == threads else [f"{threads} threads capped at the {hw.cores} cores"]
    below = [n for n in fitted if n < used]
    above = [n for n in fitted if n > used]
    scale_err = 0.0
    if used in fitted:
        key, c = fitted[used]
        ms, group_err, fit_note = one(used), c.rel_err, note(c)
    elif below and above:
        a, b = max(below), min(above)
        ms = _amdahl_through(one(a), a, one(b), b, used)
        ca, cb = fitted[a][1], fitted[b][1]
        key = f"{route.group}/{a}-{b}"
        group_err = max(ca.rel_err, cb.rel_err)
        fit_note = f"{a} threads: {note(ca)}; {b} threads: {note(cb)}"
        notes.append(f"{used} threads on the Amdahl curve through the {a}- and {b}-thread "
                     "predictions")
    else:
        if tm.scaling is None:
            return {"error": f"no {route.group}/{used} group and no thread scaling for "
                             f"{tm.name}"}
        near = min(fitted, key=lambda n: (abs(math.log(n / used)), -n))
        key, c = fitted[near]
        ms = one(near) * tm.scaling.factor(near, used)
        group_err, fit_note, scale_err = c.rel_err, note(c), tm.scaling.rel_err
        notes.append(f"scaled from {near} to {used} threads by Amdahl's law "
                     f"(p = {tm.scaling.parallel_fraction:.2f}: {tm.scaling.basis})")
    rel = math.sqrt(group_err ** 2 + route.proxy_rel_err ** 2 + scale_err ** 2
                    + tm.transfer_rel_err ** 2)
    basis = "; ".join([route.basis, f"group {key} ({fit_note}; {tm.origin})",
                       f"costed as {compute}", *notes])
    return {"p50_ms": ms, "low_ms": ms / (1 + rel), "high_ms": ms * (1 + rel), "rel_err": rel,
            "group": key, "basis": basis}


_KERNEL_PRECISION_ORDER = {"fp32": 0, "fp16": 1, "int8": 2}


def bundle_kernels(bundle: str | Path, manifest: dict[str, Any],
                   module: nn.Module | None = None) -> tuple[list[Kernel], str]:
    """The fused kernels of a bundle's architecture and where they come from, best first:
    the pruned checkpoint ``source/pruned.pt`` (its plan replayed), the ``module`` passed in,
    the bundle's ONNX artifact (fp32 first; QDQ INT8 reads the same), the zoo architecture the
    manifest names (meta device, shapes only; assumes unpruned widths)."""
    from edgekit.data.preprocess import PreprocessSpec

    bundle = Path(bundle)
    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    shape = (1, spec.channels, *spec.input_size)
    pruned = bundle / "source" / "pruned.pt"
    if pruned.is_file():
        from edgekit.sources import load_model

        return kernels(load_model(pruned).module, shape), \
            "kernels of the pruned model source/pruned.pt"
    if module is not None:
        return kernels(module, shape), "kernels of the source model"
    onnx_arts = sorted((a for a in manifest.get("artifacts", []) if a.get("backend") ==
                        "onnxruntime" and (bundle / a["files"][0]["path"]).is_file()),
                       key=lambda a: _KERNEL_PRECISION_ORDER.get(a.get("precision"), 9))
    for art in onnx_arts:
        try:
            return onnx_kernels(bundle / art["files"][0]["path"]), \
                f"kernels read from the ONNX artifact {art['name']}"
        except Exception:  # a graph the reader does not follow: next source
            continue
    arch = (manifest.get("source") or {}).get("architecture")
    from edgekit.zoo import create_model, list_models

    if arch in list_models():
        classes = len(manifest.get("class_names") or []) or None
        with torch.device("meta"):
            net = create_model(arch, num_classes=classes, input_size=spec.input_size[0])
        return kernels(net, shape), f"kernels of the zoo architecture {arch} (unpruned widths)"
    raise ValueError("cannot tell the bundle's architecture: no source/pruned.pt, no source "
                     f"model given, no readable ONNX artifact, and {arch!r} is not a zoo model")


def predict_bundle(bundle: str | Path, manifest: dict[str, Any], target: Any,
                   threads: list[int], module: nn.Module | None = None, *,
                   calibration: str | Path | None = None) -> list[dict[str, Any]]:
    """Predicted latencies of every artifact of a bundle on ``target`` at each thread count.

    One row per (artifact, threads): ``{"artifact": "<bundle>/<artifact>", "backend",
    "precision", "threads", "p50_ms", "low_ms", "high_ms", "rel_err", "group", "basis",
    "macs", "label": "predicted"}``, or ``{"artifact", "backend", "precision", "threads",
    "error"}`` saying why there is no prediction. ``low_ms``/``high_ms`` are
    ``p50 / (1 + rel_err)`` and ``p50 · (1 + rel_err)``.
    """
    bundle = Path(bundle)
    tm = target_latency_model(target, calibration)
    ks: list[Kernel] = []
    where, failure = "", tm.error
    if failure is None:
        try:
            ks, where = bundle_kernels(bundle, manifest, module)
        except Exception as exc:  # reported in the row, never raised
            failure = f"no kernels: {exc}"
    macs = sum(k.macs for k in ks)
    rows = []
    for art in manifest.get("artifacts", []):
        for t in threads:
            head = {"artifact": f"{bundle.name}/{art['name']}", "backend": art.get("backend"),
                    "precision": art.get("precision"), "threads": int(t)}
            if failure:
                rows.append({**head, "error": failure})
                continue
            got = predict_route(tm, ks, art["backend"], art["precision"], int(t))
            if "error" in got:
                rows.append({**head, "error": got["error"]})
                continue
            rows.append({**head, "p50_ms": round(got["p50_ms"], 4),
                         "low_ms": round(got["low_ms"], 4), "high_ms": round(got["high_ms"], 4),
                         "rel_err": round(got["rel_err"], 4), "group": got["group"],
                         "basis": f"{got['basis']}; {where}", "macs": macs,
                         "label": "predicted"})
    return rows
