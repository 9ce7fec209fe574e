"""The Executor protocol: how ``edgekit.bench`` (and pruning to a latency) reach a target.

An executor runs the device runner somewhere and hands back what it printed: ``LocalExecutor``
(subprocesses here), ``SshExecutor`` (a board over SSH) and ``EmulatedExecutor`` (an aarch64
Python under QEMU). Every one implements the whole contract below; what an executor cannot do
raises :class:`RunFailed` with the reason (an emulated timing means nothing, the PyTorch source
does not run on a board), so callers never probe for methods.

Rows are the runner's JSON (``docs/bench-results.md``, ``rows``): they are written to disk as
they are, so they stay dicts. The helpers below are what every executor does with the runner's
command line and output. Standard library only.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    import numpy as np

    from edgekit.bench.protocol import Protocol

__all__ = ["Executor", "RunFailed", "last_error", "options_args", "runner_json"]


class RunFailed(EdgekitError):
    """A runner subprocess exited non-zero; the message is its last stderr line(s)."""


@typing.runtime_checkable
class Executor(typing.Protocol):
    """What ``bench`` asks of a target. ``with executor:`` closes it at the end.

    ``kind`` is ``"local"``, ``"ssh"`` or ``"emulated"`` (recorded as the run's
    ``measured_by``); ``label`` names the machine in messages (``pi@raspberrypi.local``)."""

    kind: str
    label: str

    def environment(self) -> dict[str, Any]:
        """The machine and software measured on, in the shape of
        ``edgekit.bench.protocol.environment()``."""
        ...

    def time_artifact(self, bundle: Path, artifact: str, threads: int | None,
                      protocol: Protocol, options: dict[str, Any] | None = None,
                      ) -> dict[str, Any]:
        """One measurement of a bundle's artifact with ``threads`` threads: the runner's
        ``--bench`` row. ``options`` are the backend's runtime options."""
        ...

    def time_source(self, source: str, shape: Sequence[int], threads: int | None,
                    protocol: Protocol) -> dict[str, Any]:
        """One measurement of the PyTorch source model (eager fp32), same row shape."""
        ...

    def time_file(self, path: Path, backend: str, shape: Sequence[int], threads: int | None,
                  protocol: Protocol, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """One measurement of an artifact file outside a bundle (calibration, pruning to a
        latency, peer tools' outputs)."""
        ...

    def logits(self, bundle: Path, artifact: str, images: Sequence[Path],
               options: dict[str, Any] | None = None) -> np.ndarray:
        """The artifact's raw outputs for ``images`` (rows in order), computed by the runner
        with the device's own preprocessing."""
        ...

    def close(self) -> None:
        """Release what the executor holds (connections, remote folders, temporary files).
        Idempotent; nothing to release by default."""

    def __enter__(self) -> typing.Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------- talking to the device runner
def options_args(options: dict[str, Any] | None) -> list[str]:
    """Runtime options as the runner's ``--option KEY=VALUE`` arguments (non-strings as JSON)."""
    return [a for k, v in (options or {}).items()
            for a in ("--option", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]


def last_error(stderr: str) -> str:
    """The runner's own ``Error: ...`` line, else the last lines of its stderr."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    if errors:
        return errors[-1].removeprefix("Error:").strip()
    return " | ".join(lines[-3:]) or "no error output"


def runner_json(stdout: str) -> dict[str, Any]:
    """The result row: the last line of the runner's stdout that is a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError as exc:
                raise RunFailed(f"the runner printed malformed JSON ({exc})") from None
    raise RunFailed(f"the runner printed no JSON result: {stdout[-300:]!r}")
