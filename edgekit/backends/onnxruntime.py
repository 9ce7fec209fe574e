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
      graph optimisation — Conv+BN folding — and ONNX shape inference), then ``quantize_static``
      in QDQ format with a streaming ``CalibrationDataReader``. See ``OnnxRuntimeBackend`` for
      the quantization types and why.

Every artifact is opened once with ORT before it is copied to ``out_dir``, so an operator ORT
cannot run fails the export (``ExportError`` naming the operator and "onnxruntime"), not the
device. Work files live in a temporary directory; ``out_dir`` only ever receives the artifact.

``open``/``Session.run`` import only numpy and onnxruntime (no torch, no onnx).
"""

from __future__ import annotations

import contextlib
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
from edgekit.errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    EdgekitError,
    ExportError,
)
from edgekit.quantize.sensitivity import ErrorAccumulator, LayerError, rank

NAME = "onnxruntime"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18  # the torch.export-based exporter implements 18 natively (17 silently becomes 18)
CALIBRATION_CHUNK = 16  # images whose intermediate tensors ORT holds at once during calibration
_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
_ACTIVATION_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
_INSTALL_HINT = "pip install 'edgekit[onnxruntime]'"
_EXPORT_HINT = "pip install 'edgekit[torch,onnxruntime]' (torch, onnx, onnxscript and onnxruntime)"
# The last fp32 ONNX export of each PyTorch module, keyed by input shape, source kind and a digest
# of its weights: the INT8 rescue re-quantizes the same graph up to max_attempts times, and the
# torch.export-based exporter takes seconds to tens of seconds per call.
_EXPORTED: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], bytes]] = (
    weakref.WeakKeyDictionary())


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
    pass to items ``[start, end)``.
    """

    def __init__(self, data: CalibrationData, input_name: str) -> None:
        self._data = data
        self._input_name = input_name
        self._start, self._end = 0, None
        self._iterator: Iterator[np.ndarray] | None = None
        self.served = 0  # items handed to ORT so far (all passes)

    def __len__(self) -> int:
        return len(self._data)

    def _items(self) -> Iterator[np.ndarray]:
        for index, item in enumerate(iter_calibration(self._data)):
            if self._end is not None and index >= self._end:
                return
            if index >= self._start:
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
        self._iterator = None

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = int(start_index), int(end_index)
        self._iterator = None


# ------------------------------------------------------------------------------------ backend
@dataclass(frozen=True)
class OnnxRuntimeBackend(QuietHooks):
    """ONNX Runtime plugin. ``BACKEND`` is the default instance; variants are made with
    ``dataclasses.replace(BACKEND, ...)``.

    Quantization types (defaults): **uint8 activations (asymmetric, per tensor) + int8 weights
    (symmetric, per channel unless ``options.per_channel`` is False), ``reduce_range=False``**
    (U8S8, ORT's recommendation for x86 with VNNI, and supported on ARM64).

    * x86-64 with AVX-512 VNNI (measured here, 1 thread, 128 px): U8S8 QDQ fuses into
      QLinearConv/QLinearAdd throughout and runs 1.5-2.2x faster than fp32 (mobilenetv2
      2.56 -> 1.18 ms, prudensnet 30.4 -> 15.9 ms). S8 activations (``activation_type="int8"``)
      were much worse on x86: ORT's S8->U8 QDQ rewrite left the residual Adds and the convs
      feeding them in float with extra Q/DQ and layout Transposes (mobilenetv2: 15 of 52 convs
      float), and INT8 came out SLOWER than fp32 for 4 of 5 zoo models.
    * ARM64 (Cortex-A72/A76, Graviton): MLAS runs U8S8 with the UDOT dot-product kernels (and
      S8S8 with SDOT; ``activation_type="int8"`` is the option to benchmark on an ARM-only
      deployment). One U8S8 artifact serves both device families.
    * x86 WITHOUT VNNI (AVX2/AVX-512F only): U8S8 uses ``vpmaddubsw``, whose int16
      intermediate can saturate; ``reduce_range=True`` (7-bit weights) avoids that at some
      accuracy cost. Not the default: the targets here are VNNI x86 and ARM.

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
    activation_type: str = "uint8"  # "uint8" (QUInt8) or "int8" (QInt8)
    reduce_range: bool = False
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

    # --------------------------------------------------------------------------- protocol
    def available(self) -> str | None:
        if importlib.util.find_spec("onnxruntime") is None:
            return _INSTALL_HINT
        return None

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
        if self.activation_type not in _ACTIVATION_TYPES:
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
        calibration = request.calibration
        assert calibration is not None and ort_method is not None
        count = len(calibration)
        reader = StreamingCalibrationReader(calibration, input_name)
        extra: dict[str, Any] = {}
        if ort_method != "MinMax":
            extra["CalibPercentile"] = float(self.percentile)
        # Collect chunk by chunk (bounded RAM); ranges/histograms are merged after each chunk.
        # Not CalibMaxIntermediateOutputs: ORT 1.31's MinMaxCalibrater drops every full chunk
        # without computing its ranges (only the last count % chunk images counted, and
        # "No data is collected" when count is a multiple of the chunk).
        stride = _chunk_stride(count, CALIBRATION_CHUNK)
        if stride < count:
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
        activation = getattr(QuantType, _ACTIVATION_TYPES[self.activation_type])
        try:
            # ORT's histogram calibrators print progress with print(): keep stdout clean
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ,
                                per_channel=bool(request.options.per_channel),
                                reduce_range=self.reduce_range, activation_type=activation,
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
        act = "uint8" if self.activation_type == "uint8" else "int8"
        notes.append(f"INT8 QDQ: {act} activations (asymmetric, per tensor) + int8 weights "
                     f"(symmetric, {'per channel' if request.options.per_channel else 'per tensor'})"
                     ". x86-64 runs U8S8 QLinearConv (AVX-512 VNNI where present); ARM64 runs "
                     f"it with dot-product kernels. reduce_range={self.reduce_range}: on x86 "
                     "without VNNI (AVX2) U8S8 can saturate; re-export with reduce_range=True "
                     "for such CPUs if accuracy drops.")
        return {
            "format": "QDQ",
            "activation_type": _ACTIVATION_TYPES[self.activation_type],
            "weight_type": "QInt8",
            "per_channel": bool(request.options.per_channel),
            "reduce_range": self.reduce_range,
            "calibration_method": request.options.method,
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
