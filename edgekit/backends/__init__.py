"""Runtime plugins. Adding a runtime = one file here + one line in ``_REGISTRY``.

``get_backend(name)`` imports the plugin module (never the runtime itself: plugins import their
SDK lazily), so listing backends and their install status is cheap.
"""

from __future__ import annotations

from importlib import import_module

from edgekit.backends.base import (
    Artifact,
    Backend,
    CalibrationData,
    ExportRequest,
    QuantOptions,
    Session,
)
from edgekit.errors import BackendUnavailable, ConfigError

_REGISTRY: dict[str, str] = {
    "onnxruntime": "edgekit.backends.onnxruntime",
    "openvino": "edgekit.backends.openvino",
    "litert": "edgekit.backends.litert",
}

__all__ = ["Artifact", "Backend", "CalibrationData", "ExportRequest", "QuantOptions", "Session",
           "backend_names", "get_backend", "require_backend"]


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
