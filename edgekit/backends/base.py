"""The one small interface every runtime plugin implements.

A backend turns a source model into an artifact file (``export``) and opens an artifact for
inference (``open``). Everything a backend needs arrives in an ``ExportRequest``; everything the
bundle must record about the result comes back in an ``Artifact``.

``open`` and ``Session.run`` must work with numpy and the runtime alone — never torch — because
the device runner (``edgekit.runner``) uses them on boards without torch. Import torch and the
converters only inside ``export``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class CalibrationData(Protocol):
    """Re-iterable, sized stream of preprocessed inputs, one image per item.

    Each item is a float32 array of shape ``(1, *spec.input_shape(1)[1:])`` in the spec's
    layout. Items are read from disk lazily, so memory stays flat in the number of images.
    """

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class QuantOptions:
    """How to quantize: calibration method, per-channel weights, integer I/O, seed."""

    method: str = "minmax"  # one of CALIBRATION_METHODS; a backend may reject one it lacks
    per_channel: bool = True
    int8_io: bool = False  # TFLite only: int8 input/output tensors instead of float
    seed: int = 0
    fast_bias_correction: bool = True  # NNCF


@dataclass(frozen=True)
class ExportRequest:
    """What to export, at which precision, where to, with which calibration data.

    ``model`` is an ``edgekit.sources.LoadedModel``: ``model.kind == "torch"`` carries an
    ``nn.Module`` in eval mode (``model.module``); ``model.kind == "onnx"`` carries the path of
    an ONNX file (``model.onnx_path``) and no module.
    """

    model: Any
    precision: str
    out_dir: Path
    stem: str  # file name without suffix, e.g. "model-int8"
    calibration: CalibrationData | None = None
    options: QuantOptions = field(default_factory=QuantOptions)


@dataclass
class Artifact:
    """One exported model file (plus companions, e.g. OpenVINO's .bin) and how to call it."""

    backend: str
    precision: str
    path: Path  # the main file, inside ExportRequest.out_dir
    files: list[Path]  # every file this artifact consists of, main file first
    input_name: str
    input_shape: list[int]
    input_dtype: str  # "float32" or "int8"/"uint8" for integer I/O
    output_dtype: str
    layout: str  # "NCHW" or "NHWC"
    quantization: dict[str, Any] = field(default_factory=dict)  # e.g. I/O scale/zero point
    notes: list[str] = field(default_factory=list)  # facts a deploy engineer should know


@runtime_checkable
class Session(Protocol):
    """An opened artifact. ``run`` takes a float32 batch in the artifact's layout and returns
    float32 logits (N, num_outputs); integer-I/O artifacts quantize/dequantize inside ``run``."""

    input_shape: list[int]

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class Backend(Protocol):
    """A runtime plugin. ``name`` is the registry key; ``extra`` is the pip extra to install."""

    name: str
    extra: str
    suffix: str  # main artifact file suffix, e.g. ".onnx"
    precisions: tuple[str, ...]
    sources: tuple[str, ...]  # LoadedModel kinds it can export from: "torch", "onnx", ...

    def available(self) -> str | None:
        """None when the runtime is importable; otherwise a one-line install hint."""

    def export(self, request: ExportRequest) -> Artifact: ...

    def open(self, path: Path, threads: int | None = None) -> Session: ...


def run_batched(run_one: Any, batch: np.ndarray) -> np.ndarray:
    """Run a batch-1 callable over every row of ``batch`` and stack the outputs."""
    outs = [np.asarray(run_one(batch[i:i + 1]), dtype=np.float32).reshape(1, -1)
            for i in range(batch.shape[0])]
    return np.concatenate(outs, axis=0)


def iter_calibration(data: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Items of a CalibrationData as contiguous float32 arrays."""
    for item in data:
        yield np.ascontiguousarray(item, dtype=np.float32)


def check_supported(backend: Backend, precision: str, kind: str | None, hint: str = "") -> None:
    """ConfigError naming the backend unless it offers ``precision`` for a ``kind`` source."""
    from edgekit.errors import ConfigError

    if precision not in backend.precisions:
        raise ConfigError(f"Backend {backend.name!r} does not export precision "
                          f"{precision!r}; supported: {', '.join(backend.precisions)}")
    if kind not in backend.sources:
        raise ConfigError(f"Backend {backend.name!r} cannot convert a {str(kind).upper()} source; "
                          f"supported sources: {', '.join(backend.sources)} {hint}".rstrip())


def check_request(backend: Backend, request: ExportRequest) -> None:
    """The checks every backend makes first: a precision it offers, a source kind it converts,
    calibration data for int8. ConfigError naming the backend otherwise."""
    from edgekit.errors import ConfigError

    check_supported(backend, request.precision, getattr(request.model, "kind", None))
    if request.precision == "int8" and (request.calibration is None
                                        or len(request.calibration) == 0):
        raise ConfigError(f"int8 export with backend {backend.name!r} needs calibration data "
                          "(representative preprocessed images); none was given")
