"""Benchmarking: protocol, host facts, local/ssh/emulated runners and latency prediction.

``from edgekit.bench import bench`` is the public entry point (``edgekit.bench.run.bench``); it is
imported lazily so the device runner, which imports ``edgekit.bench.protocol``, stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bench"]


def __getattr__(name: str) -> Any:
    if name == "bench":
        from edgekit.bench.run import bench

        return bench
    raise AttributeError(f"module 'edgekit.bench' has no attribute {name!r}")
