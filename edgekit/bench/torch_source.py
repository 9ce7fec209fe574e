"""Time the PyTorch source model (eager, fp32) with the same protocol as the artifacts.

    python -m edgekit.bench.torch_source SOURCE --shape 1,3,224,224 --threads 2 [--quick]

Runs in its own process (like every artifact measurement) so torch's thread pool never shares a
process with a runtime's. Workstation only: this needs torch, the device runner does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from edgekit.backends.base import TORCH_REFERENCE
from edgekit.bench.protocol import (
    add_protocol_args,
    one_line,
    protocol_from_args,
    time_session,
)
from edgekit.errors import EdgekitError
from edgekit.sources import TorchSource, load_model


class EagerSession:
    """A torch module behind the Session interface: fp32 eager, inference mode."""

    def __init__(self, source: str, input_size: int | None, threads: int | None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()
        self.inference_precision = "f32"
        loaded = load_model(source, input_size=input_size)
        if not isinstance(loaded, TorchSource):
            raise ValueError(f"{source} is not a PyTorch model")
        self.module = loaded.module.eval().float()
        self.spec = loaded.spec
        self._torch = torch

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.module(self._torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    def bind(self, x: np.ndarray) -> Any:
        torch, module, tensor = self._torch, self.module, self._torch.from_numpy(x)

        def call() -> Any:
            with torch.inference_mode():
                return module(tensor)

        return call


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edgekit.bench.torch_source",
                                 description="Time a PyTorch source model (eager fp32).")
    ap.add_argument("source", help="checkpoint, ARCH:weights.pt, TorchScript, .pt2 or zoo name")
    ap.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224")
    add_protocol_args(ap)
    args = ap.parse_args(argv)

    try:
        import torch

        # one interop thread, like the runtimes: intra-op threads are the measured setting
        torch.set_num_interop_threads(1)
        holder: dict[str, EagerSession] = {}

        def open_session() -> EagerSession:
            holder["s"] = EagerSession(args.source, shape[-1] if shape[1] in (1, 3) else shape[1],
                                       args.threads)
            return holder["s"]

        shape = [int(s) for s in args.shape.split(",")]
        row = time_session(open_session, shape, backend=TORCH_REFERENCE.name,
                           threads=args.threads, protocol=protocol_from_args(args))
    except (EdgekitError, ValueError, OSError, RuntimeError) as exc:
        print(f"Error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    print(json.dumps({"artifact": "source", **row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
