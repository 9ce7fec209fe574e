"""ONNX Runtime backend: ONNX fp32 and INT8 (QDQ) artifacts, run on the CPU execution provider.

Export
    * torch source: ``torch.onnx.export(dynamo=True, opset_version=18, external_data=False)``
      (the torch.export-based exporter; it implements opset 18 natively), input ``"input"``,
      output ``"logits"``. The exporter's per-node metadata (python stack traces with absolute
      paths, FX node dumps) is stripped: it doubles small files and makes the bytes depend on
      where the checkout lives.
    * onnx source: the user's file is checked (``onnx.checker``), its single float32 input must
      fit ``spec.input_shape(1)``; a dynamic (symbolic) batch dim, or any other symbolic dim, is
      FIXED to the spec's value, so every artifact of this backend has the same static batch-1
      shape (edge inference is batch 1; ``Session.run`` loops rows) and ORT can plan memory
      statically. Input/output names are kept as the file has them.
    * int8: ORT's pre-processing (``quant_pre_process``: symbolic shape inference, ORT basic
      graph optimisation — Conv+BN folding — and ONNX shape inference), the exact fast-path
      rewrites (``_int8_rewrites``), then ``quantize_static`` in QDQ format with a streaming
      ``CalibrationDataReader``. See ``OnnxRuntimeBackend`` for the per-ISA quantization
      types and why; ``unfused_ops`` lists what ORT still runs in float in an INT8 artifact.

Every artifact is opened once with ORT before it is copied to ``out_dir``, so an operator ORT
cannot run fails the export (``ExportError`` naming the operator and "onnxruntime"), not the
device. Work files live in a temporary directory; ``out_dir`` only ever receives the artifact.

``open``/``Session.run`` import only numpy and onnxruntime (no torch, no onnx).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import (
    CALIBRATION_METHODS,
    Artifact,
    CalibrationData,
    ExportRequest,
    QuietHooks,
    Session,
    check_request,
    first_line,
    iter_calibration,
    onnx_source_file,
)
from edgekit.bench.hostinfo import cpu_info, normalize_arch
from edgekit.errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    EdgekitError,
    ExportError,
)
from edgekit.manifest import FastPath, OffPathOp
from edgekit.quantize.sensitivity import ErrorAccumulator, LayerError, rank

NAME = "onnxruntime"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18  # the torch.export-based exporter implements 18 natively (17 silently becomes 18)
CALIBRATION_CHUNK = 16  # images whose outputs ORT's calibrators hold at once
_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
_ACTIVATION_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
_INSTALL_HINT = "pip install 'edgekit[onnxruntime]'"
_EXPORT_HINT = "pip install 'edgekit[torch,onnxruntime]' (torch, onnx, onnxscript and onnxruntime)"
# The last fp32 ONNX export of each PyTorch module, keyed by input shape, source kind and a digest
# of its weights: the INT8 rescue re-quantizes the same graph up to max_attempts times, and the
# torch.export-based exporter takes seconds to tens of seconds per call.
_EXPORTED: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], bytes]] = (
    weakref.WeakKeyDictionary())


_VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 int8 dot products without saturation
_RESULTS = "benchmarks/results/ort_int8_options.md"


@dataclass(frozen=True)
class Int8Scheme:
    """The INT8 quantization an ISA gets by default, and why (recorded in the manifest)."""

    isa: str  # "x86-vnni", "x86" or "arm64"
    activation_type: str  # "uint8" (QUInt8) or "int8" (QInt8); weights are always int8
    reduce_range: bool  # 7-bit weights
    basis: str


# Every scheme: QDQ (QOperator measured no faster), weights int8 per channel (per tensor was no
# faster and lost agreement on the depthwise models), ALL op types ORT quantizes (Conv/MatMul/
# Gemm only left Add/Mul/Concat/Sigmoid in float between extra Q/DQ: 1.3-2.4x slower), and the
# exact graph rewrites of ``_int8_rewrites`` (GELU, global pooling, channel mean).
SCHEMES = {
    "x86-vnni": Int8Scheme(
        "x86-vnni", "uint8", False,
        "measured (" + _RESULTS + "): U8S8 QDQ fuses into QLinearConv/QLinearAdd/QGemm; S8S8 "
        "left convolutions unfused and ran 1.5-3.7x slower; VNNI/AMX dot products do not "
        "saturate, so reduce_range only costs accuracy"),
    "x86": Int8Scheme(
        "x86", "uint8", True,
        "ORT's quantization guide: without VNNI, U8S8 runs on vpmaddubsw, whose int16 "
        "intermediate can saturate; reduce_range (7-bit weights) avoids it. Speed measured "
        "equal to full range on the VNNI machine (" + _RESULTS + ")"),
    "arm64": Int8Scheme(
        "arm64", "uint8", False,
        "not measured (no ARM machine): argued from ORT's MLAS kernels, which run U8S8 on the "
        "UDOT/I8MM dot-product instructions with int32 accumulation (no saturation, so no "
        "reduce_range); the same U8S8 QDQ graph as x86 keeps one artifact for both"),
}
ISAS = tuple(SCHEMES)


def isa_of(arch: str, features: list[str] | tuple[str, ...] | set[str]) -> str:
    """The ``SCHEMES`` key for a CPU: ``arm64`` for aarch64, ``x86-vnni`` for x86-64 with
    AVX-512 VNNI, AVX-VNNI or AMX-INT8, else ``x86`` (the conservative scheme)."""
    if normalize_arch(arch) == "aarch64":
        return "arm64"
    return "x86-vnni" if set(features) & set(_VNNI) else "x86"


def _quantized_ops(path: Path) -> int:
    """Nodes of a QDQ graph that read a DequantizeLinear output (what ORT fuses into integer
    kernels); 0 means every op stayed float."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return sum(1 for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
               and any(i in dequantized for i in n.input))


