"""Benchmarking: protocol, host facts, local/ssh/emulated runners, latency prediction, fleets
of boards (``fleet``) and evaluation sharded on Ray (``cluster``).

``from edgekit.bench import bench, BenchOptions`` is the public entry point
(``edgekit.bench.run``); it is imported on first use so the device runner, which imports
``edgekit.bench.protocol``, stays light (numpy and the standard library only).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["BenchOptions", "BenchRun", "bench"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("edgekit.bench.run"), name)
    raise AttributeError(f"module 'edgekit.bench' has no attribute {name!r}")
