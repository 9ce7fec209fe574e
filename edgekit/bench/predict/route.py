"""A target's latency model and one prediction along a route (backend, precision, threads).

A profile's ``predict.routes`` names, per edgekit backend and artifact precision, the group
family (``runtime/precision``) that predicts it; :func:`predict_route` picks the thread count's
group (or the Amdahl curve between two, or a scaled neighbour) and combines the errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit.bench.predict.calibration import _local_entry
from edgekit.bench.predict.hardware import Hardware
from edgekit.bench.predict.kernel import Kernel
from edgekit.bench.predict.model import Coeffs, ThreadScaling, predict


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
