"""Ctrl-C and SIGTERM on the command line, reported as what they are.

Both raise KeyboardInterrupt, so every ``finally`` and ``except BaseException`` cleans up (the
bundle's temporary folder, a bench run's, a remote board's). But an interrupt that lands in the
middle of an import (torch imports lazily, inside the exporters) leaves half-initialized
modules behind; the next code that touches them fails with an ImportError ("initialization
failed", "partially initialized module") or an AttributeError, and an exporter's error handling
reports that as a failed export; torch's import, cut, aborts the whole process. So the handler
records the signal and waits for an import in progress to finish before it raises (polled with
SIGALRM every 50 ms; a second Ctrl-C does not wait), and the command line reports any failure
that follows it as the interrupt: ``Error: interrupted (SIGINT)``, exit 130 (143 for SIGTERM).
Standard library only: it is installed before the command line's heavy imports.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None


_RETRY_S = 0.05  # how often a deferred interrupt checks whether the import has finished
_alarm_before: Any = None


def _importing(frame: Any) -> bool:
    """Whether ``frame`` runs inside an import (importlib's frames are on the stack while a
    module's body executes: they are only hidden from tracebacks)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: Any) -> None:
    global _received, _alarm_before
    if _received is None:
        _received = signum
    if _importing(frame) and hasattr(signal, "setitimer") and _alarm_before is None:
        # A KeyboardInterrupt raised inside an import leaves the module half-initialized (torch
        # then aborts the process, or the interpreter kills itself on the way out): raise it as
        # soon as the import has finished instead, a fraction of a second later.
        _alarm_before = signal.signal(signal.SIGALRM, _retry)
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)
        return
    raise KeyboardInterrupt


def _retry(signum: int, frame: Any) -> None:
    if _importing(frame):
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)
        return
    _disarm()
    raise KeyboardInterrupt


def _disarm() -> None:
    global _alarm_before
    if _alarm_before is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, _alarm_before)
        _alarm_before = None


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
        if previous:
            _disarm()
        for s, h in previous.items():
            signal.signal(s, h)


def describe(signum: int | None) -> tuple[str, int]:
    """``("interrupted (SIGINT)", 130)``: the message and the shell's exit code (128 + n).
    Called when the interrupt is being reported, so a deferred raise still pending (an error
    got there first) is cancelled: raised now, it would kill the process after the message."""
    _disarm()
    signum = signum or signal.SIGINT
    return f"interrupted ({signal.Signals(signum).name})", 128 + signum
