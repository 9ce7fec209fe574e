"""Ctrl-C and SIGTERM on the command line, reported as what they are.

Both raise KeyboardInterrupt, so every ``finally`` and ``except BaseException`` cleans up (the
bundle's temporary folder, a bench run's, a remote board's). But an interrupt that lands in the
middle of an import (torch imports lazily, inside the exporters) leaves half-initialized
modules behind; the next code that touches them fails with an ImportError ("initialization
failed", "partially initialized module") or an AttributeError, and an exporter's error handling
reports that as a failed export. So the handler records the signal before raising, and the
command line reports any failure that follows it as the interrupt: ``Error: interrupted
(SIGINT)``, exit 130 (143 for SIGTERM). Standard library only: it is installed before the
command line's heavy imports.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None


def _handler(signum: int, frame: Any) -> None:
    global _received
    if _received is None:
        _received = signum
    raise KeyboardInterrupt


def received() -> int | None:
    """The first signal that arrived while ``handled`` was active, else None."""
    return _received


@contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt and are recorded; the previous handlers come
    back on exit. Only in the main thread (elsewhere: nothing is changed)."""
    global _received
    _received = None
    try:
        previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    except ValueError:  # not the main thread: signals cannot be handled here
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def describe(signum: int | None) -> tuple[str, int]:
    """``("interrupted (SIGINT)", 130)``: the message and the shell's exit code (128 + n)."""
    signum = signum or signal.SIGINT
    return f"interrupted ({signal.Signals(signum).name})", 128 + signum
