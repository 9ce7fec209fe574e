"""OpenVINO backend: IR (.xml + .bin) in fp32, fp16 (compressed weights) and INT8 (NNCF PTQ).

Export
    * torch source: ``openvino.convert_model(module, example_input=..., input=[shape])``; the
      input is renamed ``"input"`` and the output ``"logits"``.
    * onnx source: ``openvino.convert_model(path)``; the single float32 input must fit
      ``spec.input_shape(1)``; symbolic dims (a dynamic batch) are fixed to the spec's values
      with ``Model.reshape``, so every artifact is static batch-1, as with the torch source.
    * fp32: ``save_model(compress_to_fp16=False)``; fp16: ``compress_to_fp16=True`` (weights
      stored as fp16, decompressed at load on x86).
    * int8: ``nncf.quantize`` on the converted fp32 model, calibration items streamed through
      ``nncf.Dataset`` (``subset_size`` = all of them). Calibration methods: ``minmax`` = NNCF's
      default range estimators (activations: mean over images of per-image min/max, weights:
      min/max), or with ``QuantOptions.activation_ranges="global"`` ``MINMAX`` for activations
      (the min/max over all images, as ORT and LiteRT calibrate by default); ``percentile`` =
      ``RangeEstimatorParametersSet.MEAN_QUANTILE`` (mean over images of the per-image 0.01 % /
      99.99 % quantiles). ``entropy`` (KL) has no NNCF counterpart and
      is rejected: NNCF's ``HISTOGRAM`` estimator minimises L2 quantization error, which is a
      different method. NNCF's PTQ has no random component, so ``options.seed`` has nothing to
      seed; the result is byte-identical for identical inputs. Preset: NNCF's ``MIXED``
      (asymmetric activations, symmetric per-channel weights), the scheme the ONNX Runtime and
      LiteRT exports use too; see ``OpenVINOBackend``.

Determinism: OpenVINO names a model "Model<N>" and every unnamed node "<Type>_<N>" from
process-wide counters, so two identical exports in one process gave different .xml files. The
model is named after the artifact stem and auto-named nodes are renamed by their position in
topological order before saving; the .xml and .bin are then byte-identical.

Open
    ``Core().compile_model(path, "CPU", config)`` with ``PERFORMANCE_HINT=LATENCY``,
    ``INFERENCE_NUM_THREADS`` (when given) and an explicit ``INFERENCE_PRECISION_HINT``: f32 for
    every artifact on x86 (on CPUs with AVX512_BF16 or AMX the CPU plugin otherwise silently
    computes in bf16: measured max |Δlogit| 0.28 instead of 1e-5 for mobilenetv2 here), and for
    fp32/int8 artifacts on ARM; fp16 artifacts on ARM keep the plugin's fp16 default. The
    precision actually used is read back into ``Session.inference_precision``. INT8 artifacts
    are compiled with ``SNIPPETS_MODE=DISABLE``: with one inference thread, OpenVINO 2026.4 fuses
    a quantized FC -> ReLU -> FakeQuantize -> FC head into a Snippets subgraph that outputs
    zeros (found on dsconv_cbam_gap INT8; see ``OpenVINOSession``).

Telemetry: OpenVINO's model converter and NNCF send usage telemetry (Google Analytics) by
default and ``import openvino`` alone writes ``~/intel/stats``. This module makes
``openvino_telemetry`` unimportable before OpenVINO is imported, so both fall back to their
built-in no-op stubs (nothing downloads or uploads at run time).
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.base import (
    CALIBRATION_METHODS,
    Artifact,
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
from edgekit.manifest import FastPath, OffPathOp
from edgekit.quantize.sensitivity import ErrorAccumulator, LayerError, rank

NAME = "openvino"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_PRECISION_KEY = ["edgekit", "precision"]  # rt_info path recording the artifact precision
_SUPPORTED_METHODS = ("minmax", "percentile")
_RANGE_ESTIMATORS = {"mean": "MEAN_MINMAX (NNCF's default)", "global": "MINMAX"}
_PRESETS = ("performance", "mixed")
_ARM_MACHINES = ("aarch64", "arm64", "armv7l", "armv8l")
_INSTALL_HINT = "pip install 'edgekit[openvino]'"
_EXPORT_HINT = "pip install 'edgekit[torch,openvino]' plus nncf for int8 ('edgekit[compress]')"


def disable_telemetry() -> None:
    """Keep OpenVINO and NNCF from collecting and sending usage telemetry in this process."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # → ImportError
        return
    if sys.modules["openvino_telemetry"] is None:
        return
    # Imported before us (by the user): swap the already-bound objects for the stubs.
    ovc = sys.modules.get("openvino.tools.ovc.telemetry_utils")
    if ovc is not None:
        from openvino.tools.ovc import telemetry_stub

        for module in ("openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.convert_impl"):
            if module in sys.modules and hasattr(sys.modules[module], "tm"):
                sys.modules[module].tm = telemetry_stub
    for module in ("nncf.telemetry.wrapper", "nncf.telemetry.decorator"):
        if module in sys.modules:
            from nncf.telemetry.wrapper import NNCFTelemetryStub

            sys.modules[module].telemetry = NNCFTelemetryStub()


