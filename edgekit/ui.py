"""Terminal output shared by the library and the CLI: one console, progress bars, quiet mode.

Progress bars go to stderr and only when it is a terminal, so piped output, CI logs and
``--json`` stay clean. ``set_quiet(True)`` silences status lines too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)  # status, warnings, progress bars
out = Console(highlight=False)  # results (tables) on stdout
_state: dict[str, Any] = {"quiet": False, "bars_thread": None}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def status(message: str) -> None:
    """A one-line status message on stderr (suppressed in quiet mode)."""
    if not _state["quiet"]:
        console.print(message)


class Bar:
    """A handle on one progress task: ``advance(n)``, ``update(completed=..., note=...)``."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, *, completed: float | None = None, total: float | None = None,
               note: str | None = None) -> None:
        if self._progress is None:
            return
        kw: dict = {}
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        if note is not None:
            kw["note"] = note
        self._progress.update(self._task, **kw)

    def set(self, completed: float) -> None:
        """Callback-friendly: set the absolute number of completed steps."""
        self.update(completed=completed)


@contextmanager
def progress_bar(description: str, total: float | None) -> Iterator[Bar]:
    """A rich progress bar on stderr when it is a terminal; a no-op handle otherwise."""
    owner = _state["bars_thread"]
    if (_state["quiet"] or not console.is_terminal
            or (owner is not None and owner != threading.get_ident())):
        yield Bar(None, None)
        return
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(description, total=total, note="")
        yield Bar(prog, task)


@contextmanager
def bars_off() -> Iterator[None]:
    """Inside this block only this thread shows progress bars: rich has one live display at a
    time, so the worker threads of a parallel run (a fleet's boards) stay silent while this
    thread shows one bar over all of them."""
    before = _state["bars_thread"]
    _state["bars_thread"] = threading.get_ident()
    try:
        yield
    finally:
        _state["bars_thread"] = before
