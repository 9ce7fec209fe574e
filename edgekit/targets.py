"""Targets: the CPU a benchmark stands for, how to reach it, and which runtimes to prefer there.

Targets are YAML files validated with pydantic; unknown keys and bad values are errors that name
the file and the key path. The built-in targets live in ``targets/`` at the repository root
(shipped inside the package as ``edgekit/resources/targets``); users pass a name or a path.

A target either *declares* its CPU (``x86-avx2``: a representative hospital workstation) or
*detects* it at run time (``detect: true``, ``x86-local``: whatever this machine is).
``isa_notes`` says why numbers measured on this machine may not represent a declared profile.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from edgekit import config
from edgekit.backends import backend_names
from edgekit.bench.hostinfo import FEATURES_BY_ARCH, cpu_info, normalize_arch
from edgekit.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", frozen=True)
_ACCESS_KINDS = ("local", "ssh", "emulated")


# ----------------------------------------------------------------------- SSH option policy
# The policy lives with the targets that declare ``access.options``; ``edgekit.bench.ssh``
# applies the same check to options given in code (``SshExecutor(ssh_options=...)``).
_OPTION = re.compile(r"^([A-Za-z][A-Za-z0-9]*)\s*(?:=|\s)\s*(\S.*)$")
# Options a target may add (-o): reaching the host and keeping the connection alive. Anything
# that could weaken host-key checking or run a command (KnownHostsCommand, HostKeyAlias,
# *KnownHostsFile, ProxyCommand, LocalCommand, Control*) belongs in the user's ~/.ssh/config.
_ALLOWED_DISPLAY = ("ProxyJump", "ConnectTimeout", "ServerAliveInterval", "ServerAliveCountMax",
                    "IdentityAgent", "IdentitiesOnly", "Ciphers", "KexAlgorithms", "MACs",
                    "HostKeyAlgorithms", "PubkeyAcceptedAlgorithms", "Compression",
                    "AddressFamily", "BindAddress", "StrictHostKeyChecking", "BatchMode",
                    "UserKnownHostsFile", "CertificateFile", "IPQoS", "TCPKeepAlive")
_ALLOWED_OPTIONS = {k.lower() for k in _ALLOWED_DISPLAY}
# One ProxyJump hop: [ssh://][user@]host[:port], host a name or a bracketed IPv6 address. Names
# start with a letter, digit or underscore: a hop that starts with "-" would reach the jump
# host's ssh command line as an option (-oProxyCommand=...).
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_HOP = re.compile(rf"^(?:ssh://)?(?:{_NAME}@)?(?:{_NAME}|\[[0-9A-Fa-f:.]+(?:%{_NAME})?\])"
                  r"(?::[0-9]{1,5})?$")


def _proxy_jump_problem(option: str, value: str) -> str | None:
    """Why a ProxyJump value is refused: "none", or comma-separated [user@]host[:port] hops."""
    if value.lower() == "none":
        return None
    bad = [hop for hop in value.split(",") if not _HOP.match(hop)]
    if bad:
        return (f"ssh option {option!r} is refused: {bad[0]!r} is not a jump host "
                "([user@]host[:port], hops separated by commas; names must not start with '-' "
                "or hold spaces or shell characters)")
    return None


def ssh_option_problem(option: str) -> str | None:
    """Why an extra ``ssh -o`` option is refused (None: acceptable). Host-key checking, batch
    mode and known_hosts cannot be turned off through options."""
    m = _OPTION.match(option.strip())
    if not m or "\n" in option or "\r" in option:
        return f"ssh option {option!r} is not KEY=VALUE (e.g. ProxyJump=user@bastion)"
    key, raw = m.group(1).lower(), m.group(2).strip().strip("\"'")
    value = raw.lower()
    if raw.startswith("-"):
        return (f"ssh option {option!r} is refused: a value starting with '-' could be read "
                "as another ssh option")
    if key == "proxyjump":
        return _proxy_jump_problem(option, raw)
    if key == "stricthostkeychecking" and value != "yes":
        return (f"ssh option {option!r} is refused: edgekit always checks the device's host key "
                "(StrictHostKeyChecking=yes). Put the device's key in known_hosts instead "
                "(the target's access.known_hosts, or ~/.ssh/known_hosts)")
    if key == "userknownhostsfile" and value in ("/dev/null", "none"):
        return (f"ssh option {option!r} is refused: it would accept any host key. Set "
                "access.known_hosts to a file that holds the device's key")
    if key == "batchmode" and value != "yes":
        return (f"ssh option {option!r} is refused: edgekit runs ssh without prompts "
                "(BatchMode=yes); log in with a key or an agent")
    if key not in _ALLOWED_OPTIONS:
        return (f"ssh option {option!r} is not one edgekit passes on (it could change how host "
                "keys are checked or run local commands); allowed: "
                f"{', '.join(sorted(_ALLOWED_DISPLAY))}. Put anything else in ~/.ssh/config")
    return None


class LocalAccess(BaseModel):
    """Run on this machine."""

    model_config = _STRICT
    kind: Literal["local"] = Field(description="run the benchmark in a process on this machine")


class SshAccess(BaseModel):
    """Run on a device reached over SSH (bundle + runner copied to ``workdir``)."""

    model_config = _STRICT
    kind: Literal["ssh"] = Field(description="copy the bundle and runner to a device over SSH")
    host: str = Field(description="host name or address of the device")
    user: str | None = Field(None, description="login user on the device; None: from "
                                               "~/.ssh/config (else your local user name)")
    port: int | None = Field(None, ge=1, le=65535,
                             description="SSH port; None: from ~/.ssh/config (else 22)")
    key: str | None = Field(None, description="private key file; None uses the SSH agent/config")
    workdir: str = Field("~/edgekit-bench", description="folder on the device for bundle + runner")
    python: str = Field("python3", description="Python interpreter on the device")
    known_hosts: str | None = Field(
        None, description="known_hosts file holding the device's host key (UserKnownHostsFile); "
                          "None uses ~/.ssh/known_hosts and the SSH config")
    options: list[str] = Field(
        default_factory=list, description="extra ssh -o options, e.g. ProxyJump=user@bastion; "
                                          "host-key checking cannot be turned off")

    @field_validator("host", "user")
    @classmethod
    def _ssh_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value or value.startswith("-") or any(c.isspace() or c in "@'\"`$;|&<>\\"
                                                     for c in value):
            raise ValueError(f"{value!r} is not a valid SSH host or user name")
        return value

    @field_validator("options")
    @classmethod
    def _ssh_options(cls, value: list[str]) -> list[str]:
        for option in value:
            problem = ssh_option_problem(option)
            if problem:
                raise ValueError(problem)
        return value


class EmulatedAccess(BaseModel):
    """Run under QEMU user-mode emulation: output parity only, timings mean nothing."""

    model_config = _STRICT
    kind: Literal["emulated"] = Field(description="run an aarch64 Python under qemu-user")
    qemu_cpu: str = Field(description="QEMU -cpu model, e.g. cortex-a72 or cortex-a76")


Access = Annotated[LocalAccess | SshAccess | EmulatedAccess, Field(discriminator="kind")]


class CpuSpec(BaseModel):
    """Declared facts about the target's CPU (all optional; None = unknown / detected)."""

    model_config = _STRICT
    model: str | None = Field(None, description="CPU model the profile represents")
    cores: int | None = Field(None, ge=1, description="cores the deployed model may use")
    clock_ghz: float | None = Field(None, gt=0, description="sustained clock in GHz")
    features: list[str] = Field(default_factory=list,
                                description="speed-relevant ISA features (normalized names, "
                                            "see edgekit.bench.hostinfo)")
    l1d_kb: int | None = Field(None, ge=1, description="L1 data cache per core, KiB")
    l2_kb: int | None = Field(None, ge=1, description="L2 cache, KiB (per core where private)")
    l3_kb: int | None = Field(None, ge=1, description="last-level cache in total, KiB")
    memory_bandwidth_gbs: float | None = Field(None, gt=0, description="DRAM bandwidth, GB/s")
    peak_gmacs_fp32: float | None = Field(None, gt=0, description="all-core fp32 peak, GMAC/s")
    peak_gmacs_int8: float | None = Field(None, gt=0, description="all-core int8 peak, GMAC/s")


