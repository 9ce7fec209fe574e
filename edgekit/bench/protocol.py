"""The timing protocol: the same code times an artifact here and on a board.

Standard library + numpy + ONE runtime (through its backend plugin), never torch, so the device
runner can use it. One call of ``time_artifact`` = one (artifact, threads) measurement:

1. optional CPU pinning (``os.sched_setaffinity``) before the runtime creates its thread pool;
2. load (timed) with the runtime's thread count set explicitly and the target's options;
3. a preallocated input, bound to the session once (``Session.bind``) so the timed call is the
   runtime's inference call only — no copies, no shape checks, no Python-side batching;
4. warm-up: at least ``warmup_iters`` calls AND ``warmup_seconds``;
5. ``trials`` timed loops, each at least ``iters`` calls AND ``min_seconds``, garbage collector off;
6. percentiles over all timed calls, the p50 of each trial and their spread (max/min), peak RSS.

``python -m edgekit.bench.protocol FILE --backend NAME --shape 1,3,224,224 --threads 2`` times any
artifact file outside a bundle (used by ``benchmarks/`` to time peer tools' outputs identically).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import require_backend, runtime, runtimes
from edgekit.bench import hostinfo
from edgekit.errors import EdgekitError

try:
    import resource
except ImportError:  # not POSIX
    resource = None  # type: ignore[assignment]

SPREAD_LIMIT = 1.2  # max/min of the trials' p50 above which a measurement is called noisy


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and time. The defaults are the full protocol; ``quick()`` is for
    tests and smoke runs and is labelled as such in every report."""

    warmup_iters: int = 10
    warmup_seconds: float = 2.0
    iters: int = 100
    min_seconds: float = 10.0
    trials: int = 3
    quick: bool = False
    pin: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("warmup_iters", "iters", "trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.warmup_seconds < 0 or self.min_seconds < 0:
            raise ValueError("warmup_seconds and min_seconds must be >= 0")

    @classmethod
    def quick_protocol(cls, pin: Sequence[int] | None = None) -> Protocol:
        return cls(warmup_iters=3, warmup_seconds=0.0, iters=10, min_seconds=0.0, trials=2,
                   quick=True, pin=tuple(pin) if pin else None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pin"] = list(self.pin) if self.pin else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Protocol:
        d = dict(d)
        d["pin"] = tuple(d["pin"]) if d.get("pin") else None
        return cls(**d)

    def cli_args(self) -> list[str]:
        """The same protocol as command-line options of ``edgekit.runner`` / this module."""
        args = ["--warmup-iters", str(self.warmup_iters), "--warmup-seconds",
                str(self.warmup_seconds), "--iters", str(self.iters), "--min-seconds",
                str(self.min_seconds), "--trials", str(self.trials)]
        if self.quick:
            args.append("--quick-label")
        if self.pin:
            args += ["--pin", ",".join(map(str, self.pin))]
        return args


@dataclass
class Timing:
    """Per-call latencies (ns) of every trial."""

    trials: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ms = np.concatenate(self.trials).astype(np.float64) / 1e6
        p50s = [float(np.percentile(t.astype(np.float64) / 1e6, 50)) for t in self.trials]
        return {
            "latency_ms": {
                "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
                "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
                "min": float(ms.min()), "max": float(ms.max()), "n": int(ms.size)},
            "trials_p50_ms": p50s,
            "spread": float(max(p50s) / min(p50s)) if min(p50s) > 0 else float("inf"),
        }


def merge_trials(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result row from single-trial rows of the same (artifact, threads), each measured in
    its own process in interleaved rounds: p50/p90/p99 are the medians of the trials' values
    (p50 = the median of medians), mean/std are pooled, min/max/n over every call."""
    lat = [r["latency_ms"] for r in rows]
    n = sum(m["n"] for m in lat)
    mean = sum(m["mean"] * m["n"] for m in lat) / n
    ss = sum((m["n"] - 1) * m["std"] ** 2 + m["n"] * (m["mean"] - mean) ** 2 for m in lat)
    p50s = [m["p50"] for m in lat]
    merged = {
        "threads": rows[0]["threads"],
        "latency_ms": {
            "p50": statistics.median(p50s),
            "p90": statistics.median(m["p90"] for m in lat),
            "p99": statistics.median(m["p99"] for m in lat),
            "mean": mean, "std": (ss / (n - 1)) ** 0.5 if n > 1 else 0.0,
            "min": min(m["min"] for m in lat), "max": max(m["max"] for m in lat), "n": n},
        "trials_p50_ms": p50s,
        "spread": max(p50s) / min(p50s) if min(p50s) > 0 else float("inf"),
        "load_ms": statistics.median(r["load_ms"] for r in rows),
        "peak_rss_mb": max((r["peak_rss_mb"] or 0.0) for r in rows) or None,
        "runtime": rows[0]["runtime"], "error": None,
    }
    for key in ("environment", "protocol"):
        if key in rows[0]:
            merged[key] = rows[0][key]
    if any("thermal" in r for r in rows):
        merged.update(merge_thermal(rows))
    return merged


def measure(call: Callable[[], Any], protocol: Protocol,
            progress: Callable[[str], None] | None = None) -> Timing:
    """Warm up, then time ``call`` in ``protocol.trials`` loops. Only ``call`` is timed."""
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + protocol.warmup_seconds
    done = 0
    while done < protocol.warmup_iters or time.perf_counter() < deadline:
        call()
        done += 1
    timing = Timing()
    min_ns = int(protocol.min_seconds * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for trial in range(protocol.trials):
            if progress:
                progress(f"trial {trial + 1}/{protocol.trials}")
            samples: list[int] = []
            start = clock()
            while len(samples) < protocol.iters or clock() - start < min_ns:
                t0 = clock()
                call()
                samples.append(clock() - t0)
            timing.trials.append(np.asarray(samples, dtype=np.int64))
    finally:
        if gc_was_enabled:
            gc.enable()
    return timing


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process (MB), or None where unavailable.

    Linux: ``VmHWM`` from /proc/self/status, which starts afresh at exec. Not ``ru_maxrss``:
    Linux carries it over from the parent through fork + exec, so a runner started by a big
    process would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    if resource is None:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0


def pin_cpus(cpus: Sequence[int] | None) -> None:
    """Restrict this process (and the thread pools a runtime creates later) to ``cpus``."""
    if not cpus:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise OSError("CPU pinning needs os.sched_setaffinity (Linux)")
    available = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - available)
    if missing:
        raise OSError(f"cannot pin to CPUs {missing}: this process may use {sorted(available)}")
    os.sched_setaffinity(0, set(cpus))


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The machine and software a measurement was taken on (CPU facts from ``hostinfo``)."""
    names = ("edgekit", "numpy", *(d for r in runtimes() for d, _ in r.packages))
    packages = {n: v for n in names if (v := package_version(n))}
    return {"cpu": hostinfo.cpu_info(), "os": platform.platform(),
            "python": platform.python_version(), "packages": packages,
            "temperature_c": hostinfo.temperature_c(), "throttled": hostinfo.throttled()}


def bind(session: Any, x: np.ndarray) -> Callable[[], Any]:
    """A zero-argument inference call on a preallocated input (the session's fast path)."""
    fast = getattr(session, "bind", None)
    return fast(x) if fast is not None else (lambda: session.run(x))


def runtime_version(backend: str) -> str | None:
    """The installed version of the package that runs ``backend`` (``pytorch``: torch)."""
    rt = runtime(backend)
    return package_version(rt.packages[0][0] if rt else backend)


def runtime_facts(backend: str, session: Any, threads: int | None) -> dict[str, Any]:
    """What the runtime reports about how it runs: version, threads, compute precision."""
    return {"name": backend, "version": runtime_version(backend),
            "threads": getattr(session, "threads", None) or threads,
            "inference_precision": getattr(session, "inference_precision", None)}


# ------------------------------------------------------------------------- thermal validity
# ``vcgencmd get_throttled`` bits (Raspberry Pi): 0-3 are the state now, 16-19 the same
# conditions "has occurred since boot".
_THROTTLE_BITS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled",
                  3: "soft temperature limit active"}
_NOW_MASK = 0xF
_EVER_MASK = 0xF0000


def throttle_flags(text: str | None) -> int | None:
    """``throttled=0x50005`` (``vcgencmd get_throttled``) → 0x50005; None when absent/garbled."""
    if not text:
        return None
    value = text.strip().rpartition("=")[2].strip()
    try:
        return int(value, 0)
    except ValueError:
        return None


def _bit_names(flags: int) -> str:
    return ", ".join(name for bit, name in _THROTTLE_BITS.items() if flags >> bit & 1)


def throttle_verdict(before: str | None, after: str | None) -> str | None:
    """Why a measurement is invalid by ``vcgencmd`` evidence, or None (valid / no evidence).

    Invalid when a "now" bit (0-3) was set before or after the run, or when a "since boot"
    bit (16-19) appeared during it: the clock was lowered for at least part of the timing.
    Without vcgencmd (any non-Pi machine) there is no evidence and the run stays valid; the
    sampled temperatures and clocks are recorded for the reader either way."""
    b, a = throttle_flags(before), throttle_flags(after)
    if a is None:
        return None
    reasons = []
    now = (a | (b or 0)) & _NOW_MASK
    if now:
        reasons.append(f"throttled while timing ({_bit_names(now)}; {after})")
    if b is not None:
        new = a & ~b & _EVER_MASK
        if new and not now:
            reasons.append(f"throttling occurred during the run ({_bit_names(new >> 16)}; "
                           f"{before} -> {after})")
    return "; ".join(reasons) or None


def _cpufreq_mhz(cpus: Sequence[int], name: str) -> list[float]:
    """``/sys/devices/system/cpu/cpuN/cpufreq/<name>`` of each of ``cpus`` in MHz (where exposed)."""
    values = []
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq/{name}") as fh:
                values.append(int(fh.read().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return values


def _cur_freq_mhz(cpus: Sequence[int]) -> float | None:
    """The lowest current clock (MHz) of ``cpus``, None where cpufreq is not exposed."""
    return min(_cpufreq_mhz(cpus, "scaling_cur_freq"), default=None)


def _max_freq_mhz(cpus: Sequence[int]) -> float | None:
    return max(_cpufreq_mhz(cpus, "cpuinfo_max_freq"), default=None)


class ThermalSampler:
    """Samples temperature and the clock of this process's CPUs in a daemon thread while timing
    (every ``interval`` s, plus once at start and at stop); reads ``vcgencmd get_throttled``
    before and after. ``result()`` gives the row keys ``thermal``, ``valid``, ``invalid_reason``.

    Each sample reads a few sysfs files (microseconds), so the timed loop is not disturbed."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgekit-thermal", daemon=True)
        affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        self.cpus = affinity[:16]
        self.temps: list[float] = []
        self.freqs: list[float] = []
        self.samples = 0
        self.throttled_before: str | None = None
        self.throttled_after: str | None = None

    def sample(self) -> None:
        temp = hostinfo.temperature_c()
        freq = _cur_freq_mhz(self.cpus)
        if temp is not None:
            self.temps.append(temp)
        if freq is not None:
            self.freqs.append(freq)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ThermalSampler:
        self.throttled_before = hostinfo.throttled()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.throttled_after = hostinfo.throttled()

    def result(self) -> dict[str, Any]:
        reason = throttle_verdict(self.throttled_before, self.throttled_after)
        thermal = {
            "temp_c_min": min(self.temps) if self.temps else None,
            "temp_c_max": max(self.temps) if self.temps else None,
            "freq_mhz_min": min(self.freqs) if self.freqs else None,
            "freq_mhz_max": max(self.freqs) if self.freqs else None,
            "freq_mhz_limit": _max_freq_mhz(self.cpus),
            "samples": self.samples,
            "throttled_before": self.throttled_before,
            "throttled_after": self.throttled_after,
        }
        return {"thermal": thermal, "valid": reason is None, "invalid_reason": reason}


def merge_thermal(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``thermal``/``valid``/``invalid_reason`` of rows measured one trial each: extremes over
    every trial, the first ``throttled_before`` and the last ``throttled_after``; invalid when
    any trial was."""
    th = [r["thermal"] for r in rows if r.get("thermal")]

    def pick(key: str, fn: Callable[..., Any]) -> Any:
        values = [t[key] for t in th if t.get(key) is not None]
        return fn(values) if values else None

    reasons = list(dict.fromkeys(r["invalid_reason"] for r in rows if r.get("invalid_reason")))
    thermal = {"temp_c_min": pick("temp_c_min", min), "temp_c_max": pick("temp_c_max", max),
               "freq_mhz_min": pick("freq_mhz_min", min),
               "freq_mhz_max": pick("freq_mhz_max", max),
               "freq_mhz_limit": pick("freq_mhz_limit", max),
               "samples": sum(t.get("samples", 0) for t in th),
               "throttled_before": th[0].get("throttled_before") if th else None,
               "throttled_after": th[-1].get("throttled_after") if th else None}
    return {"thermal": thermal, "valid": all(r.get("valid", True) for r in rows),
            "invalid_reason": "; ".join(reasons) or None}


def time_session(open_session: Callable[[], Any], input_shape: Sequence[int], *, backend: str,
                 threads: int | None, protocol: Protocol, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load (timed), bind a fixed random input, measure; one result row (see
    docs/bench-results.md, ``rows``) plus ``environment`` and ``protocol``."""
    pin_cpus(protocol.pin)
    t0 = time.perf_counter()
    session = open_session()
    load_ms = (time.perf_counter() - t0) * 1e3
    x = np.random.default_rng(seed).standard_normal(tuple(input_shape)).astype(np.float32)
    out = np.asarray(session.run(x))
    if not np.all(np.isfinite(out)):
        raise ValueError("the artifact returns non-finite outputs on a random input")
    call = bind(session, np.ascontiguousarray(x))
    with ThermalSampler() as thermal:
        timing = measure(call, protocol, progress)
    row = {"threads": threads, **timing.summary(), "load_ms": load_ms,
           "peak_rss_mb": peak_rss_mb(), "runtime": runtime_facts(backend, session, threads),
           "error": None, **thermal.result()}
    return {**row, "environment": environment(), "protocol": protocol.to_dict()}


# ------------------------------------------------------------------------ command-line helpers
def add_protocol_args(ap: argparse.ArgumentParser) -> None:
    """The protocol options shared by this module's CLI and ``edgekit.runner --bench``."""
    d = Protocol()
    g = ap.add_argument_group("timing protocol")
    g.add_argument("--threads", type=int, default=None, help="runtime threads")
    g.add_argument("--quick", action="store_true", help="a few iterations (smoke tests only)")
    g.add_argument("--quick-label", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--warmup-iters", type=int, default=d.warmup_iters)
    g.add_argument("--warmup-seconds", type=float, default=d.warmup_seconds)
    g.add_argument("--iters", type=int, default=d.iters, help="minimum timed calls per trial")
    g.add_argument("--min-seconds", type=float, default=d.min_seconds,
                   help="minimum seconds per trial")
    g.add_argument("--trials", type=int, default=d.trials)
    g.add_argument("--pin", default=None, help="comma-separated CPU ids to pin to, e.g. 0,1")
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="runtime option (repeatable), e.g. INFERENCE_PRECISION_HINT=f32")


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    pin = tuple(int(c) for c in args.pin.split(",")) if args.pin else None
    if args.quick:
        return Protocol.quick_protocol(pin)
    return Protocol(warmup_iters=args.warmup_iters, warmup_seconds=args.warmup_seconds,
                    iters=args.iters, min_seconds=args.min_seconds, trials=args.trials,
                    quick=args.quick_label, pin=pin)


def options_from_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings → dict; values are JSON when they parse as JSON, else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"runtime option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def one_line(exc: BaseException) -> str:
    """A runtime's multi-line exception as one line, without its C++ source locations."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from src/")]
    return " ".join(useful or lines)[:800] or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.protocol",
                                 description="Time one model file with edgekit's protocol; "
                                             "prints one JSON object.")
    ap.add_argument("model", type=Path, help="artifact file (.onnx, .xml, .tflite)")
    ap.add_argument("--backend", required=True, help="onnxruntime | openvino | litert")
    ap.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224")
    add_protocol_args(ap)
    args = ap.parse_args(argv)
    try:
        backend = require_backend(args.backend)
        shape = [int(s) for s in args.shape.split(",")]
        options = options_from_args(args.option)
        result = time_session(lambda: backend.open(args.model, args.threads, options=options),
                              shape, backend=args.backend, threads=args.threads,
                              protocol=protocol_from_args(args))
    except (EdgekitError, ValueError, OSError, RuntimeError) as exc:
        print(f"Error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
