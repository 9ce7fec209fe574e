"""The one small interface every runtime plugin implements, and every fact about a runtime.

A backend turns a source model into an artifact file (``export``) and opens an artifact for
inference (``open``). Everything a backend needs arrives in an ``ExportRequest``; everything the
bundle must record about the result comes back in an ``Artifact``. What the rest of edgekit
needs to know about a runtime (labels, chart colour, pip packages, ARM behaviour, why a source
cannot reach it) is a plain attribute or method of its plugin (``Runtime``, ``Backend``), so
reports, the benchmark protocol, SSH and emulation ask the registry instead of listing backends.

``open`` and ``Session.run`` must work with numpy and the runtime alone — never torch — because
the device runner (``edgekit.runner``) uses them on boards without torch. Import torch and the
converters only inside ``export``. ``Session`` is the batch-one base class of every session:
a plugin implements ``_run_one`` for one image, the base loops rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.errors import ConfigError, DataError
from edgekit.manifest import UNKNOWN_FAST_PATH, FastPath

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# How method "minmax" turns the calibration images into one activation range: "global" = the
# min/max over all images; "mean" = the mean over images of each image's min/max (NNCF's
# default: one outlier image widens the range by its share only).
ACTIVATION_RANGES = ("global", "mean")


def activation_ranges_error(method: str, ranges: str | None) -> str | None:
    """Why ``ranges`` (QuantOptions.activation_ranges) cannot go with ``method``; None if it
    can. The recipe and QuantOptions both ask."""
    if ranges not in (None, *ACTIVATION_RANGES):
        return f"activation_ranges must be one of {', '.join(ACTIVATION_RANGES)}, not {ranges!r}"
    if ranges is not None and method != "minmax":
        return (f"activation_ranges applies to method minmax, not {method} (percentile and "
                "entropy pick their own ranges)")
    return None


class CalibrationData(Protocol):
    """Re-iterable, sized stream of preprocessed inputs, one image per item.

    Each item is a float32 array of shape ``(1, *spec.input_shape(1)[1:])`` in the spec's
    layout. Items are read from disk lazily, so memory stays flat in the number of images.
    """

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class QuantOptions:
    """How to quantize: calibration method, per-channel weights, integer I/O, seed, and the
    layers to keep in float (``keep_float``: the backend's node names, as its
    ``layer_sensitivity`` reports them; ORT maps them to ``nodes_to_exclude``)."""

    method: str = "minmax"  # one of CALIBRATION_METHODS; a backend may reject one it lacks
    per_channel: bool = True
    int8_io: bool = False  # TFLite only: int8 input/output tensors instead of float
    seed: int = 0
    fast_bias_correction: bool = True  # NNCF
    keep_float: tuple[str, ...] = ()  # mixed precision: these layers are not quantized
    # method "minmax": one of ACTIVATION_RANGES; None: the backend's default
    # (its ``activation_ranges`` fact)
    activation_ranges: str | None = None

    def __post_init__(self) -> None:
        why = activation_ranges_error(self.method, self.activation_ranges)
        if why:
            raise ConfigError(why)

    def ranges(self, default: str) -> str | None:
        """The activation ranges a backend whose default is ``default`` uses; None when the
        method is not minmax (the quantization record's ``activation_ranges``)."""
        return (self.activation_ranges or default) if self.method == "minmax" else None


@dataclass(frozen=True)
class ExportRequest:
    """What to export, at which precision, where to, with which calibration data.

    ``model`` is a loaded source. Backends read it only through ``kind`` ("torch",
    "torchscript", "onnx", "keras"), ``module`` (torch kinds: an ``nn.Module``),
    ``onnx_file()`` (onnx and keras: the ONNX file), ``keras`` (keras), ``spec``, ``name``,
    ``source``, ``class_names``, ``task`` and ``head``.
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


class Runtime(Protocol):
    """What edgekit knows about an inference runtime without importing it.

    Reports, the benchmark protocol, the SSH preflight and the emulated ARM environment read
    these facts instead of keeping their own tables of runtime names. Every backend plugin is a
    Runtime; so is ``TORCH_REFERENCE``, the eager PyTorch timing of a source model.
    """

    name: str  # registry key; the ``backend`` of every artifact, result row and manifest entry
    label: str  # short name for chart and table labels, e.g. "ort"
    title: str  # human name, e.g. "ONNX Runtime"
    colour: str  # chart colour (matplotlib colour string)
    # (pip distribution, import name) of the runtime, any one of which runs its artifacts; the
    # first is the one to install (on a device, in the emulated aarch64 environment) and the one
    # whose version a measurement reports.
    packages: tuple[tuple[str, str], ...]
    module: str  # what to import to run an artifact (checked on a device and under emulation)


@dataclass(frozen=True)
class RuntimeFacts:
    """A Runtime that is no backend plugin: it times sources, it exports nothing."""

    name: str
    label: str
    title: str
    colour: str
    packages: tuple[tuple[str, str], ...]
    module: str


TORCH_REFERENCE = RuntimeFacts(name="pytorch", label="torch", title="PyTorch", colour="#7f7f7f",
                               packages=(("torch", "torch"),), module="torch")


class Session(ABC):
    """An opened artifact, run one image at a time (edge inference is batch 1).

    ``run`` takes a float32 batch in the artifact's layout and returns float32 logits
    (N, num_outputs): it checks the batch against ``input_shape`` and calls ``_run_one`` once per
    row. Integer-I/O artifacts quantize/dequantize inside ``_run_one``. ``bind`` is the timing
    protocol's fast path: the bare inference call on one fixed input. ``threads`` is the thread
    count the runtime runs with (None: the runtime's default) and ``inference_precision`` the
    precision it computes in, where the runtime reports one (OpenVINO); benchmark results record
    both.
    """

    path: Path
    input_name: str
    input_shape: list[int]  # N first; -1 for a dimension the artifact leaves open
    threads: int | None = None
    inference_precision: str | None = None

    @abstractmethod
    def _run_one(self, row: np.ndarray) -> np.ndarray:
        """Logits for one contiguous float32 row of shape ``(1, *input_shape[1:])``."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._check_batch(batch)
        outs = [np.asarray(self._run_one(batch[i:i + 1]), dtype=np.float32).reshape(1, -1)
                for i in range(batch.shape[0])]
        return np.concatenate(outs, axis=0)

    def bind(self, x: np.ndarray) -> Callable[[], Any]:
        """The bare inference call on a fixed input (the timing protocol's timed call)."""
        row = np.ascontiguousarray(x, dtype=np.float32)
        return lambda: self._run_one(row)

    def _check_batch(self, batch: np.ndarray) -> None:
        """DataError unless ``batch`` fits ``input_shape`` after N (-1 fits any size)."""
        expected = self.input_shape[1:]
        if batch.ndim != len(self.input_shape) or any(
                e > 0 and e != s for e, s in zip(expected, batch.shape[1:], strict=True)):
            raise DataError(f"{self.path.name}: input batch of shape {tuple(batch.shape)} does not "
                            f"fit the artifact's input {self.input_shape} (N first)")


class Backend(Runtime, Protocol):
    """A runtime plugin: its facts (``Runtime`` plus the ones below) and what it does.

    ``name`` is the registry key; ``extra`` is the pip extra to install. Facts are plain
    attributes so that listing them never imports the runtime or its converters.
    """

    extra: str
    suffix: str  # main artifact file suffix, e.g. ".onnx"
    precisions: tuple[str, ...]
    sources: tuple[str, ...]  # source kinds it can export from: "torch", "onnx", ...
    converter_packages: tuple[str, ...]  # pip distributions whose versions shape its artifacts
    slow_export: bool  # exports take seconds per model: left out of quick calibrations
    int8_as_fp16_on_arm: bool  # runs INT8 artifacts in fp16 on ARM CPUs (no INT8 speed-up)
    activation_ranges: str  # the default of QuantOptions.activation_ranges (ACTIVATION_RANGES)

    def source_hint(self, kind: str) -> str:
        """Why a ``kind`` source cannot reach this backend and what to do instead ("" if the
        backend has nothing to add to the list of sources it takes)."""

    def arm_failure_hint(self, message: str, cpu: str, features: Collection[str]) -> str | None:
        """What is known about a runner failure ``message`` of this runtime on the ARM CPU
        model ``cpu`` with these /proc/cpuinfo ``features``; None when nothing is."""

    def available(self) -> str | None:
        """None when the runtime is importable; otherwise a one-line install hint."""

    def fast_path(self, path: Path, precision: str) -> FastPath:
        """Which ops of the artifact at ``path`` (exported at ``precision``) run off this
        runtime's fast path on this machine — not taken by the fast delegate/plugin, run in a
        reference kernel, or in float inside an INT8 model — each with a reason.
        ``FastPath(status="unknown")`` when the backend cannot tell (``QuietHooks``'s
        default)."""

    def export(self, request: ExportRequest) -> Artifact: ...

    def open(self, path: Path, threads: int | None = None,
             options: dict[str, Any] | None = None) -> Session: ...


class QuietHooks:
    """The answers of a backend with nothing to add: no source hint, no known ARM failure, no
    quantizer option for the INT8 rescue to try. Plugins derive from it and override the hook
    they have something to say in."""

    # (label, QuantOptions overrides) the INT8 rescue tries before keeping layers in float
    rescue_options: tuple[tuple[str, dict[str, Any]], ...] = ()

    def source_hint(self, kind: str) -> str:
        return ""

    def arm_failure_hint(self, message: str, cpu: str, features: Collection[str]) -> str | None:
        return None

    def fast_path(self, path: Path, precision: str) -> FastPath:
        return UNKNOWN_FAST_PATH


def first_line(exc: BaseException, limit: int | None = 500, *, typed: bool = False) -> str:
    """One line of an exception for an error message: the first line of its text, cut to
    ``limit`` characters (None: uncut), or its type name when it has no text. ``typed``: the
    line stripped and prefixed "TypeName: " (just the type name when there is no text)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if typed:
        line = line.strip()
        return f"{type(exc).__name__}: {line}"[:limit] if line else type(exc).__name__
    return (line or type(exc).__name__)[:limit]


def onnx_source_file(model: Any) -> Path:
    """The ONNX file of an onnx or keras source (a Keras source is converted on first use);
    DataError when there is none."""
    onnx_file = model.onnx_file()
    source = Path(onnx_file) if onnx_file else None
    if source is None or not source.is_file():
        raise DataError(f"ONNX model file not found: {source}")
    return source


def iter_calibration(data: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Items of a CalibrationData as contiguous float32 arrays."""
    for item in data:
        yield np.ascontiguousarray(item, dtype=np.float32)


def check_supported(backend: Backend, precision: str, kind: str | None, hint: str = "") -> None:
    """ConfigError naming the backend unless it offers ``precision`` for a ``kind`` source."""
    if precision not in backend.precisions:
        raise ConfigError(f"Backend {backend.name!r} does not export precision "
                          f"{precision!r}; supported: {', '.join(backend.precisions)}")
    if kind not in backend.sources:
        raise ConfigError(f"Backend {backend.name!r} cannot convert a {str(kind).upper()} source; "
                          f"supported sources: {', '.join(backend.sources)} {hint}".rstrip())


def check_request(backend: Backend, request: ExportRequest) -> None:
    """The checks every backend makes first: a precision it offers, a source kind it converts,
    calibration data for int8. ConfigError naming the backend otherwise."""
    check_supported(backend, request.precision, getattr(request.model, "kind", None))
    if request.precision == "int8" and (request.calibration is None
                                        or len(request.calibration) == 0):
        raise ConfigError(f"int8 export with backend {backend.name!r} needs calibration data "
                          "(representative preprocessed images); none was given")
