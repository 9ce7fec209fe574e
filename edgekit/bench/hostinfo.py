"""Facts about the CPU this process runs on: model, cores, ISA features, governor, clocks.

Standard library only: this module runs inside the device runner on a Raspberry Pi, where
neither pydantic nor numpy may be installed. Nothing here raises on a missing file: an
unreadable fact is ``None`` (or an empty feature list). The parsers take file text as an
argument so tests can feed canned ``/proc/cpuinfo`` texts of other machines. Syntax is kept
to Python 3.8 so old board images can run it.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess

CPUINFO = "/proc/cpuinfo"
CPUFREQ = "/sys/devices/system/cpu/cpu0/cpufreq"
THERMAL_GLOB = "/sys/class/thermal/thermal_zone*/temp"

# The curated, speed-relevant features, under their normalized names. x86 names are the kernel's.
X86_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = ("neon", "dotprod", "fp16", "i8mm", "bf16", "sve", "sve2")
FEATURES_BY_ARCH = {"x86_64": X86_FEATURES, "aarch64": ARM_FEATURES}

# aarch64 kernel feature name -> normalized name ("fp16" needs both fphp and asimdhp).
_ARM_FLAG_NAMES = {"asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm",
                   "bf16": "bf16", "sve": "sve", "sve2": "sve2"}
# "CPU part" of ARM Ltd. cores (implementer 0x41).
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
             "0xd0b": "Cortex-A76", "0xd40": "Neoverse-V1"}


def normalize_arch(machine: str) -> str:
    """``platform.machine()`` spellings folded to ``x86_64`` / ``aarch64`` (others lowercased)."""
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l"):
        return "aarch64"
    return m


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _blocks(text: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` as one ``{key: value}`` dict per blank-line separated block."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1][key.strip()] = value.strip()
    return [b for b in blocks if b]


def _first(blocks: list[dict[str, str]], key: str) -> str | None:
    for b in blocks:
        if b.get(key):
            return b[key]
    return None


def normalize_features(flags: str | list[str], arch: str) -> list[str]:
    """Kernel feature names (``flags`` / ``Features``) -> the sorted curated normalized names."""
    raw = set(flags.split() if isinstance(flags, str) else flags)
    if normalize_arch(arch) == "x86_64":
        return sorted(raw & set(X86_FEATURES))
    found = {_ARM_FLAG_NAMES[f] for f in raw if f in _ARM_FLAG_NAMES}
    if {"fphp", "asimdhp"} <= raw:
        found.add("fp16")
    return sorted(found)


def _arm_model(blocks: list[dict[str, str]]) -> str | None:
    part = (_first(blocks, "CPU part") or "").lower()
    implementer = (_first(blocks, "CPU implementer") or "0x41").lower()
    if not part:
        return None
    core = ARM_PARTS.get(part) if implementer == "0x41" else None
    core = core or f"CPU implementer {implementer} part {part}"
    board = _first(blocks, "Model")
    return f"{core} ({board})" if board else core


def _physical_cores(blocks: list[dict[str, str]], x86: bool) -> int | None:
    processors = [b for b in blocks if "processor" in b]
    if not x86:  # the ARM cores edgekit targets have no SMT: one processor entry per core
        return len(processors) or None
    pairs = {(b.get("physical id"), b.get("core id")) for b in processors if "core id" in b}
    return len(pairs) or None


def parse_cpuinfo(text: str, arch: str) -> dict:
    """``/proc/cpuinfo`` text -> ``{"model", "physical_cores", "features", "mhz"}``.

    ``model`` is ``model name`` where present (x86); on ARM it is built from ``CPU part``
    (e.g. ``Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)``). ``mhz`` is x86's ``cpu MHz``.
    """
    blocks = _blocks(text)
    x86 = normalize_arch(arch) == "x86_64"
    model = _first(blocks, "model name")
    if not x86 and (model is None or model.startswith("ARMv")):  # "ARMv7 Processor rev 3 (v7l)"
        model = _arm_model(blocks) or model
    flags = _first(blocks, "flags" if x86 else "Features") or ""
    mhz = _first(blocks, "cpu MHz")
    try:
        current = float(mhz) if mhz else None
    except ValueError:
        current = None
    return {"model": model, "physical_cores": _physical_cores(blocks, x86),
            "features": normalize_features(flags, arch), "mhz": current}


def _khz_to_mhz(text: str | None) -> float | None:
    try:
        return int(text.strip()) / 1000.0 if text else None
    except ValueError:
        return None


def logical_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_info() -> dict:
    """This machine's CPU: model, arch, cores, curated features, governor and clocks (MHz)."""
    arch = platform.machine()
    parsed = parse_cpuinfo(_read(CPUINFO) or "", arch)
    governor = _read(f"{CPUFREQ}/scaling_governor")
    current = _khz_to_mhz(_read(f"{CPUFREQ}/scaling_cur_freq"))
    return {
        "model": parsed["model"] or platform.processor() or arch or "unknown",
        "arch": arch,
        "logical_cores": logical_cores(),
        "physical_cores": parsed["physical_cores"],
        "features": parsed["features"],
        "governor": governor.strip() if governor else None,
        "freq_mhz": {"current": current if current is not None else parsed["mhz"],
                     "max": _khz_to_mhz(_read(f"{CPUFREQ}/cpuinfo_max_freq"))},
    }


def temperature_c() -> float | None:
    """The hottest thermal zone in °C, or None where the kernel exposes none."""
    temps = []
    for path in sorted(glob.glob(THERMAL_GLOB)):
        try:
            temps.append(int((_read(path) or "").strip()) / 1000.0)
        except ValueError:
            continue
    return max(temps) if temps else None


def throttled() -> str | None:
    """``vcgencmd get_throttled`` output (Raspberry Pi, e.g. ``throttled=0x0``), else None.

    Bits 0-3 are the state now (under-voltage, frequency capped, throttled, soft temperature
    limit); bits 16-19 the same conditions since boot.
    """
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None
