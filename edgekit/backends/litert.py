"""LiteRT (TFLite) backend: PyTorch → ``.tflite`` with litert-torch, run with the LiteRT interpreter.

Export (workstation, needs ``edgekit[compress]``):

* ``fp32``: ``litert_torch.convert(module, (sample,))``. The artifact takes the NCHW float32 input
  the PyTorch model takes; litert-torch inserts the NCHW→NHWC transpose inside the model.
* ``int8``: PT2E static post-training quantization. ``torch.export`` → ``prepare_pt2e`` with
  litert-torch's ``PT2EQuantizer`` (per-channel symmetric int8 weights, per-tensor affine int8
  activations) → one forward pass per calibration image → ``convert_pt2e`` →
  ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``. litert-torch
  folds the input QUANTIZE and output DEQUANTIZE into the model interface, i.e. it produces
  *integer* I/O. By default edgekit puts a QUANTIZE op in front of the input and a DEQUANTIZE
  op behind the output again (a small flatbuffer edit, below), so callers feed float32 and get
  float32 logits. ``QuantOptions.int8_io=True`` keeps litert-torch's int8 interface and records
  its scale/zero point in ``Artifact.quantization``.
* ``fp16``: the fp32 model with float16 weights (ai-edge-quantizer's ``FLOAT_CASTING``
  weight-only recipe on CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ...): half the weight bytes,
  fp16 weights followed by DEQUANTIZE ops, the layout TFLite's own float16 quantization writes.
  litert-torch 0.10's default converter takes no TFLite converter flags (its
  ``_litert_converter_flags`` only reach the experimental V2 pipeline, which needs a TensorFlow
  newer than 2.21), hence the post-conversion step.

ONNX sources take the same path: ``OnnxSource.torch_module()`` replays the ONNX graph with
PyTorch ops (``edgekit.sources.onnx_torch``), and that module is converted like any PyTorch
source — fp32, fp16 weights, PT2E int8 calibrated on edgekit's images, all offline. An NHWC
source (tf2onnx) keeps its input layout; its one input transpose cancels against the NHWC
convolutions TFLite runs, so no transpose per convolution is added.

Keras sources (``edgekit[keras]``) convert with TensorFlow's ``tf.lite.TFLiteConverter`` instead
(fp32; fp16 weights; int8 full-integer PTQ with float or int8 I/O): see "Keras sources" below.

Runtime (device, ``edgekit[litert]``): ``open`` uses ``ai_edge_litert.interpreter.Interpreter``
(or ``tflite_runtime``) and numpy only — this module never imports torch or litert-torch outside
``export``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import (
    CALIBRATION_METHODS,
    Artifact,
    ExportRequest,
    QuietHooks,
    Session,
    first_line,
    iter_calibration,
)
from edgekit.errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    EdgekitError,
    ExportError,
)
from edgekit.manifest import FastPath, OffPathOp
from edgekit.quantize.sensitivity import ErrorAccumulator, LayerError, rank

RUNTIME_HINT = "pip install 'edgekit[litert]'"
CONVERTER_HINT = "pip install 'edgekit[compress]'"

# Calibration methods the PT2E observers offer: "minmax" → MinMaxObserver, "percentile" →
# HistogramObserver (histogram search for the clipping range with the least quantization error,
# which drops outliers the way percentile calibration does). No KL/entropy observer exists.
_METHODS = ("minmax", "percentile")
# TensorFlow's TFLite converter (Keras sources) calibrates with min/max ranges only.
_KERAS_METHODS = ("minmax",)

# Loggers that talk during ``import litert_torch`` / conversion; raised to ERROR while exporting.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export", "torch.export", "absl",
                  "ai_edge_quantizer")

_INT_TYPES = (np.int8, np.uint8, np.int16)


# ----------------------------------------------------------------------------- runtime side
def _interpreter_class() -> Any:
    """The LiteRT interpreter class, or None if no TFLite runtime is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError:
            return None
    return Interpreter


