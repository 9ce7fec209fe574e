"""Run measurements on this machine: every (artifact, threads) in a fresh subprocess.

An executor (``edgekit.bench.executor``) is how ``edgekit.bench.run`` reaches a target. This one
starts the device runner (``python -m edgekit.runner``) here; the SSH executor starts the same
runner on a board. Each call is its own process so one runtime's thread pool never disturbs
another's, and a runtime that crashes costs one row, not the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bench.executor import Executor, RunFailed, last_error, options_args, runner_json
from edgekit.bench.protocol import Protocol, environment

__all__ = ["LocalExecutor", "RunFailed"]


class LocalExecutor(Executor):
    """Runs the device runner in subprocesses of this Python."""

    kind = "local"
    label = "this machine"

    def __init__(self, python: str | None = None, timeout: float | None = 3600) -> None:
        self.python = python or sys.executable
        self.timeout = timeout

    def environment(self) -> dict[str, Any]:
        return environment()

    def _run(self, args: Sequence[str], threads: int | None = None) -> str:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if threads:  # libraries that size their pools from OpenMP variables get the same count
            env["OMP_NUM_THREADS"] = str(threads)
        try:
            done = subprocess.run([self.python, *args], capture_output=True, text=True,
                                  env=env, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RunFailed(f"timed out after {self.timeout:.0f} s: {' '.join(args[:4])}") from exc
        if done.returncode < 0:  # killed by a signal: SIGKILL is usually the OOM killer
            raise RunFailed(f"the runner was killed by signal {-done.returncode}"
                            + (" (out of memory?)" if done.returncode == -9 else "")
                            + (f": {last_error(done.stderr)}" if done.stderr.strip() else ""))
        if done.returncode != 0:
            raise RunFailed(last_error(done.stderr))
        return done.stdout

    def _timed(self, args: list[str], threads: int | None) -> dict[str, Any]:
        """Run a timing command (``--threads`` added when set); its JSON row."""
        if threads:
            args += ["--threads", str(threads)]
        return runner_json(self._run(args, threads))

    def time_artifact(self, bundle: Path, artifact: str, threads: int | None,
                      protocol: Protocol, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._timed(["-m", "edgekit.runner", str(bundle), "--bench", "--artifact",
                            artifact, *protocol.cli_args(), *options_args(options)], threads)

    def time_file(self, path: Path, backend: str, shape: Sequence[int], threads: int | None,
                  protocol: Protocol, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Time one artifact file outside a bundle (``edgekit.bench.protocol``)."""
        return self._timed(["-m", "edgekit.bench.protocol", str(path), "--backend", backend,
                            "--shape", ",".join(map(str, shape)), *protocol.cli_args(),
                            *options_args(options)], threads)

    def time_source(self, source: str, shape: Sequence[int], threads: int | None,
                    protocol: Protocol) -> dict[str, Any]:
        return self._timed(["-m", "edgekit.bench.torch_source", source, "--shape",
                            ",".join(map(str, shape)), *protocol.cli_args()], threads)

    def logits(self, bundle: Path, artifact: str, images: Sequence[Path],
               options: dict[str, Any] | None = None) -> np.ndarray:
        """The artifact's raw outputs for ``images`` (rows in order), computed by the runner."""
        with tempfile.TemporaryDirectory(prefix="edgekit-logits-") as tmp:
            listing = Path(tmp) / "images.txt"
            listing.write_text("".join(f"{p}\n" for p in images))
            out = Path(tmp) / "logits.npy"
            self._run(["-m", "edgekit.runner", str(bundle), "--artifact", artifact,
                       "--image-list", str(listing), "--save-logits", str(out),
                       *options_args(options)])
            return np.load(out)
