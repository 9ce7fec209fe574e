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
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

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
    """What the model needs to know about a CPU: all-core peaks and DRAM bandwidth."""

    peak_gmacs_fp32: float
    peak_gmacs_int8: float
    bandwidth_gbs: float
    cores: int
    clock_ghz: float
    fp16: bool = False

    @classmethod
    def from_cpu(cls, cpu: Any) -> Hardware:
        """From an :class:`edgekit.targets.CpuSpec` (or any object with the same fields)."""
        if isinstance(cpu, Hardware):
            return cpu
        missing = [f for f in ("peak_gmacs_fp32", "memory_bandwidth_gbs", "cores", "clock_ghz")
                   if getattr(cpu, f, None) is None]
        if missing:
            raise ValueError(f"the latency model needs cpu.{', cpu.'.join(missing)}")
        return cls(cpu.peak_gmacs_fp32, cpu.peak_gmacs_int8 or cpu.peak_gmacs_fp32,
                   cpu.memory_bandwidth_gbs, cpu.cores, cpu.clock_ghz,
                   "fp16" in (cpu.features or []))

    def peak(self, precision: str, threads: int, clock_ghz: float | None = None) -> float:
        """MAC/s available to ``threads`` threads at ``clock_ghz`` (default: the spec's)."""
        base = {"fp32": self.peak_gmacs_fp32, "int8": self.peak_gmacs_int8,
                "fp16": self.peak_gmacs_fp32 * (2 if self.fp16 else 1)}[precision]
        scale = min(threads, self.cores) / self.cores * (clock_ghz or self.clock_ghz) / self.clock_ghz
        return base * 1e9 * scale


# From docs/TARGETS.md. RPi 5 and Jetson Nano: nominal DRAM bandwidth (no STREAM figure given).
BOARDS = {
    "rpi4": Hardware(48.0, 48.0, 5.5, 4, 1.5),
    "rpi5": Hardware(76.8, 307.2, 17.1, 4, 2.4, fp16=True),
    "jetson-nano": Hardware(45.8, 45.8, 25.6, 4, 1.43),
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (round(v, 5) if isinstance(v, float) else
                    {kk: round(vv, 5) for kk, vv in v.items()} if isinstance(v, dict) else v)
                for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Coeffs:
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


def _arrays(ks: list[Kernel], precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    work = np.array([k.work for k in ks], dtype=float)
    moved = np.array([k.bytes(precision) for k in ks], dtype=float)
    kind = np.array([KINDS.index(k.kind) for k in ks], dtype=int)
    return work, moved, kind


def _time_ms(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], peak: float, bw: float,
             c0: float, cop: float, eta_mem: float, eta: np.ndarray) -> float:
    work, moved, kind = arrays
    compute = work / (eta[kind] * peak)
    memory = moved / (eta_mem * bw * 1e9)
    return c0 + 1e3 * float(np.maximum(compute, memory).sum()) + cop * len(work)


def predict(ks: list[Kernel], coeffs: Coeffs, target_cpu: Any, *,
            clock_ghz: float | None = None) -> Prediction:
    """Predicted latency (ms) of the kernels ``ks`` on ``target_cpu`` (a ``CpuSpec``,
    :class:`Hardware` or a board name of :data:`BOARDS`) with the group's ``coeffs``."""
    hw = BOARDS[target_cpu] if isinstance(target_cpu, str) else Hardware.from_cpu(target_cpu)
    eta = np.array([coeffs.eta.get(k, coeffs.eta.get("common", 0.3)) for k in KINDS])
    ms = _time_ms(_arrays(ks, coeffs.precision), hw.peak(coeffs.precision, coeffs.threads,
                  clock_ghz), hw.bandwidth_gbs, coeffs.c0_ms, coeffs.c_op_ms, coeffs.eta_mem,
                  eta)
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
             p.clock_ghz), p.hardware.bandwidth_gbs, math.log(p.ms)) for p in points]
    kind_centre = prior_log[4:] - prior_log[3]  # prior log ratio of each kind to the common η

    def residuals(theta: np.ndarray) -> np.ndarray:
        c0, cop, mem = np.exp(theta[:3])
        eta = np.exp(theta[4:])
        fit = [(math.log(_time_ms(a, peak, bw, c0, cop, mem, eta)) - y) / SIGMA_DATA
               for a, peak, bw, y in data]
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


def fit_published(board: str) -> dict[str, Coeffs]:
    """Coefficients for every published group of ``board``, keyed ``runtime/precision/threads``
    (the keys of a target profile's ``latency_model``)."""
    return {g.split("/", 1)[1]: fit(ps) for g, ps in group_points(published_points(board)).items()}


def predict_module(module: nn.Module, input_shape: tuple[int, ...], coeffs: Coeffs,
                   target_cpu: Any) -> Prediction:
    """:func:`predict` for an ``nn.Module`` (its kernels are extracted first)."""
    return predict(kernels(module, input_shape), coeffs, target_cpu)


def coeffs_from_target(latency_model: dict[str, Any], key: str) -> Coeffs:
    """One group of a target profile's ``latency_model`` (``edgekit.targets.Target``)."""
    if key not in latency_model:
        raise KeyError(f"no latency-model group {key!r}; groups: {', '.join(latency_model)}")
    return Coeffs.from_dict(dict(latency_model[key]))
