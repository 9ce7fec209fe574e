"""Runtime plugins. Adding a runtime = one file here + one line in ``_REGISTRY``.

``get_backend(name)`` imports the plugin module (never the runtime itself: plugins import their
SDK lazily), so listing backends, their facts and their install status is cheap. Everything
else in edgekit that needs to know about runtimes (reports, the benchmark protocol, SSH,
emulation, the CLI) asks these functions instead of keeping its own table of backend names.
"""

from __future__ import annotations

from importlib import import_module

from edgekit.backends.base import (
    TORCH_REFERENCE,
    Artifact,
    Backend,
    CalibrationData,
    ExportRequest,
    QuantOptions,
    Runtime,
    Session,
)
from edgekit.errors import BackendUnavailable, ConfigError

_REGISTRY: dict[str, str] = {
    "onnxruntime": "edgekit.backends.onnxruntime",
    "openvino": "edgekit.backends.openvino",
    "litert": "edgekit.backends.litert",
}
# The runtime a board is told to install first (``device_install_hint``): the smallest wheel,
# and it runs every precision.
DEVICE_BACKEND = "litert"
# What a local latency search times fp32 candidates with when the target prefers no runtime: the
# fastest fp32 runtime on the x86 machines measured (benchmarks/results).
LATENCY_BACKEND = "openvino"

__all__ = ["DEVICE_BACKEND", "LATENCY_BACKEND", "TORCH_REFERENCE", "Artifact", "Backend", "CalibrationData",
           "ExportRequest", "QuantOptions", "Runtime", "Session", "all_backends",
           "backend_names", "device_install_hint", "get_backend", "require_backend", "runtime",
           "runtimes"]


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The plugin object for ``name`` (ConfigError naming the known backends otherwise)."""
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown backend {name!r}; known backends: {', '.join(_REGISTRY)}")
    return import_module(_REGISTRY[name]).BACKEND


def require_backend(name: str) -> Backend:
    """``get_backend`` plus a BackendUnavailable with the install hint if its SDK is missing."""
    backend = get_backend(name)
    hint = backend.available()
    if hint:
        raise BackendUnavailable(f"Backend {name!r} is not installed: {hint}")
    return backend


def all_backends() -> list[Backend]:
    """Every plugin, in registry order (imports the plugin modules, none of the runtimes)."""
    return [get_backend(name) for name in _REGISTRY]


def runtimes() -> list[Runtime]:
    """Every runtime a measurement can name: the plugins, then the PyTorch reference."""
    return [*all_backends(), TORCH_REFERENCE]


def runtime(name: str) -> Runtime | None:
    """The facts of the runtime ``name`` (a plugin or the PyTorch reference); None when edgekit
    does not know it (e.g. a results file from a newer edgekit)."""
    if name == TORCH_REFERENCE.name:
        return TORCH_REFERENCE
    return get_backend(name) if name in _REGISTRY else None


def device_install_hint() -> str:
    """What to pip install on a device so the runner can run: numpy, Pillow and one runtime."""
    *others, last = sorted(b.packages[0][0] for b in all_backends())
    one_of = f"{', '.join(others)} or {last}" if others else last
    return (f"pip install 'edgekit[{get_backend(DEVICE_BACKEND).extra}]' (or: pip install numpy "
            f"pillow plus one runtime: {one_of})")