class LiteRTSession(Session):
    """An opened ``.tflite`` artifact: float32 batch in, float32 logits (N, K) out.

    Integer-I/O models are handled here: the float input is quantized with the model's own input
    scale/zero point and integer outputs are dequantized with the output's.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        interpreter_cls = _interpreter_class()
        if interpreter_cls is None:
            raise BackendUnavailable(f"Backend 'litert' is not installed: {RUNTIME_HINT}")
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: TFLite model not found")
        try:
            self._interp = interpreter_cls(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise DataError(f"{path}: the LiteRT interpreter cannot load it: {exc}") from exc
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise DataError(f"{path}: edgekit runs classifiers with one input and one output; "
                            f"this model has {len(inputs)} input(s), {len(outputs)} output(s)")
        self.path = path
        self.threads = threads
        self.input_name: str = inputs[0]["name"]
        self.input_shape: list[int] = [int(s) for s in inputs[0]["shape"]]
        self._in_index = int(inputs[0]["index"])
        self._out_index = int(outputs[0]["index"])
        self.input_dtype = np.dtype(inputs[0]["dtype"])
        self.output_dtype = np.dtype(outputs[0]["dtype"])
        self._in_q = self._qparams(inputs[0]) if self.input_dtype.kind in "iu" else None
        self._out_q = self._qparams(outputs[0]) if self.output_dtype.kind in "iu" else None
        if self._in_q is not None:
            info = np.iinfo(self.input_dtype)
            self._in_lo, self._in_hi = float(info.min), float(info.max)
            # Multiply by the float32 reciprocal and round half to even, as TFLite's own
            # QUANTIZE kernels (XNNPACK) do: dividing instead flips ties in the last ulp.
            self._in_inv_scale = np.float32(1.0) / self._in_q[0]
            self._scratch = np.empty(self.input_shape, dtype=np.float32)
            self._qbuf = np.empty(self.input_shape, dtype=self.input_dtype)

    @staticmethod
    def _qparams(detail: dict[str, Any]) -> tuple[np.float32, np.float32]:
        scale, zero_point = detail["quantization"]
        if not scale:
            raise DataError(f"integer tensor {detail['name']!r} carries no quantization scale")
        return np.float32(scale), np.float32(zero_point)

    def _run_one(self, row: np.ndarray) -> np.ndarray:
        if self._in_q is None:
            self._interp.set_tensor(self._in_index, row)
        else:  # q = clip(round(x * (1 / scale)) + zero_point), in preallocated buffers
            inv_scale, zp = self._in_inv_scale, self._in_q[1]
            np.multiply(row, inv_scale, out=self._scratch)
            np.rint(self._scratch, out=self._scratch)
            self._scratch += zp
            np.clip(self._scratch, self._in_lo, self._in_hi, out=self._scratch)
            self._qbuf[...] = self._scratch
            self._interp.set_tensor(self._in_index, self._qbuf)
        self._interp.invoke()
        out = self._interp.get_tensor(self._out_index)
        if self._out_q is not None:
            scale, zp = self._out_q
            return (out.astype(np.float32) - zp) * scale
        return out

    def bind(self, x: np.ndarray) -> Callable[[], Any]:
        """The bare ``invoke`` on an input set once (inputs are not overwritten by invoke)."""
        self._run_one(np.ascontiguousarray(x, dtype=np.float32))
        return self._interp.invoke

    def _check_batch(self, batch: np.ndarray) -> None:
        """TFLite artifacts have static shapes: every dimension after N must match."""
        if batch.ndim != len(self.input_shape) or list(batch.shape[1:]) != self.input_shape[1:]:
            raise DataError(f"{self.path.name}: expected a batch of shape "
                            f"(N, {', '.join(map(str, self.input_shape[1:]))}), "
                            f"got {tuple(batch.shape)}")


# ----------------------------------------------------------------------------- the plugin
class LiteRTBackend(QuietHooks):
    """TFLite artifacts for CPU edge devices (Raspberry Pi, ARM boards) via litert-torch."""

    name = "litert"
    extra = "litert"
    suffix = ".tflite"
    precisions = ("fp32", "fp16", "int8")
    sources = ("torch", "torchscript", "onnx", "keras")
    label = "litert"
    title = "LiteRT"
    colour = "#2ca02c"
    packages = (("ai-edge-litert", "ai_edge_litert"), ("tflite-runtime", "tflite_runtime"))
    module = "ai_edge_litert.interpreter"
    converter_packages = ("litert-torch", "ai-edge-litert", "tensorflow")
    slow_export = True  # litert-torch conversions take 4-30 s per model
    int8_as_fp16_on_arm = False
    activation_ranges = "global"  # torchao's MinMaxObserver (benchmarks: int8_draws_mnv2_ranges)

    def source_hint(self, kind: str) -> str:
        return _SOURCE_HINTS.get(kind, "")

    def available(self) -> str | None:
        return None if _interpreter_class() is not None else RUNTIME_HINT

    def open(self, path: Path, threads: int | None = None,
             options: dict[str, Any] | None = None) -> LiteRTSession:
        if options:
            raise ConfigError(f"litert: runtime options are not supported (got "
                              f"{', '.join(map(str, options))}); LiteRT takes only a thread count")
        return LiteRTSession(Path(path), threads)

    def export(self, request: ExportRequest) -> Artifact:
        _check_request(request)
        if getattr(request.model, "kind", None) == "keras":
            return _export_keras(request)
        loaded = request.model
        out_dir = Path(request.out_dir)
        with _quiet():
            litert_torch, torch = _import_converter()
            source_module = _torch_module(loaded)
            module, wide = xnnpack_fit(source_module, torch,
                                       symmetric=request.precision != "int8")
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{request.stem}{self.suffix}"
            shape = tuple(loaded.spec.input_shape(1))
            rng = np.random.default_rng(request.options.seed)
            sample = (torch.from_numpy(rng.random(shape, dtype=np.float32)),)
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(request.options.seed)
                    content, quant, notes = _convert(litert_torch, torch, module, sample,
                                                     request)
            except EdgekitError:  # already explained
                raise
            except Exception as exc:  # noqa: BLE001 - every converter failure becomes one error
                raise _conversion_error(exc, loaded, request.precision) from exc
        path.write_bytes(bytes(content))
        details = _describe(path)
        if request.precision == "int8":
            quant = {**quant, "quantized_ops": details["quantized_ops"]}
        if request.precision == "int8" and request.options.int8_io:
            quant = {**quant, "input": details["input_q"], "output": details["output_q"]}
        notes = (_notes(request, details)
                 + _fit_note(wide, source_module, request.precision != "int8") + notes)
        return Artifact(
            backend=self.name, precision=request.precision, path=path, files=[path],
            input_name=details["input_name"], input_shape=list(shape),
            input_dtype=details["input_dtype"], output_dtype=details["output_dtype"],
            layout=loaded.spec.layout, quantization=quant, notes=notes)


    def fast_path(self, path: Path, precision: str) -> FastPath:
        """The ops of a ``.tflite`` that run off XNNPACK's fast path here (``_fast_path``)."""
        if _interpreter_class() is None:
            return FastPath(status="unknown", checked=f"no LiteRT runtime: {RUNTIME_HINT}")
        return _fast_path(Path(path), precision)

    def layer_sensitivity(self, request: ExportRequest, int8_path: Path,
                          images: np.ndarray) -> list[LayerError]:
        """The quantized layers of a PyTorch source's INT8 export, ranked by the error they add
        (``edgekit.quantize.sensitivity``) on ``images`` (float32, the spec's layout).

        Measured in PyTorch, not on the ``.tflite`` at ``int8_path``: ``request`` is quantized
        again exactly as the export does it (same calibration, seed and ``keep_float``) and the
        converted PT2E graph — the torch reference of what the ``.tflite`` computes — runs next
        to the float graph it was made from (same node names). A layer's error is taken where
        its consumers read it (after its fused ReLU and the QUANTIZE/DEQUANTIZE of its output);
        ``added`` is that minus the largest error of its inputs as read: the damage done by its
        weights and output quantization, which ``keep_float`` (the layer, the producers of its
        inputs and the consumers of its output left unannotated) removes. Keras sources
        (TensorFlow's converter) have no per-layer analysis: an empty list."""
        if getattr(request.model, "kind", None) == "keras":
            return []
        _check_request(request)
        return _sensitivity(request, np.asarray(images, dtype=np.float32))


BACKEND = LiteRTBackend()

# Why a source kind litert does not take cannot reach it (``source_hint``).
_SOURCE_HINTS: dict[str, str] = {}


# ----------------------------------------------------------------------------- export helpers
def _check_request(request: ExportRequest) -> None:
    """Refuse impossible requests before importing anything heavy (PyTorch and Keras sources)."""
    loaded = request.model
    kind = str(getattr(loaded, "kind", "torch"))
    source = getattr(loaded, "source", "?")
    keras = kind == "keras"
    if keras:
        if getattr(loaded, "keras", None) is None:
            raise ConfigError(f"Backend 'litert': the Keras source {source} carries no loaded "
                              "Keras model")
    elif kind == "onnx":
        if getattr(loaded, "onnx_file", lambda: None)() is None:
            raise ConfigError(f"Backend 'litert': the ONNX source {source} names no ONNX file")
    elif kind not in ("torch", "torchscript") or getattr(loaded, "module", None) is None:
        raise ConfigError(
            f"Backend 'litert' cannot convert the {kind} source ({source}): litert-torch "
            "converts a PyTorch nn.Module through torch.export (a checkpoint or .pt2 source).")
    if request.precision not in BACKEND.precisions:
        raise ConfigError(f"Backend 'litert' does not offer precision {request.precision!r} "
                          f"(it offers {', '.join(BACKEND.precisions)})")
    opts = request.options
    if opts.int8_io and request.precision != "int8":
        raise ConfigError(f"int8_io (integer input/output tensors) needs precision 'int8', "
                          f"not {request.precision!r}")
    if request.precision != "int8":
        return
    if opts.method not in (_KERAS_METHODS if keras else _METHODS):
        raise ConfigError(_method_refusal(opts.method, keras))
    if keras and opts.ranges(BACKEND.activation_ranges) == "mean":
        raise ConfigError("activation_ranges 'mean' is not supported by backend 'litert' for "
                          "Keras sources: TensorFlow's TFLite converter takes the min/max over "
                          "all calibration images ('global')")
    if request.calibration is None or len(request.calibration) == 0:
        what = ("the TFLite converter's representative dataset" if keras
                else "static PT2E quantization")
        raise ConfigError(f"Backend 'litert' needs calibration data for int8 ({what}): pass "
                          "preprocessed images, e.g. --data DIR")


def _torch_module(loaded: Any) -> Any:
    """The PyTorch module litert-torch converts: the source's own, or an ONNX (or TorchScript,
    exported to ONNX) source's graph replayed with PyTorch ops (``torch_module()``)."""
    kind = getattr(loaded, "kind", "torch")
    if kind not in ("onnx", "torchscript"):
        return loaded.module.eval()
    try:
        return loaded.torch_module()
    except Exception as exc:  # noqa: BLE001 - every failure of the step becomes one error
        why = str(exc) if isinstance(exc, EdgekitError) else first_line(exc, None).strip()[:500]
        what = "ONNX" if kind == "onnx" else "TorchScript (through ONNX)"
        raise ExportError(f"Backend 'litert': converting the {what} source "
                          f"{getattr(loaded, 'source', '?')} to PyTorch for litert-torch "
                          f"failed: {why}. Use the onnxruntime or openvino backends for this "
                          "model.") from exc


def _symbolic_dims(loaded: Any) -> list[str]:
    """An ONNX source's symbolic input dims the static TFLite artifact fixes."""
    return list(getattr(loaded.torch_module(), "symbolic_dims", []))