def _weights_digest(module: Any) -> str:
    """sha256 of a module's parameters and buffers (names and bytes): a module changed in
    place (pruned, re-calibrated) is exported again."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ session
def _bad_option(key: str, value: Any) -> Any:
    raise ConfigError(f"onnxruntime: runtime option {key}={value!r} is not valid; use one of "
                      "ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL")


class OnnxRuntimeSession(Session):
    """An opened .onnx artifact on the CPU execution provider; ``run`` loops batch-1 calls."""

    def __init__(self, path: Path, threads: int | None = None,
                 runtime_options: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        for key, value in (runtime_options or {}).items():
            if key == "graph_optimization_level":
                options.graph_optimization_level = getattr(
                    ort.GraphOptimizationLevel, str(value), None) or _bad_option(key, value)
            else:  # ORT session config entries, e.g. session.intra_op.allow_spinning=0
                options.add_session_config_entry(str(key), str(value))
        if threads is not None:
            if int(threads) < 1:
                raise ConfigError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = Path(path)
        self.threads: int | None = threads
        self._session = ort.InferenceSession(str(path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        (inp,) = self._session.get_inputs()
        self.input_name: str = inp.name
        self.input_shape: list[int] = [
            d if isinstance(d, int) and d > 0 else (1 if i == 0 else -1)
            for i, d in enumerate(inp.shape)]
        self.output_name: str = self._session.get_outputs()[0].name

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self.output_name], {self.input_name: x})[0]

    def bind(self, x: np.ndarray) -> Callable[[], Any]:
        """The bare inference call on a fixed input (the timing protocol's timed call)."""
        run, names, feed = self._session.run, [self.output_name], {self.input_name: x}
        return lambda: run(names, feed)


# ------------------------------------------------------------------------ calibration reader
class StreamingCalibrationReader:
    """ORT ``CalibrationDataReader`` over a re-iterable ``CalibrationData``.

    Items are pulled one at a time from the stream (never collected into a list). ``rewind``
    restarts the stream; ``set_range`` (used by ORT's strided calibration) restricts the next
    pass to items ``[start, end)``, continuing the stream when the range starts at or after
    where the last pass stopped (ORT asks for consecutive chunks: each image is decoded once,
    not once per chunk before it).
    """

    def __init__(self, data: CalibrationData, input_name: str) -> None:
        self._data = data
        self._input_name = input_name
        self._start, self._end = 0, None
        self._iterator: Iterator[np.ndarray] | None = None
        self._stream: Iterator[np.ndarray] | None = None  # the data, read up to _position
        self._position = 0
        self.served = 0  # items handed to ORT so far (all passes)

    def __len__(self) -> int:
        return len(self._data)

    def _items(self) -> Iterator[np.ndarray]:
        if self._stream is None or self._position > self._start:
            self._stream, self._position = iter(iter_calibration(self._data)), 0
        while self._end is None or self._position < self._end:
            item = next(self._stream, None)
            if item is None:
                return
            self._position += 1
            if self._position > self._start:
                yield item

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iterator is None:
            self._iterator = self._items()
        item = next(self._iterator, None)
        if item is None:
            return None
        self.served += 1
        return {self._input_name: item}

    # ORT's CalibrationDataReader protocol: iteration over get_next
    def __iter__(self) -> StreamingCalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def rewind(self) -> None:
        self._iterator = self._stream = None

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = int(start_index), int(end_index)
        self._iterator = None


# ------------------------------------------------------------------------------------ backend
@dataclass(frozen=True)
class OnnxRuntimeBackend(QuietHooks):
    """ONNX Runtime plugin. ``BACKEND`` is the default instance; variants are made with
    ``dataclasses.replace(BACKEND, ...)``.

    INT8 defaults come from ``SCHEMES`` for the target ISA (``isa``; "auto" = the CPU edgekit
    runs on), chosen from ``benchmarks/results/ort_int8_options.md`` (seed models at their
    published sizes, 2 threads, this Xeon with AVX-512 VNNI + AMX): **QDQ, uint8 activations
    (asymmetric, per tensor) + int8 weights (symmetric, per channel unless
    ``options.per_channel`` is False), every op type ORT quantizes**, after the exact graph
    rewrites of ``_int8_rewrites`` (GELU → one Gelu, spatial Reduce → global pools, channel
    mean → 1×1 Conv) that keep ORT's integer kernels fused. What the measurements ruled out:
    S8S8 (convolutions left unfused, 1.5-3.7x slower), Conv/MatMul/Gemm-only (Add/Mul/Concat/
    Sigmoid in float between extra Q/DQ, 1.3-2.4x slower), QOperator (no faster), per-tensor
    weights (no faster, lower agreement), ORT_ENABLE_EXTENDED sessions (the NHWC/NCHWc layout
    passes are in ALL: 1.3-1.9x slower).

    * x86 with VNNI/AMX: U8S8, full range (no saturation in VNNI dot products).
    * x86 without VNNI (AVX2/AVX-512F): U8S8 with ``reduce_range=True``: ``vpmaddubsw``'s int16
      intermediate can saturate with full-range weights (ORT's quantization guide).
    * ARM64: U8S8 full range, argued (not measured): MLAS runs it on UDOT/I8MM with int32
      accumulation; one graph for both device families.

    ``activation_type`` / ``reduce_range`` set explicitly override the scheme; the
    quantization record names the ISA, where it came from and why (``isa``, ``isa_from``,
    ``scheme_basis``) and the rewrites made.

    Known accuracy traps, left as options (the default excludes nothing): depthwise
    convolutions need per-channel weights (on by default); attention gates (CBAM/SE
    ``Sigmoid`` → ``Mul``) can be kept in float with ``exclude_op_types=("Sigmoid", "Mul")``
    or by node name with ``exclude_nodes``.
    """

    name: str = NAME
    extra: str = "onnxruntime"
    suffix: str = ".onnx"
    precisions: tuple[str, ...] = ("fp32", "int8")
    sources: tuple[str, ...] = ("torch", "torchscript", "onnx", "keras")
    isa: str = "auto"  # a SCHEMES key, or "auto": the CPU edgekit runs on (isa_of)
    activation_type: str | None = None  # "uint8" (QUInt8) or "int8" (QInt8); None: the scheme's
    reduce_range: bool | None = None  # None: the scheme's
    rewrites: bool = True  # the exact fast-path rewrites of _int8_rewrites
    exclude_op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    percentile: float = 99.999  # ORT's default for method "percentile"

    # facts (class constants, not dataclass fields: a variant is the same runtime)
    label = "ort"
    title = "ONNX Runtime"
    colour = "#ff7f0e"
    packages = (("onnxruntime", "onnxruntime"),)
    module = "onnxruntime"
    converter_packages = ("onnx", "onnxruntime")
    slow_export = False
    int8_as_fp16_on_arm = False
    activation_ranges = "global"  # ORT's MinMaxCalibrater (benchmarks: int8_draws_mnv2_ranges)

    # --------------------------------------------------------------------------- protocol
    def available(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return _INSTALL_HINT
        return None

    def fast_path(self, path: Path, precision: str) -> FastPath:
        """INT8: the float ops ORT's optimizer leaves between or after the QDQ nodes
        (``unfused_ops``: each pays a float kernel plus the (de)quantization around it).
        Float artifacts are not checked: ORT has no separate fast path for them."""
        if precision != "int8":
            return FastPath(status="unknown", checked="onnxruntime: only INT8 artifacts are "
                                                      "checked (unfused QDQ)")
        import onnxruntime as ort

        off = tuple(OffPathOp(op=r["op"], node=r["node"], reason=r["reason"])
                    for r in unfused_ops(path))
        return FastPath(status="off" if off else "clean", ops=off,
                        checked=f"ONNX Runtime {ort.__version__} CPU, ORT_ENABLE_ALL: float ops "
                                "left between or after QDQ nodes in the optimized graph")

    def open(self, path: Path, threads: int | None = None,
             options: dict[str, Any] | None = None) -> OnnxRuntimeSession:
        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendUnavailable(f"onnxruntime is not installed: {_INSTALL_HINT}")
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such ONNX artifact")
        return OnnxRuntimeSession(path, threads, options)

    def export(self, request: ExportRequest) -> Artifact:
        self._validate(request)
        ort_method = self._ort_method(request) if request.precision == "int8" else None
        model = request.model
        out_dir = Path(request.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        dest = out_dir / f"{request.stem}{self.suffix}"
        notes: list[str] = []
        quantization: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as tmp_name:
            tmp = Path(tmp_name)
            fp32 = tmp / "model.fp32.onnx"
            if model.kind in ("torch", "torchscript"):
                input_name, input_shape = self._from_torch(model, fp32)
            else:
                input_name, input_shape = self._from_onnx(model, fp32, notes)
            final = fp32
            if request.precision == "int8":
                final = tmp / "model.int8.onnx"
                quantization = self._quantize(request, fp32, final, tmp, input_name, ort_method,
                                              notes)
            self._check_runs(final)
            try:
                shutil.copyfile(final, dest)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
        notes.append("Runs on ONNX Runtime's CPUExecutionProvider (x86-64 and ARM64 wheels); "
                     f"ONNX opset {self._opset(dest)}, static input shape {input_shape}.")
        return Artifact(backend=self.name, precision=request.precision, path=dest, files=[dest],
                        input_name=input_name, input_shape=list(input_shape),
                        input_dtype="float32", output_dtype="float32",
                        layout=model.spec.layout, quantization=quantization, notes=notes)

    # ------------------------------------------------------------------------- validation
    def _validate(self, request: ExportRequest) -> None:
        check_request(self, request)
        kind = request.model.kind
        if self.isa != "auto" and self.isa not in SCHEMES:
            raise ConfigError(f"Backend {self.name!r}: isa must be 'auto' or one of "
                              f"{', '.join(SCHEMES)}, got {self.isa!r}")
        if self.activation_type is not None and self.activation_type not in _ACTIVATION_TYPES:
            raise ConfigError(f"Backend {self.name!r}: activation_type must be one of "
                              f"{', '.join(_ACTIVATION_TYPES)}, got {self.activation_type!r}")
        if request.options.int8_io:
            raise ConfigError(f"Backend {self.name!r} has float32 input/output only; int8_io is "
                              "a TFLite option")
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if kind in ("torch", "torchscript"):
            missing += [m for m in ("torch", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendUnavailable(f"Exporting with {self.name!r} needs {', '.join(missing)}: "
                                     f"{_EXPORT_HINT}")

    def scheme(self) -> tuple[Int8Scheme, str]:
        """The INT8 scheme this variant quantizes with, and where its ISA came from."""
        if self.isa != "auto":
            return SCHEMES[self.isa], "backend option isa"
        info = _host_cpu()
        return SCHEMES[isa_of(info["arch"], info["features"])], "this machine's CPU (isa=auto)"

    def _ort_method(self, request: ExportRequest) -> str:
        method = request.options.method
        if method not in _METHODS:
            raise ConfigError(f"Calibration method {method!r} is not supported by backend "
                              f"{self.name!r}; supported: {', '.join(_METHODS)} "
                              f"(edgekit knows {', '.join(CALIBRATION_METHODS)})")
        return _METHODS[method]

    # ----------------------------------------------------------------------- fp32 sources
    def _from_torch(self, model: Any, path: Path) -> tuple[str, tuple[int, ...]]:
        import onnx
        import torch

        shape = tuple(model.spec.input_shape(1))
        module = model.module
        key = (shape, model.kind, _weights_digest(module))
        cached = _EXPORTED.get(module)
        if cached is not None and cached[0] == key:
            path.write_bytes(cached[1])
            return INPUT_NAME, shape
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                # TorchScript has no torch.export graph: it takes the TorchScript exporter
                torch.onnx.export(module, (torch.zeros(shape),), str(path),
                                  dynamo=model.kind != "torchscript",
                                  opset_version=OPSET, external_data=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  verbose=False)
        except Exception as exc:  # the exporter raises its own error classes
            raise ExportError(_describe_exporter_failure(exc, model.name)) from exc
        finally:
            module.train(was_training)
        proto = onnx.load(str(path))
        _strip_metadata(proto)
        _check_model(proto, model.name)
        onnx.save(proto, str(path))
        _EXPORTED[module] = (key, path.read_bytes())
        return INPUT_NAME, shape

    def _from_onnx(self, model: Any, path: Path, notes: list[str]) -> tuple[str, tuple[int, ...]]:
        import onnx

        source = onnx_source_file(model)  # a Keras source is converted (tf2onnx) on first use
        try:
            proto = onnx.load(str(source))
        except Exception as exc:
            raise DataError(f"{source}: not a readable ONNX model ({exc})") from exc
        input_name, shape, fixed = _fit_input(proto, tuple(model.spec.input_shape(1)), source)
        if fixed:
            notes.append(f"The source's symbolic input dims {fixed} were fixed to "
                         f"{list(shape)} (static batch-1 artifact).")
        _check_model(proto, str(source))
        onnx.save(proto, str(path))
        return input_name, shape

    # ------------------------------------------------------------------------------- int8
    def _quantize(self, request: ExportRequest, fp32: Path, out: Path, tmp: Path,
                  input_name: str, ort_method: str | None, notes: list[str]) -> dict[str, Any]:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        pre = tmp / "model.pre.onnx"
        preprocess = _pre_process(fp32, pre, notes)
        rewrites = _int8_rewrites(pre) if self.rewrites else {}
        scheme, isa_from = self.scheme()
        act_type = self.activation_type or scheme.activation_type
        reduce_range = scheme.reduce_range if self.reduce_range is None else self.reduce_range
        calibration = request.calibration
        assert calibration is not None and ort_method is not None
        count = len(calibration)
        reader = StreamingCalibrationReader(calibration, input_name)
        extra: dict[str, Any] = {}
        if ort_method != "MinMax":
            extra["CalibPercentile"] = float(self.percentile)
        # Collect chunk by chunk (bounded RAM: ORT keeps every image's outputs of a chunk);
        # ranges/histograms are merged after each chunk, and the reader goes on from chunk to
        # chunk. Not CalibMaxIntermediateOutputs: ORT 1.31's MinMaxCalibrater drops every full
        # chunk without computing its ranges. "mean" ranges take one pass: ORT's moving average
        # is the mean over the images of a pass but an EMA across chunks (its RAM grows with
        # the images, two scalars per tensor and image: ~60 KB per image on a MobileNetV2).
        ranges = request.options.ranges(self.activation_ranges)
        stride = _chunk_stride(count, CALIBRATION_CHUNK)
        if ranges == "mean":
            extra["CalibMovingAverage"] = True
        elif stride < count:
            extra["CalibStridedMinMax"] = stride
        graph = onnx.load(str(pre)).graph
        excluded = list(self.exclude_nodes)
        excluded += [n.name for n in graph.node if n.op_type in self.exclude_op_types]
        keep = list(request.options.keep_float)
        unknown = sorted(set(keep) - {n.name for n in graph.node})
        if unknown:
            raise ConfigError(f"onnxruntime: cannot keep {', '.join(unknown)} in float: no such "
                              f"node in {request.model.name} (names come from "
                              "layer_sensitivity)")
        excluded += [k for k in _keep_float_nodes(graph, keep) if k not in excluded]
        activation = getattr(QuantType, _ACTIVATION_TYPES[act_type])
        try:
            # ORT's histogram calibrators print progress with print(): keep stdout clean
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ,
                                per_channel=bool(request.options.per_channel),
                                reduce_range=reduce_range, activation_type=activation,
                                weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None,
                                calibrate_method=getattr(CalibrationMethod, ort_method),
                                extra_options=extra)
        except EdgekitError:  # e.g. a DataError from the calibration stream
            raise
        except Exception as exc:
            raise ExportError(f"onnxruntime: static INT8 quantization of "
                              f"{request.model.name} failed: {first_line(exc)}") from exc
        if ort_method == "Entropy":
            notes.append("Calibration 'entropy' uses ORT's EntropyCalibrater with its defaults "
                         "(128 histogram bins = 128 quantized bins; quantize_static does not "
                         "forward num_bins), so its KL search has a single candidate and the "
                         "ranges come out as min/max.")
        notes.append(f"INT8 QDQ for ISA {scheme.isa} (from {isa_from}): {act_type} activations "
                     "(asymmetric, per tensor) + int8 weights (symmetric, "
                     f"{'per channel' if request.options.per_channel else 'per tensor'}), "
                     f"reduce_range={reduce_range}, every op type ORT quantizes. Why: "
                     f"{scheme.basis}.")
        made = {k: v for k, v in rewrites.items() if v}
        if made:
            notes.append("Exact rewrites that keep ORT on its integer kernels: "
                         + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in made.items())
                         + " (GELU → com.microsoft.Gelu, spatial Reduce → global pools, "
                         "channel mean → 1×1 Conv).")
        return {
            "format": "QDQ",
            "activation_type": _ACTIVATION_TYPES[act_type],
            "weight_type": "QInt8",
            "per_channel": bool(request.options.per_channel),
            "reduce_range": reduce_range,
            "isa": scheme.isa,
            "isa_from": isa_from,
            "scheme_basis": scheme.basis,
            "op_types": "all ORT quantizes",
            "rewrites": rewrites,
            "calibration_method": request.options.method,
            "activation_ranges": ranges,
            "calibration_images": count,
            "preprocess": preprocess,
            "excluded_nodes": sorted(excluded),
            "keep_float": list(request.options.keep_float),
            "quantized_ops": _quantized_ops(out),
        }

    # ------------------------------------------------------------------------ sensitivity
    def layer_sensitivity(self, request: ExportRequest, int8_path: Path,
                          images: np.ndarray) -> list[LayerError]:
        """Every quantized node of the INT8 (QDQ) artifact at ``int8_path``, ranked by the error
        it adds (``edgekit.quantize.sensitivity``) on ``images`` (a float32 batch in the
        spec's layout; no labels).

        ORT's QDQ quantizes a Conv/Gemm's OUTPUT as well as its inputs, so a node's error is
        taken where its consumers read it: after the output's QuantizeLinear → DequantizeLinear
        (a Relu that ORT folded into the Conv is then accounted for, as in the float graph).
        ``added`` = that error minus the largest such error of its inputs: the damage done by
        its weights and its output quantization, which keeping it in float (``keep_float``:
        the node and the consumers of its output, see ``_keep_float_nodes``) removes. The float
        reference is ``request``'s model re-exported and pre-processed exactly as for
        quantization, so tensor names match; both graphs run with graph optimisations off."""
        import onnx

        with tempfile.TemporaryDirectory(prefix="edgekit-ort-sens-") as tmp_name:
            tmp = Path(tmp_name)
            fp32, pre = tmp / "model.fp32.onnx", tmp / "model.pre.onnx"
            if request.model.kind in ("torch", "torchscript"):
                self._from_torch(request.model, fp32)
            else:
                self._from_onnx(request.model, fp32, [])
            _pre_process(fp32, pre, [])
            if self.rewrites:  # the graph _quantize quantized: same nodes, same tensor names
                _int8_rewrites(pre)
            float_proto = onnx.load(str(pre))
            quant_proto = onnx.load(str(int8_path))
            float_names = ({o for n in float_proto.graph.node for o in n.output if o}
                           | {i.name for i in _graph_inputs(float_proto)})
            nodes, pairs = _qdq_view(quant_proto, float_names)
            keys = sorted(pairs)
            acc = ErrorAccumulator.over(
                images, keys, _probe(float_proto, [pairs[k][1] for k in keys], tmp / "float.onnx"),
                _probe(quant_proto, [pairs[k][0] for k in keys], tmp / "quant.onnx"))
        rows = []
        for node, inputs in nodes:
            out = max([e for e in (acc.error(o) for o in node.output) if e is not None],
                      default=None)
            if out is None:
                continue
            before = max([acc.error(t) or 0.0 for t in inputs] + [0.0])
            rows.append(LayerError(node.name, node.op_type, out, out - before))
        return rank(rows)

    # ------------------------------------------------------------------------ verification
    def _check_runs(self, path: Path) -> None:
        """Open the artifact with ORT: an operator ORT lacks fails here, named."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(path), sess_options=options,
                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(_describe_ort_failure(exc, path)) from exc

    @staticmethod
    def _opset(path: Path) -> int:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


# ------------------------------------------------------------------------------------ helpers
@functools.cache
def _host_cpu() -> dict[str, Any]:
    """This machine's arch and ISA features (read once)."""
    info = cpu_info()
    return {"arch": info["arch"], "features": list(info["features"])}


def _pre_process(fp32: Path, pre: Path, notes: list[str]) -> str:
    """ORT's quantization pre-processing of ``fp32`` into ``pre``; what it did, in words."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(pre))
        return "symbolic shape inference + optimization + ONNX shape inference"
    except Exception as exc:
        # ORT's symbolic shape inference loses the output shape of ReduceMax/ReduceMin/...
        # at opset >= 18 (axes became an input; onnxruntime PR #32376), which CBAM's
        # channel/spatial max pools hit. Static-shape CNNs lose nothing without it: ONNX
        # shape inference still runs, and so does the ORT optimizer.
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        notes.append("ORT quant pre-processing ran without symbolic shape inference, which "
                     f"failed on this graph ({type(exc).__name__}: known ORT issue with "
                     "Reduce* ops at opset >= 18); ONNX shape inference covered the static "
                     "shapes.")
        return "optimization + ONNX shape inference (symbolic shape inference failed)"


def _int8_rewrites(path: Path) -> dict[str, int]:
    """Exact graph rewrites, in place, that keep the INT8 graph on ORT's integer fast path
    (measured in ``benchmarks/results/ort_int8_options.md``); how many of each were made.

    * ``gelu``: the exported exact GELU (``Div(x, √2) → Erf → Add 1 → Mul x → Mul ½``, either
      Mul order) becomes one ``com.microsoft.Gelu``. Quantized as exported, the chain costs a
      float Div and Erf plus QLinearAdd/QLinearMul with (de)quantization between each (ORT's
      own Gelu fusion cannot match once each consumer of ``x`` has its own DequantizeLinear);
      fused, it is one float kernel between a DequantizeLinear and a QuantizeLinear.
    * ``global_pool``: ``ReduceMean``/``ReduceMax`` over H and W of an NCHW tensor (keepdims) —
      squeeze-excitation and CBAM pooling — become ``GlobalAveragePool`` / a ``MaxPool`` with
      an H×W kernel, which ORT runs on uint8 (QLinearGlobalAveragePool, NhwcMaxPool) instead of
      dequantizing the feature map and reducing in float.
    * ``channel_mean``: ``ReduceMean`` over the channels (keepdims; spatial attention) becomes
      a 1×1 ``Conv`` with C weights of 1/C, an integer QLinearConv (the weights quantize
      exactly: per-channel scale (1/C)/127).
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    shapes: dict[str, list[int]] = {}
    for v in [*graph.value_info, *graph.input, *graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def scalar(name: str, value: float, tol: float = 1e-4) -> bool:
        c = consts.get(name)
        return c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) < tol

    def only(tensor: str, op: str) -> Any:
        c = consumers.get(tensor, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    def other(node: Any, tensor: str) -> str:
        rest = [t for t in node.input if t != tensor]
        return rest[0] if len(rest) == 1 else ""

    replace: dict[int, Any] = {}  # id(first node of a pattern) -> its replacement
    drop: set[int] = set()
    inits: list[Any] = []
    counts = {"gelu": 0, "global_pool": 0, "channel_mean": 0}
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or not ((div.op_type == "Div" and scalar(div.input[1], 2 ** 0.5))
                               or (div.op_type == "Mul" and scalar(div.input[1], 2 ** -0.5))):
            continue
        x = div.input[0]
        add = only(erf.output[0], "Add")
        if add is None or not scalar(other(add, erf.output[0]), 1.0):
            continue
        mul = only(add.output[0], "Mul")
        if mul is None or only(div.output[0], "Erf") is None:
            continue
        partner = other(mul, add.output[0])
        if partner == x or scalar(partner, 0.5):  # (x * (1 + erf)) * 0.5, x * (0.5 * (1 + erf))
            last = only(mul.output[0], "Mul")
            rest = other(last, mul.output[0]) if last is not None else ""
            if not (rest == x if partner != x else scalar(rest, 0.5)):
                continue
            chain, out = [div, erf, add, mul, last], last.output[0]
        else:  # (x * 0.5) * (1 + erf)
            half = producer.get(partner)
            if (half is None or half.op_type != "Mul" or x not in half.input
                    or not scalar(other(half, x), 0.5) or only(partner, "Mul") is None):
                continue
            chain, out = [div, erf, add, half, mul], mul.output[0]
        if any(id(n) in drop for n in chain):
            continue
        drop.update(id(n) for n in chain)
        replace[id(chain[0])] = helper.make_node("Gelu", [x], [out], domain="com.microsoft",
                                                 name=f"{erf.name or out}_gelu")
        counts["gelu"] += 1
    for node in graph.node:
        if node.op_type not in ("ReduceMean", "ReduceMax") or id(node) in drop:
            continue
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        axes_attr = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        axes = axes_attr if axes_attr is not None else (
            consts[node.input[1]].reshape(-1).tolist()
            if len(node.input) > 1 and node.input[1] in consts else None)
        shape = shapes.get(node.input[0])
        if not keepdims or axes is None or shape is None or len(shape) != 4:
            continue
        axes = sorted(int(a) % 4 for a in axes)
        name = node.name or node.output[0]
        if axes == [2, 3]:
            new = (helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]],
                                    name=f"{name}_gap") if node.op_type == "ReduceMean" else
                   helper.make_node("MaxPool", [node.input[0]], [node.output[0]],
                                    name=f"{name}_gmp", kernel_shape=shape[2:]))
            counts["global_pool"] += 1
        elif axes == [1] and node.op_type == "ReduceMean":
            weight = f"{name}_mean_weight"
            inits.append(numpy_helper.from_array(
                np.full((1, shape[1], 1, 1), 1.0 / shape[1], np.float32), weight))
            new = helper.make_node("Conv", [node.input[0], weight], [node.output[0]],
                                   name=f"{name}_conv", kernel_shape=[1, 1])
            counts["channel_mean"] += 1
        else:
            continue
        drop.add(id(node))
        replace[id(node)] = new
    if not drop:
        return counts
    nodes = [replace.get(id(n), n) for n in graph.node
             if id(n) in replace or id(n) not in drop]
    used = {t for n in nodes for t in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(nodes)
    used |= {i.name for i in graph.input}  # an initializer listed as an input stays
    kept = [i for i in graph.initializer if i.name in used]  # the patterns' constants go too:
    del graph.initializer[:]  # ORT warns about every unused initializer it meets
    graph.initializer.extend(kept + inits)
    if counts["gelu"] and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(proto, str(path))
    return counts


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _qdq_view(proto: Any, float_names: set[str]
              ) -> tuple[list[tuple[Any, list[str]]], dict[str, tuple[str, str]]]:
    """The quantized compute nodes of a QDQ graph and what to compare.

    Nodes: every named non-Q/DQ node that reads a DequantizeLinear output or whose output is
    quantized, with the tensors its activation inputs were made from (DequantizeLinear ←
    QuantizeLinear ← tensor; a DequantizeLinear of an initializer is a weight). Pairs: for each
    tensor a compute node (or the graph input) produces, ``tensor → (what its consumers read
    in the QDQ graph — the DequantizeLinear output when it is quantized —, the float graph's
    tensor of the same value)``."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in proto.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def read_as(tensor: str) -> str:
        for q in consumers.get(tensor, []):
            if q.op_type == "QuantizeLinear":
                for dq in consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return dq.output[0]
        return tensor

    pairs: dict[str, tuple[str, str]] = {}
    tensors = [i.name for i in _graph_inputs(proto)]
    tensors += [o for n in proto.graph.node if n.op_type not in _QDQ for o in n.output if o]
    for t in tensors:
        seen = read_as(t)
        ref = t if t in float_names else seen if seen in float_names else None
        if ref is not None:
            pairs[t] = (seen, ref)
    found = []
    for node in proto.graph.node:
        if node.op_type in _QDQ or not node.name:
            continue
        quantized = any(read_as(o) != o for o in node.output)
        sources = []
        for tensor in node.input:
            dq = producer.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                if tensor in pairs:
                    sources.append(tensor)
                continue
            quantized = True
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                sources.append(q.input[0])
        if quantized:
            found.append((node, sources))
    return found, pairs


# ops through which ORT's QDQ carries one quantization of a tensor (a Conv → Relu's Relu is
# folded away; MaxPool/Reshape/... reuse their input's scale)
_PASS_THROUGH = ("Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze",
                 "Unsqueeze", "Identity")


def _keep_float_nodes(graph: Any, keep: list[str]) -> list[str]:
    """The nodes to exclude so that each of ``keep`` runs in float with float inputs and a
    float output: the node, the producers of its inputs (ORT quantizes a Conv's output at the
    Conv) and the consumers of its output (they quantize their inputs), following
    pass-through ops (Relu, MaxPool, Reshape …) that share one quantization of a tensor."""
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    by_name = {n.name: n for n in graph.node}

    def forward(node: Any) -> list[Any]:
        return [c for o in node.output for c in consumers.get(o, [])]

    def backward(node: Any) -> list[Any]:
        return [producer[t] for t in node.input if t in producer]

    out: list[str] = []
    for name in keep:
        for step in (forward, backward):
            frontier, seen = [by_name[name]], set()
            while frontier:
                node = frontier.pop()
                if id(node) in seen or node.op_type in _QDQ:
                    continue
                seen.add(id(node))
                if node.name and node.name not in out:
                    out.append(node.name)
                if node.name == name or node.op_type in _PASS_THROUGH:
                    frontier += step(node)
    return out


def _probe(proto: Any, names: list[str], path: Path) -> Callable[[np.ndarray], list[Any]]:
    """Run ``proto`` with ``names`` made graph outputs, graph optimisations off (so every
    tensor is computed as the graph says): a function of one input row."""
    import onnx
    import onnxruntime as ort

    have = {o.name for o in proto.graph.output}
    proto.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names if n not in have])
    onnx.save(proto, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda row: session.run(names, {input_name: row})


# ------------------------------------------------------------------- off the fast path
_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def unfused_ops(path: Path, graph_optimization_level: str = "ORT_ENABLE_ALL"
                ) -> list[dict[str, str]]:
    """The ops of a QDQ artifact that ORT leaves OFF its integer fast path: what still runs in
    float in the graph ORT actually executes.

    The artifact is optimized as a CPU session at ``graph_optimization_level`` (ORT's default,
    ``ORT_ENABLE_ALL``, is what ``open`` uses) and the optimized graph is saved
    (``optimized_model_filepath``) and read back. ORT's QDQ fusions replace a
    DequantizeLinear → op → QuantizeLinear group by one integer kernel (QLinearConv,
    QLinearAdd, QGemm …); whatever float op still reads a DequantizeLinear output, or lies on
    a float path from a DequantizeLinear to a QuantizeLinear, was not fused: it pays a float
    kernel plus the (de)quantization around it. Each row: ``op`` (op type), ``node`` (node
    name in the optimized graph; ORT keeps the names of nodes it did not fuse) and ``reason``.
    A float artifact (no QDQ) gives ``[]``; so does a fully fused one."""
    import onnx
    import onnxruntime as ort

    if graph_optimization_level not in _LEVELS:
        _bad_option("graph_optimization_level", graph_optimization_level)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ONNX artifact")
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-opt-") as tmp_name:
        optimized = Path(tmp_name) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   graph_optimization_level)
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3  # "hardware specific optimizations" warning at ALL
        try:
            ort.InferenceSession(str(path), sess_options=options,
                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(_describe_ort_failure(exc, path)) from exc
        graph = onnx.load(str(optimized), load_external_data=False).graph
    return _float_in_quantized(graph)


def _float_in_quantized(graph: Any) -> list[dict[str, str]]:
    """Float compute nodes of an (optimized) graph that touch its quantized region: readers of
    a DequantizeLinear output, and nodes on a float path from a DequantizeLinear to a
    QuantizeLinear. Graph order."""
    consumers: dict[str, list[Any]] = {}
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    compute = [n for n in graph.node if n.op_type not in _QDQ]

    def reach(start: list[Any], step: Callable[[Any], list[Any]]) -> set[int]:
        seen: set[int] = set()
        frontier = list(start)
        while frontier:
            node = frontier.pop()
            if id(node) in seen or node.op_type in _QDQ:
                continue
            seen.add(id(node))
            frontier += step(node)
        return seen

    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    readers = [n for n in compute if any(t in dq_out for t in n.input)]
    into_q = [producer[n.input[0]] for n in graph.node
              if n.op_type == "QuantizeLinear" and n.input and n.input[0] in producer]
    downstream = reach(readers, lambda n: [c for o in n.output for c in consumers.get(o, [])])
    upstream = reach(into_q, lambda n: [producer[t] for t in n.input if t in producer])
    direct = {id(n) for n in readers}
    rows = []
    for node in compute:
        key = id(node)
        if key in downstream and key in upstream:
            reason = ("float kernel between DequantizeLinear and QuantizeLinear (ORT did not "
                      "fuse it into an integer kernel)")
        elif key in direct:
            reason = "float kernel on a dequantized input (the quantized region ends here)"
        else:
            continue
        rows.append({"op": node.op_type if node.domain in ("", "ai.onnx")
                     else f"{node.domain}.{node.op_type}", "node": node.name, "reason": reason})
    return rows


def _chunk_stride(count: int, chunk: int) -> int:
    """The largest divisor of ``count`` that is <= ``chunk`` (ORT's strided calibration
    requires the stride to divide the number of items)."""
    if count <= chunk:
        return count
    return max(d for d in range(1, chunk + 1) if count % d == 0)


def _strip_metadata(proto: Any) -> None:
    """Drop the exporter's per-node/per-value metadata (stack traces, FX dumps, scopes)."""
    graph = proto.graph
    for node in graph.node:
        del node.metadata_props[:]
    for values in (graph.input, graph.output, graph.value_info):
        for value in values:
            del value.metadata_props[:]
    for init in graph.initializer:
        del init.metadata_props[:]


def _graph_inputs(proto: Any) -> list[Any]:
    initializers = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def _fit_input(proto: Any, expected: tuple[int, ...],
               source: Path) -> tuple[str, tuple[int, ...], list[str]]:
    """Check the single float input against the spec and fix its symbolic dims (in place)."""
    import onnx

    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        raise ConfigError(f"{source}: edgekit exports single-input classifiers; this model has "
                          f"{len(inputs)} inputs ({', '.join(i.name for i in inputs)})")
    if len(proto.graph.output) != 1:
        raise ConfigError(f"{source}: edgekit exports single-output classifiers; this model has "
                          f"{len(proto.graph.output)} outputs")
    value = inputs[0]
    tensor = value.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ConfigError(f"{source}: input {value.name!r} must be float32, got "
                          f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}")
    dims = list(tensor.shape.dim)
    if len(dims) != len(expected):
        raise ConfigError(f"{source}: input {value.name!r} has rank {len(dims)}; the "
                          f"preprocessing spec gives shape {list(expected)}")
    fixed: list[str] = []
    for dim, want in zip(dims, expected, strict=True):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            if dim.dim_value != want:
                have = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                        for d in dims]
                raise ConfigError(f"{source}: input {value.name!r} has shape {have}, which does "
                                  f"not fit the preprocessing spec's {list(expected)} "
                                  "(check the spec's input size and layout)")
        else:
            fixed.append(dim.dim_param or "?")
            dim.Clear()
            dim.dim_value = want
    if fixed:
        out_dims = proto.graph.output[0].type.tensor_type.shape.dim
        if out_dims and not out_dims[0].HasField("dim_value"):
            out_dims[0].Clear()
            out_dims[0].dim_value = 1
        del proto.graph.value_info[:]  # stale symbolic shapes; ORT re-infers them
    return value.name, expected, fixed


def _check_model(proto: Any, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape inference errors
        text = str(exc)
        match = re.search(r"No Op registered for (\S+) with domain_version", text)
        if match:
            raise ExportError(f"onnxruntime: operator {match.group(1)!r} in {what} is not an "
                              f"ONNX operator (opset {OPSET}); onnxruntime cannot run it") from exc
        raise ExportError(f"onnxruntime: {what} is not a valid ONNX model: "
                          f"{first_line(exc)}") from exc


def _describe_exporter_failure(exc: BaseException, what: str) -> str:
    text = "\n".join(str(e) for e in _chain(exc))
    op = None
    for pattern in (r"OpOverload\(op='([\w.]+)'", r"target=torch\.ops\.([\w.]+)",
                    r"\b((?:aten|prims)\.\w+)"):
        match = re.search(pattern, text)
        if match:
            op = re.sub(r"\.(default|Tensor|Scalar|int|dim|out)$", "", match.group(1))
            break
    reason = next((line.split(">: ", 1)[1] for line in text.splitlines()
                   if line.startswith("<class ") and ">: " in line), first_line(exc))
    if op:
        return (f"onnxruntime: torch operator {op!r} in {what} cannot be exported to ONNX "
                f"(opset {OPSET}): {reason[:300]}")
    return f"onnxruntime: ONNX export of {what} failed: {reason[:300]}"


def _describe_ort_failure(exc: BaseException, path: Path) -> str:
    text = str(exc)
    for pattern in (r"([\w.]+:\w+|\w+)\(-?\d+\) is not a registered function/op",
                    r"No Op registered for (\w+)",
                    r"Could not find an implementation for (\w+)\(\d+\)"):
        match = re.search(pattern, text)
        if match:
            return (f"onnxruntime cannot run operator {match.group(1)!r} "
                    f"(CPUExecutionProvider): {first_line(exc)}")
    return f"onnxruntime cannot load the exported model: {first_line(exc)}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


BACKEND = OnnxRuntimeBackend()
