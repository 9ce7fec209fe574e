"""The CPU as the latency model sees it: all-core peaks, DRAM bandwidth, last-level cache.

:class:`Hardware` of the published boards (:data:`BOARDS`), of a target's declared ``cpu``
(:meth:`Hardware.from_cpu`), or of this machine (:func:`detect_hardware`: peaks from cores ×
clock × FMA width, a measured copy bandwidth, the cache size sysfs reports).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.hostinfo import cpu_info, normalize_arch


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