def _check_features(values: list[str], info: ValidationInfo) -> list[str]:
    arch = info.data.get("arch")
    known = FEATURES_BY_ARCH.get(arch, ())
    unknown = [f for f in values if f not in known]
    if arch and unknown:
        raise ValueError(f"unknown {arch} feature(s) {', '.join(unknown)}; known: "
                         f"{', '.join(known)}")
    return values


def _check_backends(names: list[str]) -> None:
    unknown = [b for b in names if b not in backend_names()]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; "
                         f"known: {', '.join(backend_names())}")


class Target(BaseModel):
    """A benchmark target profile (``targets/*.yaml``)."""

    class LatencyRoute(BaseModel):
        """Which latency-model group predicts one edgekit backend at one artifact precision.

        ``group`` is ``runtime/precision`` of the ``latency_model`` groups (the thread count is
        picked at prediction time: the fitted count, else the Amdahl curve through the fitted
        counts around it, else the nearest one scaled by ``thread_scaling``). ``compute`` is the precision the kernels are costed in (peak MAC
        rate and bytes moved; default: the group's). A proxy (a group of another runtime, or of
        another precision) adds ``proxy_rel_err`` to the group's expected error (in quadrature).
        """

        model_config = _STRICT
        group: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*/(fp32|fp16|int8)$",
                           description="runtime/precision of the latency_model groups to use")
        compute: Literal["fp32", "fp16", "int8"] | None = Field(
            None, description="precision the kernels are costed in; default: the group's")
        proxy_rel_err: float = Field(0.0, ge=0, le=5,
                                     description="extra relative error of using this group as "
                                                 "a proxy (0 when it measures this runtime)")
        basis: str = Field(min_length=1, description="what the prediction is based on")
        unsupported: str | None = Field(
            None, description="the runtime cannot run this precision on this CPU: no "
                              "prediction, this reason instead")

    class ThreadScaling(BaseModel):
        """Amdahl's law between thread counts: t(n) ∝ (1 - p) + p / n."""

        model_config = _STRICT
        parallel_fraction: float = Field(ge=0, le=1, description="p of Amdahl's law")
        rel_err: float = Field(ge=0, le=5, description="relative error of a scaled prediction")
        basis: str = Field("", description="what p was fitted on")

    class Prediction(BaseModel):
        """How edgekit.bench.predict predicts latencies on this target."""

        model_config = _STRICT
        groups_from: Literal["profile", "local-calibration"] = Field(
            "profile", description="profile: this file's latency_model; local-calibration: "
                                   "`edgekit targets calibrate x86-local` on this machine")
        transfer_rel_err: float = Field(
            0.0, ge=0, le=5, description="extra relative error when the groups were measured "
                                         "on another CPU than this profile's (local-calibration "
                                         "of a declared profile)")
        thread_scaling: Target.ThreadScaling | None = Field(
            None, description="scaling to thread counts without a fitted group")
        routes: dict[str, dict[Literal["fp32", "fp16", "int8"], Target.LatencyRoute]] = Field(
            default_factory=dict, description="per backend, per artifact precision: the group")

        @field_validator("routes")
        @classmethod
        def _route_backends(cls, value: dict) -> dict:
            _check_backends(list(value))
            return value

    model_config = _STRICT
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$",
                      description="profile name (lowercase; used in run folder names)")
    description: str = Field("", description="one paragraph: what device this stands for")
    arch: Literal["x86_64", "aarch64"] = Field(description="instruction set architecture")
    access: Access = Field(description="how to reach the CPU: local, ssh or emulated")
    detect: bool = Field(False, description="true: CPU facts are detected at run time, "
                                            "not declared (cpu is then ignored)")
    cpu: CpuSpec = Field(default_factory=CpuSpec, description="declared CPU facts")
    threads: list[int] | Literal["auto"] = Field(
        "auto", description="thread counts to measure; auto = [1, usable logical cores]")
    runtime_options: dict[str, dict[str, str | bool | int | float]] = Field(
        default_factory=dict, description="per backend: runtime settings passed when opening")
    preferred: dict[Literal["fp32", "fp16", "int8"], list[str]] = Field(
        default_factory=dict, description="per precision: the runtimes to prefer, best first")
    pin: bool = Field(False, description="pin the benchmark process to cores (taskset)")
    notes: list[str] = Field(default_factory=list,
                             description="facts a deploy engineer must know about this target")
    latency_model: dict[str, float | dict[str, Any]] | None = Field(
        None, description="coefficients of the latency model (filled by calibration)")
    predict: Target.Prediction | None = Field(
        None, description="which latency-model group predicts each backend and precision "
                          "(edgekit.bench.predict); None: no predictions for this target")
    requires: list[str] = Field(default_factory=list,
                                description="CPU features the profile assumes")

    @field_validator("threads", mode="before")
    @classmethod
    def _threads_shape(cls, value: Any) -> Any:
        if value != "auto" and not isinstance(value, list):
            raise ValueError(f"give a list of thread counts or auto, got {value!r}")
        return value

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: list[int] | str) -> list[int] | str:
        if isinstance(value, list):
            if not value or min(value) < 1:
                raise ValueError("list thread counts >= 1 (or auto)")
            if len(set(value)) != len(value):
                raise ValueError("a thread count is listed twice")
        return value

    @field_validator("runtime_options")
    @classmethod
    def _options(cls, value: dict[str, dict]) -> dict[str, dict]:
        _check_backends(list(value))
        return value

    def with_runtime_options(self, extra: dict[str, dict[str, Any]]) -> Target:
        """This target with ``extra`` merged into its runtime options (per backend, a key in
        ``extra`` replaces the target's), validated as a target file would be."""
        merged = {b: dict(o) for b, o in self.runtime_options.items()}
        for backend, opts in extra.items():
            merged.setdefault(backend, {}).update(opts)
        try:
            return type(self).model_validate({**self.model_dump(), "runtime_options": merged})
        except ValidationError as exc:
            raise ConfigError(f"runtime options {extra}: "
                              + "; ".join(e["msg"] for e in exc.errors())) from None

    @field_validator("preferred")
    @classmethod
    def _preferred(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for names in value.values():
            _check_backends(names)
            if len(set(names)) != len(names):
                raise ValueError("a backend is listed twice")
        return value

    @field_validator("cpu")
    @classmethod
    def _cpu_features(cls, value: CpuSpec, info: ValidationInfo) -> CpuSpec:
        _check_features(value.features, info)
        return value

    @field_validator("requires")
    @classmethod
    def _requires(cls, value: list[str], info: ValidationInfo) -> list[str]:
        _check_features(value, info)
        cpu = info.data.get("cpu")
        if cpu is not None and not info.data.get("detect"):
            missing = [f for f in value if f not in cpu.features]
            if missing:
                raise ValueError(f"{', '.join(missing)} required but not in cpu.features")
        return value

    @field_validator("predict")
    @classmethod
    def _predict_groups(cls, value: Target.Prediction | None,
                        info: ValidationInfo) -> Target.Prediction | None:
        """Every route of a profile-fitted target names a family of its latency_model groups."""
        if value is None or value.groups_from != "profile":
            return value
        groups = {k.rsplit("/", 1)[0] for k, v in (info.data.get("latency_model") or {}).items()
                  if isinstance(v, dict) and k.count("/") == 2}
        missing = sorted({r.group for by_precision in value.routes.values()
                          for r in by_precision.values()} - groups)
        if missing:
            raise ValueError(f"route group(s) {', '.join(missing)} have no latency_model group "
                             f"runtime/precision/threads (known: {', '.join(sorted(groups))})")
        return value

    def thread_counts(self, host_cores: int) -> list[int]:
        """Thread counts to measure on a machine with ``host_cores`` usable cores.

        ``auto`` gives ``[1, host_cores]``. Declared counts above ``host_cores`` are replaced by
        ``host_cores`` (oversubscribed cores measure contention, not the target).
        """
        cores = max(1, int(host_cores))
        wanted = [1, cores] if self.threads == "auto" else self.threads
        return sorted({min(t, cores) for t in wanted})


# ------------------------------------------------------------------------------ loading
def builtin_targets() -> dict[str, Path]:
    """Names and files of the targets shipped with edgekit."""
    return config.builtin_files("targets")


def _loc(parts: tuple) -> str:
    """A pydantic error location as a key path, without union/discriminator tags (access.port)."""
    keep = [str(p) for i, p in enumerate(parts)
            if not (i > 0 and parts[i - 1] == "access" and p in _ACCESS_KINDS)
            and not (isinstance(p, str) and "[" in p)]  # union members: list[int], literal[..]
    return ".".join(keep) or "(top level)"


def _validate(data: Any, where: str) -> Target:
    return config.validate(Target, data, where, "target", _loc)


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name (``x86-local``) or a user's YAML file."""
    return config.load(Target, name_or_path, "targets", "target", _loc)


def target_names() -> list[str]:
    """The built-in targets' names, sorted."""
    return sorted(builtin_targets())


def list_targets() -> list[Target]:
    """Every built-in target, loaded and validated, sorted by name."""
    return [load_target(n) for n in target_names()]


# --------------------------------------------------------------------------- host checks
def describe_host(target: Target) -> dict:
    """The effective CPU facts: detected on this machine (``detect: true``) or as declared.

    Both shapes share ``source`` ("detected" | "declared"), ``arch``, ``model``, ``cores`` and
    ``features``; detected facts add the keys of ``hostinfo.cpu_info()``.
    """
    if target.detect:
        info = cpu_info()
        return {"source": "detected", **info, "cores": info["logical_cores"]}
    return {"source": "declared", "arch": target.arch, **target.cpu.model_dump()}


# What a feature the host has, and the profile lacks, does to numbers measured on the host.
_INT8 = "INT8 speed-ups measured here overstate that target"
_WIDE = "its wider vectors make fp32 and INT8 latencies measured here lower than that target's"
_BF16 = ("runtimes may silently compute in bf16 here (OpenVINO does unless told f32); "
         "that target cannot")
_FP16 = ("runtimes may compute in fp16 here (OpenVINO and ncnn do by default on such ARM "
         "cores); that target cannot")
_ANY = "latencies measured here may understate that target's"
_IMPACT = {"avx512_vnni": _INT8, "avx_vnni": _INT8, "amx_int8": _INT8, "amx_tile": _INT8,
           "dotprod": _INT8, "i8mm": _INT8, "avx512f": _WIDE, "avx512bw": _WIDE, "sve": _WIDE,
           "sve2": _WIDE, "avx512_bf16": _BF16, "amx_bf16": _BF16, "bf16": _BF16, "fp16": _FP16}


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _extra_feature_notes(name: str, extra: list[str]) -> list[str]:
    by_impact: dict[str, list[str]] = {i: [] for i in (_INT8, _WIDE, _BF16, _FP16, _ANY)}
    for f in extra:
        by_impact.setdefault(_IMPACT.get(f, _ANY), []).append(f)
    return [f"this machine has {_join(fs)}, which the {name} profile lacks: {impact}"
            for impact, fs in by_impact.items() if fs]


def isa_notes(target: Target, cpu: dict) -> list[str]:
    """Why a benchmark of ``target`` on the host described by ``cpu`` (``cpu_info()``) may not
    represent the profile. Empty for ``detect: true`` targets and for a matching host."""
    if target.detect:
        return []
    host_arch = normalize_arch(str(cpu.get("arch") or ""))
    if host_arch != target.arch:
        return [f"this machine is {host_arch or 'of unknown architecture'}, the {target.name} "
                f"profile is {target.arch}: latencies measured here do not represent it at all"]
    host = list(cpu.get("features") or [])
    if not host:
        return ["this machine's CPU features are unknown (no /proc/cpuinfo): it cannot be "
                f"checked against the {target.name} profile"]
    declared = set(target.cpu.features) | set(target.requires)
    notes = _extra_feature_notes(target.name, [f for f in host if f not in declared])
    missing = [f for f in target.requires if f not in host]
    if missing:
        notes.append(f"the {target.name} profile requires {_join(missing)}, which this machine "
                     "lacks: latencies measured here overstate that target's")
    lacking = sorted(set(target.cpu.features) - set(target.requires) - set(host))
    if lacking:
        notes.append(f"the {target.name} profile's CPU has {_join(lacking)}, which this machine "
                     "lacks: latencies measured here may overstate that target's")
    cores = cpu.get("logical_cores")
    if target.cpu.cores and cores and cores < target.cpu.cores:
        notes.append(f"this machine has {cores} usable cores, the {target.name} profile "
                     f"has {target.cpu.cores}: multi-thread rows stop at {cores} threads")
    return notes