def _is_arm() -> bool:
    return platform.machine().lower() in _ARM_MACHINES


# ------------------------------------------------------------------------------------ session
class OpenVINOSession(Session):
    """A compiled IR on the CPU plugin with one preallocated infer request."""

    def __init__(self, path: Path, threads: int | None = None,
                 options: dict[str, Any] | None = None) -> None:
        disable_telemetry()
        import openvino as ov

        if threads is not None and int(threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        core = ov.Core()
        model = core.read_model(str(path))
        self.path = Path(path)
        self.artifact_precision = _artifact_precision(model)
        wanted = "f16" if (self.artifact_precision == "fp16" and _is_arm()) else "f32"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": wanted}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        config.update({str(k): v for k, v in (options or {}).items()})  # a target's options win
        self.snippets_disabled = False
        if self.artifact_precision == "int8":
            # OpenVINO 2026.4 CPU plugin: with INFERENCE_NUM_THREADS=1 it fuses a quantized
            # FC -> ReLU -> FakeQuantize -> FC head into one Snippets "MLP sequence" subgraph
            # that returns all zeros (dsconv_cbam_gap INT8). Without Snippets the zoo's INT8
            # latencies measured the same within noise, except mobilenetv2 at 128 px
            # (0.96 -> 1.16 ms, 1 thread), so INT8 artifacts compile without Snippets.
            try:
                self._compiled = core.compile_model(model, "CPU",
                                                    {**config, "SNIPPETS_MODE": "DISABLE"})
                self.snippets_disabled = True
            except RuntimeError:  # a plugin build without the (internal) property
                self._compiled = core.compile_model(model, "CPU", config)
        else:
            self._compiled = core.compile_model(model, "CPU", config)
        used = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision: str = getattr(used, "get_type_name", lambda: str(used))()
        self.threads: int = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        port = self._compiled.inputs[0]
        self.input_name: str = port.get_any_name() if port.get_names() else "0"
        self.input_shape: list[int] = [
            d.get_length() if d.is_static else (1 if i == 0 else -1)
            for i, d in enumerate(port.get_partial_shape())]
        self._request = self._compiled.create_infer_request()

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        outputs = self._request.infer({0: x})
        return np.array(outputs[0], dtype=np.float32, copy=True)

    def bind(self, x: np.ndarray) -> Callable[[], Any]:
        """The bare inference call on a fixed input shared with the request (no copies)."""
        import openvino as ov

        self._bound = x  # the tensor shares x's memory: keep x alive
        self._request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        return self._request.infer


# fast_path: layers that carry the arithmetic (float in an INT8 IR is slow), and layers that only
# move data, whose "ref" primitive is the plugin's ordinary copy (not a slow reference kernel)
_COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected",
                   "MatMul")
_INT_TYPES = ("i8", "u8", "I8", "U8")
_DATA_LAYERS = ("Concatenation", "Reshape", "Squeeze", "Unsqueeze", "Split", "Input", "Output",
                "Const", "Reorder")


def _artifact_precision(model: Any) -> str:
    if model.has_rt_info(_PRECISION_KEY):
        value = model.get_rt_info(_PRECISION_KEY)
        return str(value.astype(str) if hasattr(value, "astype") else value)
    return _constant_precision(model)


