"""Per-layer INT8 sensitivity: how much error each quantized layer ADDS, ranked.

No labels are needed: the float graph and the INT8 graph see the same calibration-side images
and their intermediate tensors are compared. For a quantized layer, ``error`` is the relative
L2 error of its output against the float graph's (``||q − f|| / ||f||`` over all images) and
``added`` that error minus the largest error already present in its activation inputs (before
they are quantized for this layer): the damage done by quantizing this layer's inputs and
weights, which is what keeping the layer in float removes. Ranking by ``added`` points at the
cause, not at every layer downstream of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerError:
    """One quantized layer's error against the float graph (relative L2; see the module)."""

    name: str  # the backend's node name (what keep_float takes)
    op_type: str
    error: float
    added: float

    @property
    def sqnr_db(self) -> float:
        """Signal-to-quantization-noise ratio of the layer's output, in dB."""
        return math.inf if self.error <= 0 else -20 * math.log10(self.error)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["sqnr_db"] = None if math.isinf(self.sqnr_db) else round(self.sqnr_db, 2)
        out["error"], out["added"] = round(self.error, 6), round(self.added, 6)
        return out


class ErrorAccumulator:
    """Running ``sum ||q − f||²`` and ``sum ||f||²`` per tensor, image by image (flat memory)."""

    def __init__(self) -> None:
        self.diff: dict[str, float] = {}
        self.ref: dict[str, float] = {}

    def add(self, name: str, quantized: np.ndarray, reference: np.ndarray) -> None:
        q = np.asarray(quantized, dtype=np.float64)
        f = np.asarray(reference, dtype=np.float64)
        if q.shape != f.shape:
            return
        self.diff[name] = self.diff.get(name, 0.0) + float(np.sum((q - f) ** 2))
        self.ref[name] = self.ref.get(name, 0.0) + float(np.sum(f ** 2))

    def error(self, name: str) -> float | None:
        if name not in self.diff:
            return None
        return relative_error(self.diff[name], self.ref[name])


    @classmethod
    def over(cls, images: np.ndarray, keys: list[str],
             float_run: Callable[[np.ndarray], Sequence[np.ndarray]],
             quant_run: Callable[[np.ndarray], Sequence[np.ndarray]]) -> ErrorAccumulator:
        """The errors of every tensor in ``keys`` over ``images``, one image at a time:
        ``float_run``/``quant_run`` return those tensors, in that order, for one image."""
        acc = cls()
        for i in range(len(images)):
            row = np.ascontiguousarray(images[i:i + 1], dtype=np.float32)
            for key, f, q in zip(keys, float_run(row), quant_run(row), strict=True):
                acc.add(key, q, f)
        return acc


def relative_error(diff_sq: float, ref_sq: float) -> float:
    """``sqrt(diff² / ref²)``; a zero reference gives 0 when the difference is zero, else inf."""
    if ref_sq <= 0:
        return 0.0 if diff_sq <= 0 else math.inf
    return math.sqrt(diff_sq / ref_sq)


def rank(rows: Iterable[LayerError]) -> list[LayerError]:
    """Most sensitive first: by added error, then by output error, then by name."""
    return sorted(rows, key=lambda r: (-r.added, -r.error, r.name))


def format_table(rows: list[LayerError], top: int | None = 10) -> str:
    """The ranked table as plain text (header line first)."""
    shown = rows if top is None else rows[:top]
    width = max([len("layer")] + [len(r.name) for r in shown])
    lines = [f"{'#':>3}  {'layer':<{width}}  {'op':<14} {'rel. error':>10} {'added':>9} "
             f"{'SQNR dB':>8}"]
    for i, r in enumerate(shown, start=1):
        sqnr = "inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}"
        lines.append(f"{i:>3}  {r.name:<{width}}  {r.op_type:<14} {r.error:>10.4f} "
                     f"{r.added:>9.4f} {sqnr:>8}")
    return "\n".join(lines)
