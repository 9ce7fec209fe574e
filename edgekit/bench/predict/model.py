"""The latency model: a roofline sum over fused kernels, fitted per group (MAP least squares).

    t_ms = c0 + Σ_k max(work_k / (η_kind · peak), bytes_k / (η_mem · bandwidth)) + c_op · n_kernels

:func:`predict` costs kernels with one group's :class:`Coeffs`; :func:`fit` fits a group on
:class:`Point` s (measured or published latencies) with log-normal priors and a leave-one-out
error; :class:`ThreadScaling` is Amdahl's law between thread counts. numpy, and scipy inside
the fits only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edgekit.bench.predict.hardware import BOARDS, Hardware
from edgekit.bench.predict.kernel import BYTES, KINDS, Kernel

# prior efficiency of each kind relative to the common η (depthwise and element-wise code runs
# far from the FMA peak); the fit moves them with log-normal priors of width SIGMA_KIND
KIND_RATIO = {"conv1x1": 1.0, "convkxk": 1.0, "depthwise": 0.3, "fc": 0.5,
              "elementwise": 0.1, "pool": 0.1, "gate": 0.1}
DEFAULT_PRIOR = {"c0_ms": 0.5, "c_op_ms": 0.02, "eta_mem": 0.7, "eta": 0.35}
SIGMA_DATA, SIGMA_KIND, SIGMA_PRIOR = 0.1, 0.5, 1.0
DEFAULT_REL_ERR = 0.35
MIN_REL_ERR = 0.10  # LOO over a handful of similar networks is optimistic: floor it


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
    return c0 + float(_kernel_ms(arrays, peak, bw, eta_mem, eta, cache).sum()) \
        + cop * len(arrays[0])


def _kernel_ms(arrays: _Arrays, peak: float, bw: float, eta_mem: float, eta: np.ndarray,
               cache: float) -> np.ndarray:
    """Each kernel's roofline time in ms (the terms :func:`_time_ms` sums)."""
    work, act, wts, kind = arrays
    compute = work / (eta[kind] * peak)
    a_spill = np.maximum(act - cache, 0.0)
    w_spill = wts if wts.sum() + act.max(initial=0.0) > cache else 0.0 * wts
    fast, dram = eta_mem * bw * 1e9, min(1.0, eta_mem) * bw * 1e9
    memory = (act - a_spill + wts - w_spill) / fast + (a_spill + w_spill) / dram
    return 1e3 * np.maximum(compute, memory)


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


def kernel_times(ks: list[Kernel], coeffs: Coeffs, target_cpu: Any
                 ) -> tuple[float, list[float]]:
    """``(c0, per-kernel ms)`` of :func:`predict`: each kernel's roofline time plus the
    per-kernel overhead ``c_op``; ``c0 + sum`` is the prediction (where a model's time goes,
    as the latency model sees it)."""
    hw = BOARDS[target_cpu] if isinstance(target_cpu, str) else Hardware.from_cpu(target_cpu)
    eta = np.array([coeffs.eta.get(k, coeffs.eta.get("common", 0.3)) for k in KINDS])
    ms = _kernel_ms(_arrays(ks, coeffs.precision), hw.peak(coeffs.precision, coeffs.threads),
                    hw.bandwidth_gbs, coeffs.eta_mem, eta, hw.cache_bytes)
    return coeffs.c0_ms, [float(t) + coeffs.c_op_ms for t in ms]


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


def thread_prior(coeffs: Coeffs, threads: int, scaling: ThreadScaling) -> Coeffs:
    """``coeffs`` (fitted at ``coeffs.threads``) moved to ``threads`` by Amdahl's law, as the
    prior of a fit at that thread count: the time shrinks by the speed-up S while the peak
    grows by the thread ratio, so every η becomes ``η · S · from / to``; η_mem (the bandwidth is
    not scaled by threads) ``η_mem · S``."""
    speedup = 1 / scaling.factor(coeffs.threads, threads)
    ratio = speedup * coeffs.threads / threads
    return replace(coeffs, threads=threads, eta={k: v * ratio for k, v in coeffs.eta.items()},
                   eta_mem=coeffs.eta_mem * speedup, n_points=0)