def _method_refusal(method: str, keras: bool) -> str:
    """Why litert cannot calibrate with ``method`` (TensorFlow's converter for Keras sources,
    litert-torch's PT2E observers for PyTorch ones)."""
    if keras:
        return (f"Calibration method {method!r} is not supported by backend 'litert' for Keras "
                "sources: TensorFlow's TFLite converter calibrates activation ranges with min/max "
                "only. Use: " + ", ".join(_KERAS_METHODS))
    known = ("" if method in CALIBRATION_METHODS
             else f" ({method!r} is not a calibration method edgekit knows)")
    return (f"Calibration method {method!r} is not supported by backend 'litert'{known}: "
            "litert-torch's PT2E quantizer offers 'minmax' (MinMaxObserver) and 'percentile' "
            "(HistogramObserver, a histogram search for the least-error clipping range); it "
            "has no entropy/KL observer. Use one of: " + ", ".join(_METHODS))


# ----------------------------------------------------------------------------- XNNPACK fit
# XNNPACK (LiteRT's CPU delegate) has depthwise-convolution micro-kernels for up to 25 taps
# (5×5); a larger depthwise kernel runs in a generic path that is slower than TFLite's own
# built-in kernel. Measured here (x86, 2 threads, 64×64×128): fp32 3×3 0.8 ms, 5×5 1.1 ms,
# 1×7 0.8 ms, 7×7 18 ms, 9×9 28 ms; PruDensNet's six 7×7 depthwise layers made its INT8 TFLite
# 3.6× slower under XNNPACK than without it (issue 18). So edgekit hands litert-torch each
# larger depthwise convolution as a sum of pieces of at most 25 taps each: the same function
# (exact in fp32), every piece on a fast kernel. A same-padded odd kernel is split into row sets
# symmetric about its centre (7×7: rows 2-4, rows 1 and 5 dilated 4, rows 0 and 6 dilated 6),
# each a same-padded conv of its own; other kernels into bands of consecutive rows (7×7: rows
# 0-2, 3-5, 6) read from the input padded once, which adds a PAD and a SLICE per band. The float
# exports (fp32, fp16) use the sets: PruDensNet 256's fp32 TFLite took 0.84-0.88× the time of
# the bands (median of 10-24 interleaved rounds, three runs, benchmarks/litert_wide_depthwise.py).
# INT8 keeps the bands: the sets took 0.995-1.085× their time there (their 2-row pieces run in
# the 25-tap kernel; nothing to gain once the PADs and SLICEs are int8).
XNNPACK_DEPTHWISE_TAPS = 25


def _is_wide_depthwise(conv: Any, torch: Any) -> bool:
    """A depthwise ``nn.Conv2d`` with more taps than XNNPACK's kernels take, splittable by
    rows (zero padding, a row no wider than the limit)."""
    if not isinstance(conv, torch.nn.Conv2d) or conv.groups == 1:
        return False
    kh, kw = conv.kernel_size
    return (conv.groups == conv.in_channels and conv.out_channels % conv.groups == 0
            and kh * kw > XNNPACK_DEPTHWISE_TAPS and kw <= XNNPACK_DEPTHWISE_TAPS
            and conv.padding_mode == "zeros" and _numeric_padding(conv) is not None)