def _constant_precision(model: Any) -> str:
    """An IR's precision from its constants' element types (IRs without edgekit's tag)."""
    types = {op.get_output_element_type(0).get_type_name()
             for op in model.get_ops() if op.get_type_name() == "Constant"}
    if "i8" in types or "u8" in types:
        return "int8"
    return "fp16" if "f16" in types else "fp32"


# ------------------------------------------------------------------------------------ backend
@dataclass(frozen=True)
class OpenVINOBackend(QuietHooks):
    """OpenVINO plugin. ``BACKEND`` is the default instance; variants via
    ``dataclasses.replace(BACKEND, preset="mixed")``.

    ``preset="mixed"`` (edgekit's default): symmetric per-channel weights, asymmetric
    activations, as ONNX Runtime's U8 QDQ and LiteRT's PT2E activations are; ``"performance"``
    (NNCF's own default for CNNs) makes activations symmetric too. Measured on the Kaggle
    MobileNetV2-0.35 over 12 calibration draws on 965 unseen images: top-1 change −0.38 ± 0.21
    points with mixed vs −0.69 ± 0.29 with performance, better on 9 of 12 draws (paired t
    p = 0.02; ``benchmarks/results/int8_draws_mnv2_presets12.md``); dsconv_cbam_gap 96 px:
    −0.97 vs −1.15 over 8 draws. Latency, mixed ÷ performance: 0.94–1.01 on the seed models
    and 1.11 on MobileNetV2 224 px (``benchmarks/results/openvino_preset_latency.md``).
    NNCF's default overflow fix (first layer quantized with half the range on non-VNNI x86)
    is kept. ``ignored_types`` keeps whole op types (e.g. ``"Sigmoid"``)
    in float via ``nncf.IgnoredScope``.
    """

    name: str = NAME
    extra: str = "openvino"
    suffix: str = ".xml"
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    sources: tuple[str, ...] = ("torch", "torchscript", "onnx", "keras")
    preset: str = "mixed"
    ignored_types: tuple[str, ...] = ()

    # facts (class constants, not dataclass fields: a variant is the same runtime)
    label = "ov"
    title = "OpenVINO"
    colour = "#1f77b4"
    packages = (("openvino", "openvino"),)
    module = "openvino"
    converter_packages = ("openvino", "nncf")
    slow_export = False
    # The ARM CPU plugin has little INT8 support: it computes INT8 models in fp16.
    int8_as_fp16_on_arm = True
    activation_ranges = "mean"  # NNCF's MEAN_MINMAX (benchmarks: int8_draws_mnv2_ranges)
    # NNCF's full bias correction (per-layer statistics after quantization) repairs spread
    # damage that no single float layer does: a MobileNetV2's agreement 0.867 -> 0.908
    # (benchmarks/int8_remedies.py)
    rescue_options = (("full bias correction", {"fast_bias_correction": False}),)

    def arm_failure_hint(self, message: str, cpu: str, features: Collection[str]) -> str | None:
        if "object is not initialized" in message and "fphp" not in features:
            return (f"OpenVINO's ARM CPU plugin asks oneDNN for an fp16 convolution in this INT8 "
                    f"model, and oneDNN has no fp16 kernel on a CPU without fp16 arithmetic such "
                    f"as the {cpu}; use the LiteRT or ONNX Runtime artifact there")
        return None

    # --------------------------------------------------------------------------- protocol
    def available(self) -> str | None:
        if importlib.util.find_spec("openvino") is None:
            return _INSTALL_HINT
        return None

    def open(self, path: Path, threads: int | None = None,
             options: dict[str, Any] | None = None) -> OpenVINOSession:
        if importlib.util.find_spec("openvino") is None:
            raise BackendUnavailable(f"openvino is not installed: {_INSTALL_HINT}")
        path = Path(path)
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise DataError(f"{path}: OpenVINO IR needs both {path.name} and "
                            f"{path.with_suffix('.bin').name}")
        return OpenVINOSession(path, threads, options)

    def fast_path(self, path: Path, precision: str) -> FastPath:
        """Layers of the IR at ``path`` that the CPU plugin runs off its fast kernels, read from
        the compiled model's runtime graph (``get_runtime_model()``: each node's
        ``layerType``, ``runtimePrecision`` and ``primitiveType``), compiled as ``open``
        compiles it: a reference implementation (``ref*``) of a layer that computes, or in an
        INT8 IR a convolution / fully connected / matmul computing in floating point."""
        if importlib.util.find_spec("openvino") is None:
            return FastPath(status="unknown", checked=f"openvino is not installed: "
                                                      f"{_INSTALL_HINT}")
        import openvino as ov

        session = self.open(Path(path))
        off = []
        for op in session._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()

            def get(key: str, info: Any = info) -> str:
                return str(info[key].astype(str)) if key in info else ""

            layer, runtime, primitive = (get("layerType"), get("runtimePrecision"),
                                         get("primitiveType"))
            node = get("originalLayersNames") or op.get_friendly_name()
            if precision == "int8" and layer in _COMPUTE_LAYERS and runtime not in _INT_TYPES:
                off.append(OffPathOp(op=layer, node=node, reason=(
                    f"computes in {runtime} inside an INT8 model ({primitive})")))
            elif primitive.startswith("ref") and layer not in _DATA_LAYERS:
                off.append(OffPathOp(op=layer, node=node, reason=(
                    f"reference implementation ({primitive}), not a JIT kernel")))
        return FastPath(status="off" if off else "clean", ops=tuple(off),
                        checked=f"OpenVINO {ov.get_version()} CPU plugin, "
                                f"{session.inference_precision} inference precision: runtime "
                                "model's layer types, runtime precisions and primitive types")

    def export(self, request: ExportRequest) -> Artifact:
        self._validate(request)
        disable_telemetry()
        import openvino as ov

        model = request.model
        out_dir = Path(request.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        xml = out_dir / f"{request.stem}{self.suffix}"
        binary = xml.with_suffix(".bin")
        notes: list[str] = []
        quantization: dict[str, Any] = {}
        ov_model = self._float_model(model, notes)
        shape = tuple(model.spec.input_shape(1))
        if request.precision == "int8":
            ov_model, quantization = self._quantize(ov_model, request)
        ov_model.set_friendly_name(request.stem)
        _canonical_names(ov_model)
        ov_model.set_rt_info(request.precision, _PRECISION_KEY)
        input_name = ov_model.inputs[0].get_any_name()
        with tempfile.TemporaryDirectory(prefix="edgekit-ov-") as tmp_name:
            tmp_xml = Path(tmp_name) / "model.xml"
            try:
                ov.save_model(ov_model, str(tmp_xml),
                              compress_to_fp16=request.precision == "fp16")
            except Exception as exc:
                raise ExportError(f"openvino: saving the IR of {model.name} failed: "
                                  f"{first_line(exc)}") from exc
            try:
                shutil.copyfile(tmp_xml, xml)
                shutil.copyfile(tmp_xml.with_suffix(".bin"), binary)
            except BaseException:
                xml.unlink(missing_ok=True)
                binary.unlink(missing_ok=True)
                raise
        notes += self._notes(request.precision)
        return Artifact(backend=self.name, precision=request.precision, path=xml,
                        files=[xml, binary], input_name=input_name, input_shape=list(shape),
                        input_dtype="float32", output_dtype="float32",
                        layout=model.spec.layout, quantization=quantization, notes=notes)

    # ------------------------------------------------------------------------- validation
    def _validate(self, request: ExportRequest) -> None:
        check_request(self, request)
        kind = request.model.kind
        if request.options.int8_io:
            raise ConfigError(f"Backend {self.name!r} has float32 input/output only; int8_io is "
                              "a TFLite option")
        if self.preset not in _PRESETS:
            raise ConfigError(f"Backend {self.name!r}: preset must be one of "
                              f"{', '.join(_PRESETS)}, got {self.preset!r}")
        if request.precision == "int8":
            method = request.options.method
            if method not in _SUPPORTED_METHODS:
                why = (" (NNCF has no KL-divergence range estimator; its HISTOGRAM estimator "
                       "minimises L2 error instead)" if method == "entropy" else "")
                raise ConfigError(f"Calibration method {method!r} is not supported by backend "
                                  f"{self.name!r}{why}; supported: "
                                  f"{', '.join(_SUPPORTED_METHODS)} (edgekit knows "
                                  f"{', '.join(CALIBRATION_METHODS)})")
        missing = [m for m in ("openvino",) if importlib.util.find_spec(m) is None]
        if kind in ("torch", "torchscript"):
            missing += [m for m in ("torch",) if importlib.util.find_spec(m) is None]
        if request.precision == "int8" and importlib.util.find_spec("nncf") is None:
            missing.append("nncf")
        if missing:
            raise BackendUnavailable(f"Exporting with {self.name!r} needs {', '.join(missing)}: "
                                     f"{_EXPORT_HINT}")

    # ---------------------------------------------------------------------------- sources
    def _float_model(self, model: Any, notes: list[str]) -> Any:
        """The converted fp32 model with counter-based node names made canonical, so that a
        second conversion in the same process names every node the same (``keep_float`` and
        ``layer_sensitivity`` refer to nodes by these names)."""
        ov_model = (self._from_torch(model) if model.kind in ("torch", "torchscript")
                    else self._from_onnx(model, notes))
        _canonical_names(ov_model)
        return ov_model

    def _from_torch(self, model: Any) -> Any:
        import openvino as ov
        import torch

        shape = tuple(model.spec.input_shape(1))
        module = model.module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                ov_model = ov.convert_model(module, example_input=torch.zeros(shape),
                                            input=[shape])
        except Exception as exc:
            raise ExportError(_describe_conversion_failure(exc, model.name)) from exc
        finally:
            module.train(was_training)
        _check_io(ov_model, model.name)
        ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
        ov_model.get_parameters()[0].set_friendly_name(INPUT_NAME)
        ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
        return ov_model

    def _from_onnx(self, model: Any, notes: list[str]) -> Any:
        import openvino as ov

        source = onnx_source_file(model)  # a Keras source is converted (tf2onnx) on first use
        try:
            ov_model = ov.convert_model(str(source))
        except Exception as exc:
            raise ExportError(_describe_conversion_failure(exc, str(source))) from exc
        _check_io(ov_model, str(source))
        port = ov_model.inputs[0]
        expected = tuple(model.spec.input_shape(1))
        if port.get_element_type().get_type_name() != "f32":
            raise ConfigError(f"{source}: input {port.get_any_name()!r} must be float32, got "
                              f"{port.get_element_type().get_type_name()}")
        partial = port.get_partial_shape()
        if partial.rank.is_dynamic or partial.rank.get_length() != len(expected):
            raise ConfigError(f"{source}: input {port.get_any_name()!r} has shape {partial}; the "
                              f"preprocessing spec gives {list(expected)}")
        dynamic = []
        for i, (dim, want) in enumerate(zip(partial, expected, strict=True)):
            if dim.is_static and dim.get_length() != want:
                raise ConfigError(f"{source}: input {port.get_any_name()!r} has shape {partial}, "
                                  f"which does not fit the preprocessing spec's {list(expected)} "
                                  "(check the spec's input size and layout)")
            if dim.is_dynamic:
                dynamic.append(i)
        if dynamic:
            try:
                ov_model.reshape({port: ov.PartialShape(list(expected))})
            except Exception as exc:
                raise ExportError(f"openvino: cannot fix the dynamic input of {source} to "
                                  f"{list(expected)}: {first_line(exc)}") from exc
            notes.append(f"The source's dynamic input dims {dynamic} (0 = batch) were fixed to "
                         f"{list(expected)} (static batch-1 artifact).")
        return ov_model

    # ------------------------------------------------------------------------------- int8
    def _quantize(self, ov_model: Any, request: ExportRequest) -> tuple[Any, dict[str, Any]]:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        disable_telemetry()  # nncf may have been imported (with telemetry) by someone else
        calibration = request.calibration
        assert calibration is not None
        options = request.options
        advanced = AdvancedQuantizationParameters()
        ranges = options.ranges(self.activation_ranges)
        if options.method == "percentile":
            advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MEAN_QUANTILE
        elif ranges == "global":
            advanced.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
        if not options.per_channel:
            advanced.weights_quantization_params = QuantizationParameters(per_channel=False)
        preset = (nncf.QuantizationPreset.PERFORMANCE if self.preset == "performance"
                  else nncf.QuantizationPreset.MIXED)
        keep = list(options.keep_float)
        if keep:
            known = {op.get_friendly_name() for op in ov_model.get_ops()}
            unknown = sorted(set(keep) - known)
            if unknown:
                raise ConfigError(f"openvino: cannot keep {', '.join(unknown)} in float: no such "
                                  f"node in {request.model.name} (names come from "
                                  "layer_sensitivity)")
        names = _keep_float_ops(ov_model, keep) if keep else []
        ignored = (nncf.IgnoredScope(names=names, types=list(self.ignored_types),
                                     validate=False)
                   if self.ignored_types or keep else None)
        dataset = nncf.Dataset(_Stream(calibration))
        log = logging.getLogger("nncf")
        level = log.level
        try:
            if keep:  # one INFO line per kept op and per skipped quantizer: a rescue's noise
                log.setLevel(max(level, logging.WARNING))
            quantized = nncf.quantize(ov_model, dataset, subset_size=len(calibration),
                                      fast_bias_correction=options.fast_bias_correction,
                                      preset=preset, ignored_scope=ignored,
                                      advanced_parameters=advanced)
        except EdgekitError:  # e.g. a DataError from the calibration stream
            raise
        except Exception as exc:
            raise ExportError(f"openvino: NNCF INT8 quantization of {request.model.name} "
                              f"failed: {first_line(exc)}") from exc
        finally:
            log.setLevel(level)
        return quantized, {
            "tool": f"nncf {nncf.__version__}",
            "preset": self.preset,
            "calibration_method": options.method,
            "range_estimator": ("MEAN_QUANTILE" if options.method == "percentile"
                                else f"activations {_RANGE_ESTIMATORS[ranges]}, weights MINMAX"),
            "activation_ranges": ranges,
            "per_channel": bool(options.per_channel),
            "fast_bias_correction": bool(options.fast_bias_correction),
            "calibration_images": len(calibration),
            "ignored_types": list(self.ignored_types),
            "keep_float": keep,
            "excluded_nodes": sorted(names),  # NNCF IgnoredScope names: keep_float's islands
            # NNCF's quantizers left in the graph: 0 means every op stayed float
            "quantized_ops": sum(1 for op in quantized.get_ops()
                                 if op.get_type_name() == "FakeQuantize"),
        }

    # ------------------------------------------------------------------------ sensitivity
    def layer_sensitivity(self, request: ExportRequest, int8_path: Path,
                          images: np.ndarray) -> list[LayerError]:
        """Every quantized op of the INT8 model, ranked by the error it adds
        (``edgekit.quantize.sensitivity``) on ``images`` (no labels). An op's error is taken
        where its consumers read it — after the FakeQuantize NNCF put on its output, if any —
        so ``added`` is the damage of its weights and of quantizing its output, which keeping
        it in float (the op and the consumers of its output, ``_keep_float_ops``) removes.
        The saved IR's names are renumbered, so both graphs are rebuilt in memory from
        ``request`` — the fp32 model and the same (deterministic) NNCF quantization of it —
        and compared op by op (friendly names), computed in f32. ``int8_path`` is not read."""
        del int8_path
        fp32 = self._float_model(request.model, [])
        int8, _ = self._quantize(self._float_model(request.model, []), request)
        float_ops = {op.get_friendly_name(): op for op in fp32.get_ops()}
        nodes, seen = _fq_view(int8, set(float_ops))
        names = sorted(seen)
        acc = ErrorAccumulator.over(images, names,
                                    _probe(fp32, [float_ops[n].output(0) for n in names]),
                                    _probe(int8, [seen[n] for n in names]))
        rows = []
        for op, sources in nodes:
            out = acc.error(op.get_friendly_name())
            if out is None:
                continue
            before = max([acc.error(t) or 0.0 for t in sources] + [0.0])
            rows.append(LayerError(op.get_friendly_name(), op.get_type_name(), out, out - before))
        return rank(rows)

    @staticmethod
    def _notes(precision: str) -> list[str]:
        notes = ["Open with INFERENCE_PRECISION_HINT=f32 on x86: on CPUs with AVX512_BF16/AMX "
                 "the CPU plugin otherwise computes in bf16 and fp32 parity breaks."]
        if precision == "fp16":
            notes.append("fp16 = weights stored in fp16 (compress_to_fp16=True); x86 "
                         "decompresses them and computes in f32. OpenVINO on ARM computes in "
                         "fp16 by default (INFERENCE_PRECISION_HINT=f16).")
        if precision == "int8":
            notes.append("INT8 via NNCF FakeQuantize: on x86 the CPU plugin runs int8 kernels "
                         "(VNNI/AMX where present); OpenVINO on ARM runs INT8 models as fp16 "
                         "(no int8 speed-up there). The IR's .xml grows with every FakeQuantize, "
                         "so for very small models xml+bin can exceed the fp32 IR.")
            notes.append("Compile INT8 IRs with SNIPPETS_MODE=DISABLE (edgekit's session does): "
                         "OpenVINO 2026.4 with INFERENCE_NUM_THREADS=1 can fuse a quantized "
                         "FC-ReLU-FakeQuantize-FC head into a Snippets subgraph that outputs "
                         "zeros.")
        return notes


class _Stream:
    """Re-iterable, sized view of CalibrationData yielding contiguous float32 arrays."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def __iter__(self) -> Any:
        return iter_calibration(self._data)

    def __len__(self) -> int:
        return len(self._data)


# ------------------------------------------------------------------------------------ helpers
_NOT_LAYERS = ("FakeQuantize", "Constant", "Parameter", "Result", "Convert")
# ops NNCF moves a FakeQuantize across (one quantization shared through them)
_PASS_THROUGH = ("Relu", "Clamp", "MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                 "Concat")


def _consumers(op: Any) -> list[Any]:
    return [t.get_node() for out in op.outputs() for t in out.get_target_inputs()]


def _fq_view(ov_model: Any, float_names: set[str]) -> tuple[list[tuple[Any, list[str]]],
                                                             dict[str, Any]]:
    """The quantized ops of an NNCF model and what to compare. ``seen``: for every op with a
    float output that the float model also has, the output its consumers read (a FakeQuantize
    on it, else its own). Nodes: ops that read a FakeQuantize output or whose output is
    fake-quantized, with the ops their activation inputs come from (a FakeQuantize of a
    constant is a weight)."""
    seen: dict[str, Any] = {}
    for op in ov_model.get_ordered_ops():
        name = op.get_friendly_name()
        if (op.get_type_name() in _NOT_LAYERS[1:] and op.get_type_name() != "Parameter") \
                or name not in float_names or op.get_output_size() < 1 \
                or op.get_output_element_type(0).get_type_name() != "f32":
            continue
        fq = [c for c in _consumers(op) if c.get_type_name() == "FakeQuantize"]
        seen[name] = fq[0].output(0) if fq else op.output(0)
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in _NOT_LAYERS:
            continue
        quantized = any(c.get_type_name() == "FakeQuantize" for c in _consumers(op))
        sources = []
        for port in op.inputs():
            src = port.get_source_output().get_node()
            if src.get_type_name() != "FakeQuantize":
                if src.get_friendly_name() in seen:
                    sources.append(src.get_friendly_name())
                continue
            quantized = True
            data = src.inputs()[0].get_source_output().get_node()
            if data.get_type_name() not in ("Constant", "Convert"):
                sources.append(data.get_friendly_name())
        if quantized:
            found.append((op, sources))
    return found, seen


def _is_constant(op: Any) -> bool:
    """A Constant, or a shape/type change of constants only (a bias is Constant → Reshape)."""
    if op.get_type_name() == "Constant":
        return True
    return op.get_type_name() in ("Reshape", "Convert", "Unsqueeze", "Squeeze", "Broadcast") \
        and all(_is_constant(p.get_source_output().get_node()) for p in op.inputs())


def _keep_float_ops(ov_model: Any, keep: list[str]) -> list[str]:
    """The op names to hand NNCF's IgnoredScope so that each of ``keep`` runs in float with
    float inputs and a float output: the op, the producers of its inputs and the consumers of
    its output (NNCF quantizes a tensor at its consumers' inputs), following pass-through ops
    (ReLU, MaxPool, Reshape …) that NNCF moves a FakeQuantize across and, backwards, a
    convolution's bias Add to the convolution (else NNCF's fast bias correction rewrites the
    bias of a producer that feeds the kept op, measured to cost a 0.975 → 0.6 agreement)."""
    by_name = {op.get_friendly_name(): op for op in ov_model.get_ops()}

    def producers(op: Any) -> list[Any]:
        found = [p.get_source_output().get_node() for p in op.inputs()]
        if op.get_type_name() == "Add" and any(_is_constant(f) for f in found):
            return found  # a bias Add: its convolution/matmul keeps its inputs company
        return found if op.get_friendly_name() == name or \
            op.get_type_name() in _PASS_THROUGH else []

    out: list[str] = []
    for name in keep:
        for step in (_consumers, producers):
            frontier = [by_name[name]]
            while frontier:
                op = frontier.pop()
                if op.get_type_name() in _NOT_LAYERS:
                    continue
                if op.get_friendly_name() not in out:
                    out.append(op.get_friendly_name())
                if step is producers:
                    frontier += [c for c in producers(op) if c.get_friendly_name() not in out]
                elif op.get_friendly_name() == name or op.get_type_name() in _PASS_THROUGH:
                    frontier += [c for c in step(op) if c.get_friendly_name() not in out]
    return out


def _probe(ov_model: Any, ports: list[Any]) -> Callable[[np.ndarray], list[Any]]:
    """Compile ``ov_model`` in f32 with ``ports`` (outputs of its ops) added as model outputs:
    a function of one input row giving those outputs in order."""
    import openvino as ov

    ov_model.add_outputs(ports)  # a port that already is an output is not added twice

    def key(port: Any) -> tuple[str, int]:
        return port.get_node().get_friendly_name(), port.get_index()

    where: dict[tuple[str, int], int] = {}
    for i, result in enumerate(ov_model.get_results()):  # compiled outputs keep this order
        where.setdefault(key(result.input(0).get_source_output()), i)
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                         "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    outputs = [compiled.outputs[where[key(port)]] for port in ports]

    def run(row: np.ndarray) -> list[Any]:
        result = request.infer({0: row})
        return [np.array(result[o], copy=True) for o in outputs]

    return run


_AUTO_NAME = re.compile(r"\b([A-Z][A-Za-z0-9]*)_(\d+)\b")


def _canonical_names(ov_model: Any) -> None:
    """Renumber counter-based name tokens ("Constant_208", "Multiply_62895/fq_weights_1").

    OpenVINO names unnamed nodes "<Type>_<N>" from a process-wide counter, and transformations
    and NNCF copy such names into derived ones. Every such token is renumbered by its first
    appearance in topological order, so identical exports in one process give identical IR.
    """
    mapping: dict[str, str] = {}

    def renumber(match: re.Match[str]) -> str:
        token = match.group(0)
        if token not in mapping:
            mapping[token] = f"{match.group(1)}_{len(mapping)}"
        return mapping[token]

    for op in ov_model.get_ordered_ops():
        name = op.get_friendly_name()
        new = _AUTO_NAME.sub(renumber, name)
        if new != name:
            op.set_friendly_name(new)


def _check_io(ov_model: Any, what: str) -> None:
    if len(ov_model.inputs) != 1 or len(ov_model.outputs) != 1:
        raise ConfigError(f"{what}: edgekit exports single-input, single-output classifiers; "
                          f"this model has {len(ov_model.inputs)} inputs and "
                          f"{len(ov_model.outputs)} outputs")


def _describe_conversion_failure(exc: BaseException, what: str) -> str:
    text = str(exc)
    match = re.search(r"No conversion rule found for operations:\s*([^\n]+)", text)
    ops = match.group(1).strip() if match else None
    if ops is None:
        match = re.search(r"Failed operations detailed log:\s*\n--\s*(\S+)", text)
        ops = match.group(1) if match else None
    if ops:
        return (f"openvino: operator(s) {ops} in {what} cannot be converted to OpenVINO IR "
                "(no conversion rule in this OpenVINO version)")
    detail = next((ln.strip() for ln in text.splitlines()
                   if ln.strip() and not ln.startswith("Check ")), type(exc).__name__)
    return f"openvino: converting {what} failed: {detail[:400]}"


BACKEND = OpenVINOBackend()
