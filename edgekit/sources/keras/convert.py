"""Convert a cleaned Keras model: ONNX with tf2onnx (opset 17, NHWC float32 input "input",
dynamic batch, output "output"), checked to load in ONNX Runtime; TFLite with
``tf.lite.TFLiteConverter`` from a frozen batch-1 concrete function (fp32, fp16 weights, or
full-integer INT8 calibrated on the representative images). Every converter failure becomes one
ExportError naming the backend and, where the converter says it, the TensorFlow op."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ConfigError, DataError, EdgekitError, ExportError
from edgekit.sources.keras.runtime import fd2_silenced, first_line, import_tf, import_tf2onnx, quiet

if TYPE_CHECKING:
    from edgekit.sources.keras.model import KerasModel

OPSET = 17


INPUT_NAME = "input"


OUTPUT_NAME = "output"


_TF_OP = re.compile(r"'tf\.([A-Za-z0-9_]+)' op|Tensorflow op \[[^\]]*: ([A-Za-z0-9_]+)\]|"
                    r"Unsupported ops?: Counter\(\{'([A-Za-z0-9_]+)'|\bop(?:erator)? "
                    r"'?([A-Z][A-Za-z0-9_]+)'? is not supported")


def _op_in(text: str) -> str | None:
    m = _TF_OP.search(text)
    return next((g for g in m.groups() if g), None) if m else None


def _onnx_error(name: str, exc: BaseException) -> ExportError:
    op = _op_in(f"{exc}")
    what = f"Backend 'onnxruntime': converting the Keras model {name} to ONNX with tf2onnx failed"
    if op:
        return ExportError(f"{what}: TensorFlow op {op} has no ONNX conversion "
                           f"({first_line(exc)})")
    return ExportError(f"{what}: {first_line(exc)}")


def _tflite_error(name: str, precision: str, exc: BaseException, log: str = "") -> ExportError:
    op = _op_in(f"{exc}\n{log}")
    what = (f"Backend 'litert': converting the Keras model {name} to TFLite ({precision}) with "
            "tf.lite.TFLiteConverter failed")
    if op:
        return ExportError(f"{what}: TensorFlow op {op} has no TFLite builtin kernel "
                           f"({first_line(exc)}); replace the layer that makes it or use the "
                           "onnxruntime/openvino backends")
    return ExportError(f"{what}: {first_line(exc)}")


def _rename_io(proto: Any, which: str, new: str) -> None:
    """Rename the graph's single ``which`` ("input" or "output") to ``new`` (``input:0`` →
    ``input``), in every node that uses it."""
    graph = proto.graph
    ports = graph.input if which == "input" else graph.output
    if len(ports) != 1 or ports[0].name == new:
        return
    if any(new in (list(n.input) + list(n.output)) for n in graph.node):
        return
    old = ports[0].name
    ports[0].name = new
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new


def _check_onnx(proto: Any, name: str) -> None:
    """ExportError naming ops tf2onnx left unconverted (it keeps TF op names in the default
    domain and only logs) and anything ONNX Runtime refuses to load."""
    import onnx

    unknown = sorted({n.op_type for n in proto.graph.node
                      if not onnx.defs.has(n.op_type, n.domain or "")})
    if unknown:
        raise ExportError(
            f"Backend 'onnxruntime': the ONNX graph tf2onnx made from {name} still holds "
            f"TensorFlow op(s) {', '.join(unknown)} with no ONNX equivalent, so ONNX Runtime "
            "cannot load it. Replace the layer that makes them, or try the litert backend "
            "(TensorFlow's TFLite converter has kernels for more TensorFlow ops).")
    try:
        import onnxruntime as ort
    except ImportError:
        return
    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated classes
        raise ExportError(f"Backend 'onnxruntime': ONNX Runtime cannot load the ONNX graph "
                          f"made from {name}: {first_line(exc)}") from exc


def convert_to_onnx(km: KerasModel, path: str | Path, size: tuple[int, int] | None = None) -> Path:
    """tf2onnx (opset 17): NHWC float32 input "input" with a dynamic batch, output "output".
    The file is checked to load in ONNX Runtime (when installed); ExportError naming the
    operator otherwise."""
    import_tf()
    tf2onnx = import_tf2onnx()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fn, spec = km.concrete(None, size)
    try:
        with quiet(), fd2_silenced():  # grappler's C++ session lines
            # Frozen first: tf2onnx's from_function turns captured tensors (a Keras 3
            # Normalization's mean/variance) into extra graph inputs instead of constants.
            from tensorflow.python.framework.convert_to_constants import (
                convert_variables_to_constants_v2,
            )

            frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
            proto, _ = tf2onnx.convert.from_graph_def(
                frozen.graph.as_graph_def(), input_names=[frozen.inputs[0].name],
                output_names=[o.name for o in frozen.outputs], opset=OPSET)
    except EdgekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - every converter failure becomes one error
        raise _onnx_error(km.name, exc) from exc
    _rename_io(proto, "input", INPUT_NAME)
    _rename_io(proto, "output", OUTPUT_NAME)
    _check_onnx(proto, km.name)
    import onnx

    onnx.save(proto, str(path))
    return path


def convert_to_tflite(km: KerasModel, path: str | Path, *, precision: str, calibration: Iterable[Any] | None = None,
              int8_io: bool = False, size: tuple[int, int] | None = None,
              per_channel: bool = True) -> dict[str, Any]:
    """``tf.lite.TFLiteConverter`` from a batch-1 concrete function.

    ``fp32``: plain conversion. ``fp16``: float16 weights (``supported_types=[float16]``).
    ``int8``: full-integer post-training quantization calibrated on ``calibration``
    (re-iterable (1, H, W, C) float32 items in the model's input range): int8 weights
    (per-channel unless ``per_channel=False``) and int8 activations; float32 I/O with
    QUANTIZE/DEQUANTIZE at the boundary, or int8 I/O with ``int8_io``. Returns the facts
    for the manifest."""
    tf, _ = import_tf()
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"TFLite precision must be fp32, fp16 or int8, not {precision!r}")
    if int8_io and precision != "int8":
        raise ConfigError(f"int8_io (integer input/output tensors) needs precision 'int8', "
                          f"not {precision!r}")
    if precision == "int8" and calibration is None:
        raise ConfigError("int8 TFLite export needs calibration data (representative "
                          "preprocessed images); none was given")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fn, spec = km.concrete(1, size)
    shape = tuple(int(d) if d is not None else -1 for d in spec.shape)
    if -1 in shape:
        raise ConfigError(f"{km.path} does not fix its input size: give the size to export")
    facts: dict[str, Any] = {
        "converter": f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__})",
        "from": ("concrete function of the SavedModel serving graph"
                 if km.flavor == "saved_model" else
                 f"concrete function of the cleaned {km.flavor} model (training=False)"),
        "input_shape": list(shape), "optimizations": [], "io": "float32"}
    count = 0
    bad: list[EdgekitError] = []
    captured: list[str] = []  # the converter's C++ lines on stderr, kept for errors
    try:
        with quiet(), fd2_silenced() as captured:
            # Frozen first: given the Keras model as its trackable object, the converter
            # keeps its weights as resource variables (READ_VARIABLE ops, NaN outputs).
            from tensorflow.python.framework.convert_to_constants import (
                convert_variables_to_constants_v2,
            )

            frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
            converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen],
                                                                        tf.Module())
            if precision == "fp16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
                facts.update(optimizations=["DEFAULT"], supported_types=["float16"],
                             weights="float16")
            elif precision == "int8":
                def representative() -> Iterator[list[np.ndarray]]:
                    nonlocal count
                    count = 0
                    for item in calibration:  # type: ignore[union-attr]
                        arr = np.ascontiguousarray(item, dtype=np.float32)
                        if arr.shape != shape:
                            bad.append(DataError(
                                f"calibration item {count} has shape {arr.shape}; the model "
                                f"takes {shape}"))
                            return
                        count += 1
                        yield [arr]

                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = representative
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                       tf.lite.OpsSet.TFLITE_BUILTINS]
                converter._experimental_disable_per_channel = not per_channel
                if int8_io:
                    converter.inference_input_type = tf.int8
                    converter.inference_output_type = tf.int8
                facts.update(optimizations=["DEFAULT"],
                             supported_ops=["TFLITE_BUILTINS_INT8", "TFLITE_BUILTINS"],
                             per_channel=bool(per_channel), method="minmax",
                             io="int8" if int8_io else "float32")
            content = converter.convert()
    except EdgekitError:
        raise
    except Exception as exc:  # noqa: BLE001 - every converter failure becomes one error
        if bad:
            raise bad[0] from exc
        raise _tflite_error(km.name, precision, exc, "".join(captured)) from exc
    if bad:
        raise bad[0]
    if precision == "int8":
        if count == 0:
            raise ConfigError("int8 TFLite export needs calibration data: the calibration "
                              "set yielded no images")
        facts["calibration_images"] = count
    path.write_bytes(bytes(content))
    return facts