def _numeric_padding(conv: Any) -> tuple[int, int] | None:
    """``conv``'s (top/bottom, left/right) zero padding; "valid" is none, "same" is half the
    dilated kernel on each side (None when that is not symmetric: an even kernel)."""
    if not isinstance(conv.padding, str):
        return int(conv.padding[0]), int(conv.padding[1])
    if conv.padding == "valid":
        return 0, 0
    spans = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
    return None if any(s % 2 for s in spans) else (spans[0] // 2, spans[1] // 2)


def _row_sets(conv: Any) -> list[tuple[int, ...]] | None:
    """The kernel rows of ``conv`` as sets symmetric about the centre row, each evenly spaced
    and within XNNPACK's taps: the centre band (the most rows that fit), then the pairs
    ``c − j, c + j``. Each set is then a same-padded convolution of its own (the spacing as
    dilation): no pad and no row slices in the graph. None when the kernel has an even number
    of rows, a pair would not fit, or the padding is not the symmetric "same" one."""
    kh, kw = conv.kernel_size
    padding = _numeric_padding(conv)
    if (kh % 2 == 0 or 2 * kw > XNNPACK_DEPTHWISE_TAPS or padding is None
            or padding[0] != (kh - 1) // 2 * conv.dilation[0]):
        return None
    c, half = kh // 2, (XNNPACK_DEPTHWISE_TAPS // kw - 1) // 2
    return [tuple(range(c - half, c + half + 1))] + [(c - j, c + j)
                                                     for j in range(half + 1, c + 1)]


def _row_bands(conv: Any, torch: Any, symmetric: bool) -> Any:
    """A module computing ``conv`` (a wide depthwise convolution) as a sum of depthwise
    convolutions of at most ``XNNPACK_DEPTHWISE_TAPS`` taps each: with ``symmetric``, over the
    row sets of ``_row_sets`` where it applies (a 7×7 kernel: rows 2-4, 1 and 5, 0 and 6); else over
    bands of consecutive rows (the input padded once, each band reading the rows its kernel rows
    see). Its forward keeps the conv's module path, so layer names (``keep_float``,
    ``layer_sensitivity``) do not change."""
    functional = torch.nn.functional
    sets = _row_sets(conv) if symmetric else None

    class RowBandDepthwise(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kh, kw = conv.kernel_size
            step = max(1, XNNPACK_DEPTHWISE_TAPS // kw)
            self.sets = sets or [tuple(range(r, min(kh, r + step))) for r in range(0, kh, step)]
            weight = conv.weight.detach()
            self.bands = torch.nn.ParameterList(
                torch.nn.Parameter(weight[:, :, list(rows)].clone(), requires_grad=False)
                for rows in self.sets)
            self.bias = (None if conv.bias is None
                         else torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=False))
            self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
            self.padding, self.kernel_size = _numeric_padding(conv), conv.kernel_size
            self.symmetric = sets is not None

        def forward(self, x: Any) -> Any:
            (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
            out = None
            if self.symmetric:  # each set centred on the kernel's centre row: same-padded
                for i, (rows, w) in enumerate(zip(self.sets, self.bands, strict=True)):
                    gap = (rows[1] - rows[0]) * dh if len(rows) > 1 else dh
                    y = functional.conv2d(x, w, self.bias if i == 0 else None, (sh, sw),
                                          ((len(rows) - 1) * gap // 2, pw), (gap, dw),
                                          self.groups)
                    out = y if out is None else out + y
                return out
            x = functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x
            rows_out = (x.shape[2] - dh * (self.kernel_size[0] - 1) - 1) // sh + 1
            for i, (rows, w) in enumerate(zip(self.sets, self.bands, strict=True)):
                top = rows[0] * dh
                part = x[:, :, top:top + (rows_out - 1) * sh + dh * (w.shape[2] - 1) + 1]
                y = functional.conv2d(part, w, self.bias if i == 0 else None, (sh, sw), 0,
                                      (dh, dw), self.groups)
                out = y if out is None else out + y
            return out

    return RowBandDepthwise()


def xnnpack_fit(module: Any, torch: Any, *, symmetric: bool = False) -> tuple[Any, list[str]]:
    """``module`` with every depthwise convolution wider than XNNPACK's kernels replaced by its
    row-band form (``_row_bands``; ``symmetric``: the centred row sets where they apply — the
    float exports' form, see above), on a copy; the original when there is none. Also returns
    the replaced layers' names (module paths), for the artifact's notes."""
    wide = [name for name, sub in module.named_modules() if _is_wide_depthwise(sub, torch)]
    if not wide:
        return module, []
    fitted = copy.deepcopy(module)
    for name in wide:
        parent, _, leaf = name.rpartition(".")
        owner = fitted.get_submodule(parent) if parent else fitted
        setattr(owner, leaf, _row_bands(getattr(owner, leaf), torch, symmetric))
    return fitted.eval(), wide


def _fit_note(wide: list[str], module: Any, symmetric: bool) -> list[str]:
    if not wide:
        return []
    convs = [module.get_submodule(n) for n in wide]
    kernels = sorted({"×".join(map(str, c.kernel_size)) for c in convs})
    sets = [symmetric and _row_sets(c) is not None for c in convs]
    form = ("row sets centred on the kernel (no pad or slice ops)" if all(sets)
            else "row bands" if not any(sets) else "centred row sets and row bands")
    return [f"{len(wide)} depthwise convolution(s) with {', '.join(kernels)} kernels converted as "
            f"sums of {form} of ≤ {XNNPACK_DEPTHWISE_TAPS} taps: XNNPACK has no fast kernel "
            "for larger depthwise kernels (same function; every piece on XNNPACK's fast path)"]


def _import_converter() -> tuple[Any, Any]:
    """``litert_torch`` and ``torch``; their import-time C++/absl chatter is swallowed."""
    try:
        with _capture_stderr() as captured:
            import litert_torch
            import torch
    except ImportError as exc:
        sys.stderr.write(captured.text())
        raise BackendUnavailable(
            f"Exporting TFLite needs litert-torch, which is not installed ({exc}): "
            f"{CONVERTER_HINT}") from exc
    return litert_torch, torch


def _convert(litert_torch: Any, torch: Any, module: Any, sample: tuple[Any, ...],
             request: ExportRequest) -> tuple[bytes, dict[str, Any], list[str]]:
    """The .tflite bytes for ``request.precision``, plus quantization facts and notes."""
    if request.precision == "int8":
        return _export_int8(litert_torch, module, sample, request)
    with torch.no_grad():
        content = litert_torch.convert(module, sample).model_content()
    if request.precision == "fp16":
        return _to_fp16_weights(content), {"weights": "float16"}, []
    return content, {}, []


class _Calibration:
    """The calibration image being run: ``pt2e_quantize`` counts, its observers read it."""

    def __init__(self) -> None:
        self.image = 0


def _mean_minmax_observer(calibration: _Calibration) -> Any:
    """A torchao observer whose range is the mean over calibration images of each image's
    min/max (``calibration.image`` tells the images apart). An observer shared by several
    edges (a concat's inputs) sees several tensors per image: their joint min/max is that
    image's."""
    import torch
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class MeanMinMaxObserver(MinMaxObserver):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._image: int | None = None
            self._images = 0  # images folded into the sums
            self._sums = [0.0, 0.0]
            self._now = [0.0, 0.0]  # this image's min and max so far

        def forward(self, x_orig: Any) -> Any:
            if x_orig.numel() == 0:
                return x_orig
            lo, hi = (float(v) for v in torch.aminmax(x_orig.detach().to(self.min_val.dtype)))
            if self._image != calibration.image:
                if self._image is not None:
                    self._sums = [self._sums[0] + self._now[0], self._sums[1] + self._now[1]]
                    self._images += 1
                self._image, self._now = calibration.image, [lo, hi]
            else:
                self._now = [min(self._now[0], lo), max(self._now[1], hi)]
            n = self._images + 1
            self.min_val.fill_((self._sums[0] + self._now[0]) / n)
            self.max_val.fill_((self._sums[1] + self._now[1]) / n)
            return x_orig

    return MeanMinMaxObserver


def _quant_config(method: str, per_channel: bool, ranges: str | None,
                  calibration: _Calibration) -> Any:
    """litert-torch's symmetric PT2E config with the activation observer for ``method`` (and,
    for "minmax", ``ranges``: QuantOptions.activation_ranges; "mean" reads the image counter
    ``calibration``)."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    base = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel)
    if method != "minmax":
        observer = HistogramObserver
    elif ranges == "mean":
        observer = _mean_minmax_observer(calibration)
    else:
        observer = MinMaxObserver
    act = dataclasses.replace(base.input_activation,
                              observer_or_fake_quant_ctr=observer.with_args(eps=2 ** -12))
    return dataclasses.replace(base, input_activation=act, output_activation=act)


def pt2e_quantize(module: Any, sample: tuple[Any, ...], calibration: Any, *,
                  method: str = "minmax", per_channel: bool = True,
                  keep_float: tuple[str, ...] = (), float_graph: list[Any] | None = None,
                  ranges: str | None = "global"
                  ) -> tuple[Any, Any, int]:
    """PT2E static quantization of ``module`` as the int8 export does it (torch needed).

    Returns ``(converted, quantizer, images)``: the quantize/dequantize ``GraphModule`` (also a
    torch reference of what the .tflite computes), the quantizer litert-torch must be told
    about, and how many calibration images were run. ``keep_float`` names layers
    (``layer_sensitivity``'s names: module paths such as ``features.3.conv``) left unquantized
    with float inputs and output (``_keep_float_nodes``). ``float_graph``, when given, receives
    a copy of the exported float graph the converted one was made from, batch norms folded into
    their convs as ``prepare_pt2e`` folds them (same nodes, same names: a conv's output is
    compared after its batch norm on both sides).
    """
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    shape = tuple(sample[0].shape)
    counter = _Calibration()
    quantizer = _quantizer(tuple(keep_float)).set_global(
        _quant_config(method, per_channel, ranges, counter))
    graph = torch.export.export(module, sample, strict=False).module()
    move_exported_model_to_eval(graph)
    if keep_float:
        names = {_layer_name(n) for n in _compute_nodes(graph)} | {
            p for n in graph.graph.nodes for p in _module_paths(n)}
        unknown = sorted(set(keep_float) - names)
        if unknown:
            raise ConfigError(f"litert: cannot keep {', '.join(unknown)} in float: no such layer "
                              "in the model (names come from layer_sensitivity)")
    if float_graph is not None:  # with batch norms folded into convs, as prepare_pt2e does
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_

        reference = copy.deepcopy(graph)
        _fuse_conv_bn_(reference)
        float_graph.append(reference)
    prepared = prepare_pt2e(graph, quantizer)
    count = 0
    with torch.no_grad():
        for item in iter_calibration(calibration):
            if tuple(item.shape) != shape:
                raise DataError(f"calibration item {count} has shape {tuple(item.shape)}; "
                                f"the model takes {shape}")
            counter.image = count
            prepared(torch.from_numpy(item))
            count += 1
    if count == 0:
        raise ConfigError("Backend 'litert' needs calibration data for int8: the calibration "
                          "set yielded no images")
    converted = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(converted)  # dropout/batch norm ops to their eval variants
    for sub in converted.modules():  # and say so: litert-torch warns on `training` otherwise
        sub.training = False
    return converted, quantizer, count


# ----------------------------------------------------------------------------- mixed precision
# Layers are named as ``keep_float`` and ``layer_sensitivity`` name them: the deepest module path
# of a compute node (``features.3.conv``); for a ``.pt2`` source, whose re-export carries no
# module stack, the path of its weight (``crushed.0`` for ``crushed.0.weight``); else the node's
# name in the exported graph (``add_3``), which is stable for one model.
_PASS_THROUGH = ("relu", "relu_", "hardtanh", "hardtanh_", "clamp", "max_pool2d", "view",
                 "reshape", "flatten", "permute", "squeeze", "unsqueeze", "dropout", "clone",
                 "contiguous", "_to_copy", "getitem")
_FUSED = ("relu", "relu_", "hardtanh", "hardtanh_", "clamp")  # quantized with their producer
_WRAPPER = "graph_module."  # edgekit's wrapper of a .pt2 program (sources.torch)


def _op(node: Any) -> str:
    """``conv2d`` for ``aten.conv2d.default``; the callable's name otherwise."""
    text = str(node.target)
    if text.startswith(("aten.", "quantized_decomposed.")):
        return text.split(".")[1]
    return str(getattr(node.target, "__name__", text))


def _is_qdq(node: Any) -> bool:
    return node.op == "call_function" and str(node.target).startswith("quantized_decomposed.")


def _module_paths(node: Any) -> list[str]:
    """The module paths ``node`` was traced under, outermost first (the root left out)."""
    paths = []
    for value in (node.meta.get("nn_module_stack") or {}).values():
        path = str(value[0])
        path = path[len("L['self']."):] if path.startswith("L['self'].") else path
        if path and path != "L['self']":
            paths.append(path)
    return paths


def _weight_name(node: Any) -> str | None:
    """The parameter path a conv/linear node's weight comes from (through Q/DQ), minus
    ``.weight``."""
    if len(node.args) < 2 or not hasattr(node.args[1], "op"):
        return None
    arg = node.args[1]
    while _is_qdq(arg) and arg.args and hasattr(arg.args[0], "op"):
        arg = arg.args[0]
    if arg.op != "get_attr" or not str(arg.target).endswith(".weight"):
        return None
    name = str(arg.target)[:-len(".weight")]
    return name[len(_WRAPPER):] if name.startswith(_WRAPPER) else name


def _layer_name(node: Any) -> str:
    paths = _module_paths(node)
    return paths[-1] if paths else (_weight_name(node) or node.name)


def _compute_nodes(graph_module: Any) -> list[Any]:
    """The nodes that compute (not Q/DQ, not pass-through, not constants)."""
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and not _is_qdq(n)
            and _op(n) not in _PASS_THROUGH]


def _keep_float_nodes(graph_module: Any, keep: tuple[str, ...]) -> set[str]:
    """The names of the nodes to leave unannotated so that each layer in ``keep`` runs in float
    with float inputs and a float output: its compute nodes, the producers of their inputs (a
    PT2E conv quantizes its own output) and the consumers of their outputs (they quantize their
    inputs), following pass-through ops (ReLU, max pool, reshape …)."""
    wanted = set(keep)
    out: set[str] = set()
    for node in _compute_nodes(graph_module):
        if _layer_name(node) not in wanted:
            continue
        out.add(node.name)
        for step in (lambda n: list(n.all_input_nodes), lambda n: list(n.users)):
            frontier = step(node)
            while frontier:
                other = frontier.pop()
                if other.op != "call_function" or _is_qdq(other) or other.name in out:
                    continue
                out.add(other.name)
                if _op(other) in _PASS_THROUGH:
                    frontier += step(other)
    return out


def _quantizer(keep: tuple[str, ...]) -> Any:
    """litert-torch's ``PT2EQuantizer``, with two changes.

    * Every float tensor add is annotated (int8 inputs and output). litert-torch 0.10 finds adds
      through ``get_source_partitions``, which under ``torch.export(strict=False)`` (torch
      2.13) compares a string to functions and never matches: an add then ran in float between
      DEQUANTIZE/QUANTIZE ops, and a chain of adds (the row bands of a wide depthwise conv, a
      residual after a GELU) kept whole float islands (issue 18).
    * With ``keep``, those layers (and the nodes ``_keep_float_nodes`` adds) stay unannotated.
      Not ``set_module_name(name, None)``: its filter in litert-torch 0.10 strips a
      ``L__self___`` prefix that torch 2.13's module-stack keys (``L__self__features.3``) do
      not have, so it never matches, and a ``.pt2`` source has no module stack at all."""
    from litert_torch.quantize import pt2e_quantizer

    class EdgekitQuantizer(pt2e_quantizer.PT2EQuantizer):  # type: ignore[misc]
        excluded: set[str] = set()

        def annotate(self, model: Any) -> Any:
            self.excluded = _keep_float_nodes(model, keep) if keep else set()
            return super().annotate(model)

        def _annotate_all_static_patterns(self, model: Any, quantization_config: Any,
                                          filter_fn: Any = None) -> Any:
            excluded = self.excluded

            def quantized(node: Any) -> bool:
                return node.name not in excluded and (filter_fn is None or filter_fn(node))

            model = super()._annotate_all_static_patterns(model, quantization_config, quantized)
            if quantization_config is not None:
                _annotate_adds(model, quantization_config, quantized)
            return model

    return EdgekitQuantizer()


def _annotate_adds(model: Any, config: Any, wanted: Callable[[Any], bool]) -> None:
    """Annotate each not yet annotated add of two float tensors as litert-torch's add
    annotator would (both inputs and the output quantized with the activation spec)."""
    import torch
    from litert_torch.quantize.pt2e_quantizer_utils import (
        _is_annotated,
        get_input_act_qspec,
        get_output_act_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    adds = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in adds or _is_annotated([node]) \
                or not wanted(node):
            continue
        args = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        values = [getattr(a, "meta", {}).get("val") for a in [*args, node]]
        if len(args) != 2 or not all(getattr(v, "is_floating_point", lambda: False)()
                                     for v in values):
            continue
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={a: get_input_act_qspec(config) for a in args},
            output_qspec=get_output_act_qspec(config), _annotated=True)


def _read_as(node: Any) -> Any:
    """What consumers of ``node`` read in a converted PT2E graph: the DEQUANTIZE after the
    QUANTIZE that follows it, when it is quantized; itself otherwise."""
    for user in node.users:
        if _is_qdq(user) and _op(user).startswith("quantize"):
            for dq in user.users:
                if _is_qdq(dq) and _op(dq).startswith("dequantize"):
                    return dq
    return node


def _pt2e_view(converted: Any, float_names: set[str]
               ) -> tuple[list[tuple[str, str, str, list[str]]], dict[str, tuple[str, str]]]:
    """The quantized layers of a converted PT2E graph and what to compare.

    Layers: ``(name, op, output tensor, input tensors)`` for each compute node that reads a
    DEQUANTIZE or whose output (after a fused ReLU/clamp) is quantized. Pairs: ``tensor →
    (the node consumers read in the converted graph, the float graph's node of that name)``."""
    pairs: dict[str, tuple[str, str]] = {}
    for node in converted.graph.nodes:
        if node.name in float_names and (node.op == "placeholder" or (
                node.op == "call_function" and not _is_qdq(node))):
            pairs[node.name] = (_read_as(node).name, node.name)
    layers = []
    for node in _compute_nodes(converted):
        end = node
        while len(end.users) == 1 and _op(next(iter(end.users))) in _FUSED:
            end = next(iter(end.users))
        sources, quantized = [], _read_as(end) is not end
        for arg in node.all_input_nodes:
            if _is_qdq(arg):
                quantized = True
                q = arg.args[0] if arg.args else None
                src = q.args[0] if _is_qdq(q) and q.args else None
                if getattr(src, "name", None) in pairs:
                    sources.append(src.name)
            elif arg.name in pairs:
                sources.append(arg.name)
        if quantized and end.name in pairs:
            layers.append((_layer_name(node), _op(node), end.name, sources))
    return layers, pairs


def _recorder(graph_module: Any, names: list[str], torch: Any
              ) -> Callable[[np.ndarray], list[np.ndarray]]:
    """One image → the values of the nodes ``names`` of ``graph_module`` (an fx Interpreter)."""
    index = set(names)

    class Recorder(torch.fx.Interpreter):  # type: ignore[misc]
        seen: dict[str, Any] = {}

        def run_node(self, n: Any) -> Any:
            out = super().run_node(n)
            if n.name in index:
                self.seen[n.name] = out
            return out

    def run(row: np.ndarray) -> list[np.ndarray]:
        rec = Recorder(graph_module)
        rec.seen = {}
        with torch.no_grad():
            rec.run(torch.from_numpy(row))
        return [rec.seen[n].detach().numpy() for n in names]

    return run


def _sensitivity(request: ExportRequest, images: np.ndarray) -> list[LayerError]:
    """``LiteRTBackend.layer_sensitivity`` for a PyTorch source, or the PyTorch replay of an
    ONNX or TorchScript one (see there)."""
    loaded, opts = request.model, request.options
    with _quiet():
        _, torch = _import_converter()
        shape = tuple(loaded.spec.input_shape(1))
        rng = np.random.default_rng(opts.seed)
        sample = (torch.from_numpy(rng.random(shape, dtype=np.float32)),)
        floats: list[Any] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(opts.seed)
            module, _ = xnnpack_fit(_torch_module(loaded), torch)
            converted, _, _ = pt2e_quantize(module, sample, request.calibration,
                                            method=opts.method, per_channel=opts.per_channel,
                                            keep_float=tuple(opts.keep_float),
                                            float_graph=floats,
                                            ranges=opts.ranges(BACKEND.activation_ranges))
        layers, pairs = _pt2e_view(converted, {n.name for n in floats[0].graph.nodes})
        keys = sorted(pairs)
        acc = ErrorAccumulator.over(images, keys,
                                    _recorder(floats[0], [pairs[k][1] for k in keys], torch),
                                    _recorder(converted, [pairs[k][0] for k in keys], torch))
    rows: dict[str, LayerError] = {}
    for name, op, out_key, sources in layers:
        out = acc.error(out_key)
        if out is None:
            continue
        before = max([acc.error(t) or 0.0 for t in sources] + [0.0])
        row = LayerError(name, op, out, out - before)
        if name not in rows or row.added > rows[name].added:
            rows[name] = row
    return rank(rows.values())


def _export_int8(litert_torch: Any, module: Any, sample: tuple[Any, ...],
                 request: ExportRequest) -> tuple[bytes, dict[str, Any], list[str]]:
    from litert_torch.quantize import quant_config

    opts = request.options
    ranges = opts.ranges(BACKEND.activation_ranges)
    converted, quantizer, count = pt2e_quantize(module, sample, request.calibration,
                                                method=opts.method, per_channel=opts.per_channel,
                                                keep_float=tuple(opts.keep_float), ranges=ranges)
    content = litert_torch.convert(
        converted, sample,
        quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)).model_content()
    content = _set_io_types(content, integer=opts.int8_io)
    weights = "per-channel" if opts.per_channel else "per-tensor"
    quant = {"scheme": f"PT2E static: int8 weights ({weights} symmetric), int8 activations "
             "(per-tensor affine)", "method": opts.method,
             "activation_ranges": ranges,
             "calibration_images": count,
             "keep_float": list(opts.keep_float),
             "excluded_nodes": sorted(getattr(quantizer, "excluded", ()))}
    notes = [f"int8: static PT2E quantization calibrated on {count} images "
             f"({opts.method} activation ranges, {weights} weights)"]
    if opts.keep_float:
        notes.append(f"mixed precision: {len(opts.keep_float)} layer(s) kept in float with "
                     f"float inputs and output ({', '.join(opts.keep_float)})")
    if opts.method == "percentile":
        notes.append("percentile calibration = torchao HistogramObserver: a histogram search "
                     "for the activation range with the least quantization error (clips "
                     "outliers like a percentile, without a fixed percentile)")
    return content, quant, notes


def _to_fp16_weights(content: bytes) -> bytes:
    """Cast conv/FC weights to float16 (ai-edge-quantizer FLOAT_CASTING, weight-only)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    qt = quantizer.Quantizer(bytearray(content))
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "CONV_2D_TRANSPOSE",
               "EMBEDDING_LOOKUP"):
        qt.add_weight_only_config(regex=".*", operation_name=getattr(qtyping.TFLOperationName, op),
                                  num_bits=16,
                                  algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    result = qt.quantize(enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


_OP_PATTERNS = (
    re.compile(r"(?:Lowering not found|no lowering)[^\n]*?\b(aten\.[A-Za-z0-9_]+)", re.I),
    re.compile(r"\b(aten\.[A-Za-z0-9_]+)(?:\.[A-Za-z0-9_]+)?\b[^\n]*(?:not supported|unsupported)",
               re.I),
    re.compile(r"failed to legalize operation '([A-Za-z0-9_.]+)'", re.I),
    re.compile(r"'([a-z]+\.[A-Za-z0-9_]+)' op[^\n]*(?:not supported|unsupported|failed)", re.I),
)


def _conversion_error(exc: BaseException, loaded: Any, precision: str) -> ExportError:
    """One ExportError naming the backend and, where the converter says so, the operator."""
    text = f"{type(exc).__name__}: {exc}"
    op = next((m.group(1) for p in _OP_PATTERNS if (m := p.search(text))), None)
    first = first_line(exc, None).strip()
    what = f"Backend 'litert': converting {getattr(loaded, 'name', 'the model')} to TFLite " \
           f"({precision}) failed"
    if op and getattr(loaded, "kind", "torch") == "onnx":
        return ExportError(
            f"{what}: litert-torch has no TFLite lowering for operator {op} ({first}), which "
            f"edgekit's ONNX → PyTorch step produced from the ONNX graph. Use the "
            f"onnxruntime/openvino backends for this model.")
    if op:
        return ExportError(
            f"{what}: litert-torch has no TFLite lowering for operator {op} ({first}). Replace "
            f"it in the model (e.g. nn.AdaptiveMaxPool2d(1) → torch.amax over H and W) or use "
            f"the onnxruntime/openvino backends.")
    return ExportError(f"{what}: {first[:500]}")


def _describe(path: Path) -> dict[str, Any]:
    """I/O names, dtypes and quantization read back from the written file."""
    interpreter_cls = _interpreter_class()
    interp = interpreter_cls(model_path=str(path))
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    try:
        details = interp._get_ops_details()  # private but stable listing
    except Exception:  # noqa: BLE001 - only used for notes and the quantized-op count
        details = []
    ops = [d["op_name"] for d in details]
    integer = {t["index"] for t in interp.get_tensor_details()
               if np.dtype(t["dtype"]) in (np.int8, np.uint8)}
    # ops that compute on integer tensors (not the (de)quantize ops at float boundaries)
    quantized_ops = sum(1 for d in details if d["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
                        and any(i in integer for i in d["inputs"]))

    def qinfo(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero_point = d["quantization"]
        return {"scale": float(scale), "zero_point": int(zero_point),
                "dtype": np.dtype(d["dtype"]).name}

    return {"input_name": str(inp["name"]), "input_dtype": np.dtype(inp["dtype"]).name,
            "output_dtype": np.dtype(out["dtype"]).name, "input_q": qinfo(inp),
            "output_q": qinfo(out), "ops": ops, "quantized_ops": quantized_ops}


def _notes(request: ExportRequest, details: dict[str, Any]) -> list[str]:
    spec = request.model.spec
    if getattr(request.model, "kind", "torch") == "onnx":
        notes = [f"input: {details['input_dtype']} {spec.layout} {list(spec.input_shape(1))} as "
                 "the ONNX model takes it; batch size 1. Converted from the ONNX graph replayed "
                 "with PyTorch ops (edgekit.sources.onnx_torch) by litert-torch"]
        fixed = _symbolic_dims(request.model)
        if fixed:
            notes.append(f"The source's symbolic input dims {fixed} were fixed to "
                         f"{list(spec.input_shape(1))} (TFLite shapes are static)")
    else:
        notes = [f"input: {details['input_dtype']} {spec.layout} {list(spec.input_shape(1))} "
                 "as the PyTorch model takes it (the NCHW→NHWC transpose is inside the model); "
                 "batch size 1"]
        if getattr(request.model, "kind", "torch") == "torchscript":
            notes.append("Converted from the TorchScript archive exported to ONNX (PyTorch's "
                         "TorchScript exporter) and replayed with PyTorch ops "
                         "(edgekit.sources.onnx_torch) by litert-torch")
    transposes = details["ops"].count("TRANSPOSE")
    if transposes:
        notes.append(f"{transposes} TRANSPOSE op(s) in the graph")
    ops = details["ops"]
    if request.precision == "int8":
        wrap = 0 if request.options.int8_io else 2
        islands = max(ops.count("DEQUANTIZE") + ops.count("QUANTIZE") - wrap, 0)
        if islands:
            notes.append(f"int8: {islands} QUANTIZE/DEQUANTIZE ops inside the graph: ops the "
                         "PT2E quantizer does not cover (e.g. sigmoid, mean/amax in attention "
                         "blocks) run in float between them")
        if request.options.int8_io:
            qi, qo = details["input_q"], details["output_q"]
            notes.append(f"int8 I/O: feed q = clip(round(x / {qi['scale']:.6g}) "
                         f"{qi['zero_point']:+d}, -128, 127); logits = (y {-qo['zero_point']:+d})"
                         f" * {qo['scale']:.6g} (edgekit's Session/runner does both)")
        else:
            notes.append("int8 with float32 input/output: QUANTIZE/DEQUANTIZE at the model "
                         "boundary, callers never handle scales")
        notes.append("ARM: XNNPACK runs the int8 ops. Cortex-A72 (Raspberry Pi 4, ARMv8.0-A) "
                     "has no SDOT dot-product instructions, so int8 convolutions use NEON "
                     "multiply-accumulate kernels and gain less over fp32; Cortex-A76 (Pi 5, "
                     "ARMv8.2-A with dotprod) uses SDOT kernels and gains considerably more. "
                     "Benchmark on the target.")
    elif request.precision == "fp16":
        notes.append("fp16: float16 conv/FC weights with DEQUANTIZE ops (ai-edge-quantizer "
                     "float casting), about half the fp32 file. LiteRT's default CPU path "
                     "expands them to fp32 at load time and computes in fp32 (same speed as "
                     "fp32); fp16 arithmetic needs XNNPACK's force-FP16 mode on an ARMv8.2-A "
                     "core with FP16 arithmetic (Cortex-A55/A76, Raspberry Pi 5; not the "
                     "Cortex-A72 of a Pi 4).")
    return notes


# ----------------------------------------------------------------------------- fast path
# Ops that carry the arithmetic: one of them computing in float inside an INT8 model is slow.
_COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV",
                "BATCH_MATMUL", "CONV_3D")


def _fast_path(path: Path, precision: str) -> FastPath:
    """Which ops of the ``.tflite`` at ``path`` run off the fast path under the LiteRT
    interpreter's default XNNPACK delegate, each with why:

    * not delegated: each op is put alone in a one-op model and opened with the default
      delegate (XNNPACK decides op by op, so alone is how it decides in the graph); an op it
      does not take runs in TFLite's built-in kernel, with a delegate boundary around it;
    * a depthwise convolution wider than ``XNNPACK_DEPTHWISE_TAPS`` taps: XNNPACK takes it but
      runs it in a generic path 10-20× slower than its micro-kernels (issue 18);
    * in an INT8 model, a convolution / fully connected / matmul computing in float.
    """
    from ai_edge_litert import __version__ as version
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    sg = model.subgraphs[0]
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    off: list[OffPathOp] = []
    for op in sg.operators:
        kind = op_names.get(_builtin(model, op.opcodeIndex), "CUSTOM")
        node = _tensor_name(sg, op.outputs[0]) if len(op.outputs) else kind
        inputs = [sg.tensors[i] for i in op.inputs if i >= 0]
        if kind == "DEPTHWISE_CONV_2D" and len(inputs) > 1:
            kh, kw = (list(inputs[1].shape) + [1, 1, 1])[1:3]
            if kh * kw > XNNPACK_DEPTHWISE_TAPS:
                off.append(OffPathOp(op=kind, node=node, reason=(
                    f"{kh}×{kw} depthwise kernel: XNNPACK's depthwise kernels take at most "
                    f"{XNNPACK_DEPTHWISE_TAPS} taps; a wider one runs in a slow generic path")))
                continue
        if (precision == "int8" and kind in _COMPUTE_OPS and inputs
                and inputs[0].type == fb.TensorType.FLOAT32):
            off.append(OffPathOp(op=kind, node=node, reason="computes in float inside an INT8 "
                                 "model"))
            continue
        if _xnnpack_takes(model, sg, op) is False:
            off.append(OffPathOp(op=kind, node=node, reason=(
                "not delegated to XNNPACK: runs in TFLite's built-in kernel, between "
                "delegate partitions")))
    return FastPath(status="off" if off else "clean", ops=tuple(off),
                    checked=f"ai-edge-litert {version}: each op alone under the default XNNPACK "
                    "delegate; depthwise kernel sizes; float compute in INT8")


def _tensor_name(sg: Any, tid: int) -> str:
    name = sg.tensors[tid].name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _xnnpack_takes(model: Any, sg: Any, op: Any) -> bool | None:
    """Whether the default XNNPACK delegate takes ``op`` alone in a one-op model (its own
    tensors and constant buffers only); None when the op cannot be opened alone (an op with
    subgraphs, a custom op)."""
    from ai_edge_litert import schema_py_generated as fb

    one = fb.ModelT()
    one.version = model.version
    one.operatorCodes = [model.operatorCodes[op.opcodeIndex]]
    empty = fb.BufferT()
    one.buffers = [empty]
    sub = fb.SubGraphT()
    sub.tensors, index = [], {}
    constants = set()
    for tid in [t for t in list(op.inputs) + list(op.outputs) if t >= 0]:
        if tid in index:
            continue
        tensor = copy.copy(sg.tensors[tid])
        buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
        if buffer is not None and buffer.data is not None and len(buffer.data):
            one.buffers.append(buffer)
            tensor.buffer = len(one.buffers) - 1
            constants.add(tid)
        else:
            tensor.buffer = 0
        index[tid] = len(sub.tensors)
        sub.tensors.append(tensor)
    single = copy.copy(op)
    single.opcodeIndex = 0
    single.inputs = [index.get(t, -1) if t >= 0 else -1 for t in op.inputs]
    single.outputs = [index[t] for t in op.outputs]
    sub.inputs = [index[t] for t in op.inputs if t >= 0 and t not in constants]
    sub.outputs = list(single.outputs)
    sub.operators = [single]
    one.subgraphs = [sub]
    try:
        interp = _interpreter_class()(model_content=_pack(one), num_threads=1)
        interp.allocate_tensors()
        return any(d["op_name"] == "DELEGATE" for d in interp._get_ops_details())
    except Exception:  # noqa: BLE001 - an op that cannot stand alone: no answer
        return None


# ----------------------------------------------------------------------------- Keras sources
# A Keras source (``kind == "keras"``) converts with TensorFlow's own
# ``tf.lite.TFLiteConverter`` (``edgekit.keras_source.KerasModel.to_tflite``), not litert-torch:
# fp32 as is, fp16 as float16 weights (the converter's float16 quantization), int8 as full-integer
# post-training quantization calibrated on the request's images (min/max ranges). The artifact
# takes the NHWC float32 input the Keras model takes, in-graph preprocessing included.


def _export_keras(request: ExportRequest) -> Artifact:
    """A Keras source to ``.tflite`` with ``tf.lite.TFLiteConverter``; the same Artifact fields
    as the PyTorch path (layout NHWC)."""
    loaded = request.model
    km = loaded.keras
    opts = request.options
    out_dir = Path(request.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{request.stem}{BACKEND.suffix}"
    shape = tuple(loaded.spec.input_shape(1))
    facts = km.to_tflite(path, precision=request.precision, calibration=request.calibration,
                         int8_io=opts.int8_io, size=tuple(loaded.spec.input_size),
                         per_channel=opts.per_channel)
    details = _describe(path)
    quant: dict[str, Any] = {}
    notes = [f"input: {details['input_dtype']} NHWC {list(shape)} as the Keras model takes it "
             f"({km.input_range} pixels: {km.range_reason}); batch size 1",
             f"converted with {facts.get('converter')} from the {facts.get('from')}"]
    if km.removed:
        notes.append("removed before conversion (the identity at inference): "
                     + "; ".join(km.removed))
    notes += list(getattr(km, "notes", []) or [])
    ops = details["ops"]
    if request.precision == "int8":
        weights = "per-channel" if opts.per_channel else "per-tensor"
        quant.update(scheme=f"TFLite full-integer post-training quantization: int8 weights "
                            f"({weights} symmetric), int8 activations (per-tensor affine)",
                     method="minmax", activation_ranges="global",
                     calibration_images=facts.get("calibration_images"))
        if opts.int8_io:
            quant.update(input=details["input_q"], output=details["output_q"])
        notes.append(f"int8: TFLite post-training quantization calibrated on "
                     f"{facts.get('calibration_images')} images (min/max activation ranges, "
                     f"{weights} weights)")
        wrap = 0 if opts.int8_io else 2
        islands = max(ops.count("DEQUANTIZE") + ops.count("QUANTIZE") - wrap, 0)
        if islands:
            notes.append(f"int8: {islands} QUANTIZE/DEQUANTIZE ops inside the graph: ops the "
                         "converter has no int8 kernel for run in float between them")
        if opts.int8_io:
            qi, qo = details["input_q"], details["output_q"]
            notes.append(f"int8 I/O: feed q = clip(round(x / {qi['scale']:.6g}) "
                         f"{qi['zero_point']:+d}, -128, 127); outputs = (y {-qo['zero_point']:+d})"
                         f" * {qo['scale']:.6g} (edgekit's Session/runner does both)")
        else:
            notes.append("int8 with float32 input/output: QUANTIZE/DEQUANTIZE at the model "
                         "boundary, callers never handle scales")
        notes.append("ARM: XNNPACK runs the int8 ops; cores with dot-product instructions "
                     "(Cortex-A76, Raspberry Pi 5) gain considerably more over fp32 than "
                     "Cortex-A72 (Raspberry Pi 4). Benchmark on the target.")
    elif request.precision == "fp16":
        quant.update(weights="float16")
        notes.append("fp16: float16 weights with DEQUANTIZE ops (the TFLite converter's float16 "
                     "quantization), about half the fp32 file; LiteRT's default CPU path "
                     "computes in fp32")
    return Artifact(
        backend=BACKEND.name, precision=request.precision, path=path, files=[path],
        input_name=details["input_name"], input_shape=list(shape),
        input_dtype=details["input_dtype"], output_dtype=details["output_dtype"],
        layout="NHWC", quantization=quant, notes=notes)


# ----------------------------------------------------------------------------- flatbuffer edit
def _set_io_types(content: bytes, *, integer: bool) -> bytes:
    """Make the main subgraph's I/O float32 (``integer=False``) or keep/make it integer.

    ``integer=False``: every integer model input gets a float32 twin feeding a QUANTIZE op into
    the old tensor, every integer output a DEQUANTIZE op into a float32 twin. ``integer=True``:
    a float32 input consumed only by a QUANTIZE op (or an output made only by a DEQUANTIZE op)
    is replaced by the integer tensor on the other side. Signature defs follow the change.
    """
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    sg = model.subgraphs[0]
    ints = (fb.TensorType.INT8, fb.TensorType.UINT8, fb.TensorType.INT16)
    remap: dict[int, int] = {}
    changed = False
    if not integer:
        head, tail = [], []
        for role, ids in (("in", sg.inputs), ("out", sg.outputs)):
            for tid in ids:
                tensor = sg.tensors[tid]
                if tensor.type not in ints:
                    continue
                twin = fb.TensorT()
                twin.name, twin.shape, twin.type, twin.buffer = (
                    tensor.name, list(tensor.shape), fb.TensorType.FLOAT32, 0)
                twin.shapeSignature, twin.hasRank = tensor.shapeSignature, tensor.hasRank
                tensor.name = (tensor.name or b"") + b"_int"
                sg.tensors.append(twin)
                remap[tid] = len(sg.tensors) - 1
                op = fb.OperatorT()
                if role == "in":
                    op.opcodeIndex = _opcode(model, fb.BuiltinOperator.QUANTIZE)
                    op.inputs, op.outputs = [remap[tid]], [tid]
                    op.builtinOptionsType = fb.BuiltinOptions.QuantizeOptions
                    op.builtinOptions = fb.QuantizeOptionsT()
                    head.append(op)
                else:
                    op.opcodeIndex = _opcode(model, fb.BuiltinOperator.DEQUANTIZE)
                    op.inputs, op.outputs = [tid], [remap[tid]]
                    op.builtinOptionsType = fb.BuiltinOptions.DequantizeOptions
                    op.builtinOptions = fb.DequantizeOptionsT()
                    tail.append(op)
        changed = bool(remap)
        sg.operators = head + list(sg.operators) + tail
    else:
        drop: list[Any] = []
        for role, ids in (("in", sg.inputs), ("out", sg.outputs)):
            for tid in ids:
                if sg.tensors[tid].type in ints:
                    continue
                op = _io_quant_op(model, sg, tid, role)
                if op is None:
                    raise ExportError(
                        f"Backend 'litert': cannot make {'input' if role == 'in' else 'output'} "
                        f"{sg.tensors[tid].name.decode(errors='replace')!r} integer: the op "
                        f"{'after' if role == 'in' else 'before'} it runs in float. Export "
                        "with float I/O (int8_io off) instead.")
                other = op.outputs[0] if role == "in" else op.inputs[0]
                sg.tensors[other].name = sg.tensors[tid].name
                remap[tid] = other
                drop.append(op)
        changed = bool(remap)
        sg.operators = [op for op in sg.operators if all(op is not d for d in drop)]
    if not changed:
        return content
    sg.inputs = [remap.get(t, t) for t in sg.inputs]
    sg.outputs = [remap.get(t, t) for t in sg.outputs]
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == 0:
            for tmap in list(sig.inputs or []) + list(sig.outputs or []):
                tmap.tensorIndex = remap.get(tmap.tensorIndex, tmap.tensorIndex)
    return _pack(model)


def _io_quant_op(model: Any, sg: Any, tid: int, role: str) -> Any:
    """The QUANTIZE op that is an input's only consumer / DEQUANTIZE op making an output."""
    from ai_edge_litert import schema_py_generated as fb

    want = fb.BuiltinOperator.QUANTIZE if role == "in" else fb.BuiltinOperator.DEQUANTIZE
    if role == "in":
        users = [op for op in sg.operators if tid in op.inputs]
        op = users[0] if len(users) == 1 else None
    else:
        op = next((op for op in sg.operators if tid in op.outputs), None)
        if op is not None and any(tid in o.inputs for o in sg.operators):
            return None
    if op is None or _builtin(model, op.opcodeIndex) != want:
        return None
    return op


def _builtin(model: Any, index: int) -> int:
    code = model.operatorCodes[index]
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def _opcode(model: Any, builtin: int) -> int:
    """Index of ``builtin`` in the model's operator codes (added if absent)."""
    from ai_edge_litert import schema_py_generated as fb

    for i in range(len(model.operatorCodes)):
        if _builtin(model, i) == builtin:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _pack(model: Any) -> bytes:
    """Serialise a ModelT with constant buffers 16-byte aligned (as the C++ writer does)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    class AlignedBuffer(fb.BufferT):
        def Pack(self, builder: Any) -> int:  # noqa: N802 - flatbuffers API name
            data = None
            if self.data is not None:
                payload = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(payload), 16)
                builder.head = builder.head - len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                data = builder.EndVector()
            fb.BufferStart(builder)
            if data is not None:
                fb.BufferAddData(builder, data)
            fb.BufferAddOffset(builder, self.offset)
            fb.BufferAddSize(builder, self.size)
            return fb.BufferEnd(builder)

    for buf in model.buffers:
        buf.__class__ = AlignedBuffer
    builder = flatbuffers.Builder(1024 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ----------------------------------------------------------------------------- quiet please
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence converter chatter for the duration of an export, restoring everything after.

    Sets TF_CPP_MIN_LOG_LEVEL=3 and LITERT_TORCH_SHOW_PROGRESS=n (litert-torch prints a progress
    tree to stdout otherwise), ignores Future/Deprecation warnings and raises the noisy loggers
    to ERROR. Errors are not hidden: they surface as exceptions.
    """
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", "LITERT_TORCH_SHOW_PROGRESS": "n"}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_levels = {n: logging.getLogger(n).level for n in _NOISY_LOGGERS}
    os.environ.update(env)
    for n in _NOISY_LOGGERS:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*training mode.*")
            yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for n, level in saved_levels.items():
            logging.getLogger(n).setLevel(level)


class _Captured:
    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._text = ""

    def text(self) -> str:
        return self._text


@contextlib.contextmanager
def _capture_stderr() -> Iterator[_Captured]:
    """Route file descriptor 2 to a temporary file (C++ absl/oneDNN lines at import time).

    Used only around ``import litert_torch``: native libraries log there before any Python
    setting can reach them. The captured text is kept for error messages.
    """
    captured = _Captured()
    fd = 2  # the C++ side writes to the descriptor, whatever sys.stderr is
    try:
        os.fstat(fd)
    except OSError:  # no stderr at all (daemon): nothing to capture
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    os.dup2(captured._file.fileno(), fd)
    try:
        yield captured
    finally:
        sys.stderr.flush()
        os.dup2(saved, fd)
        os.close(saved)
        captured._file.seek(0)
        captured._text = captured._file.read().decode(errors="replace")
        captured._file.close()
