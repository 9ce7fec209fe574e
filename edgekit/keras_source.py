"""Keras sources: ``.keras`` (Keras 3), legacy ``.h5``/``.hdf5`` and SavedModel folders.

Loading (``load_keras``):

* ``.keras`` and ``.h5`` load with Keras 3 in safe mode (``safe_mode=True``); files Keras 3
  cannot read (e.g. a legacy h5 with ``TFOpLambda`` layers from ``x / 127.5 - 1`` in a tf.keras 2
  model) load with ``tf_keras`` instead (flavor "tf_keras"). ``Lambda`` layers carry arbitrary
  Python code: they are found by reading the saved config (``unsafe_layers``, nothing is
  deserialized) and refused unless ``trust_source=True``.
* Layers that are the identity at inference (random augmentation, also inside nested
  ``Sequential`` blocks; Dropout/SpatialDropout*/GaussianNoise/GaussianDropout/AlphaDropout,
  ActivityRegularization, ...) are removed from the graph before anything is converted; each
  candidate is checked to return its input unchanged with ``training=False`` first. In-graph
  preprocessing (``Rescaling``, ``Normalization``) stays in the model.
* SavedModel folders load as a graph (``tf.saved_model.load``; no Python code runs, so Lambda
  layers traced into it are harmless) from the serving signature, frozen with tf2onnx's loader.
  A Keras 3 ``model.export()`` of a model that starts with random augmentation layers traces the
  augmentation, and the BatchNormalization layers after it, in *training* mode (the augmentation
  layers' ``training=True`` default leaks into the trace): the serving graph draws random
  numbers and normalises with batch statistics. edgekit bypasses every graph scope that draws
  random numbers and maps one image tensor to one of the same shape (augmentation, dropout,
  noise: the identity at inference), and puts each training-mode BatchNormalization's moving
  mean/variance (read from the SavedModel's variables) back in place of the batch statistics.
* The input pixel range is read from the graph right after the input: a multiplication by a
  scale below 0.1 (``Rescaling(1/255)``, ``Rescaling(1/127.5, offset=-1)``), a division by more
  than 10, or a mean subtraction above 2 (``Normalization`` adapted on 0-255 data) means the
  model takes 0-255 pixels; anything else means 0-1.

Conversion: ONNX with ``tf2onnx.convert.from_function`` (opset 17, NHWC float32 input named
"input", dynamic batch), checked to load in ONNX Runtime; TFLite with ``tf.lite.TFLiteConverter``
from a concrete function (batch 1). TensorFlow, Keras and tf2onnx are imported lazily: edgekit
itself imports without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    EdgekitError,
    ExportError,
    UnsafeSourceError,
)

KERAS_HINT = "pip install 'edgekit[keras]'"
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"

_H5_SUFFIXES = (".h5", ".hdf5")
_NOISY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "h5py")

# Layers that only act in training. Candidates are removed only after a probe shows that they
# return their input unchanged with training=False (RandomCrop, say, does not at every size).
_REGULARISERS = frozenset({
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
    "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity"})
_AUGMENTERS = frozenset({"AugMix", "CutMix", "MixUp", "RandAugment", "Solarization", "Pipeline"})

# Graph ops: value-preserving ops between the input and the first scaling op, ops that only
# read a shape, ops that draw random numbers.
_PASS_OPS = frozenset({
    "Identity", "Cast", "EnsureShape", "StopGradient", "CheckNumerics", "Reshape", "Squeeze",
    "ExpandDims", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic", "ResizeArea",
    "ScaleAndTranslate", "StridedSlice", "Slice", "Pad", "MirrorPad", "PlaceholderWithDefault"})
_SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
_RANDOM_OP = re.compile(r"Random|TruncatedNormal|Multinomial|Shuffle")


class UnsafeKerasModel(ConfigError, UnsafeSourceError):
    """A Keras model whose config holds Python code (Lambda layers); exit code 2."""


# ----------------------------------------------------------------------------- what it is
def is_keras_source(path: str | Path) -> bool:
    """``.keras``, ``.h5``/``.hdf5`` (by suffix), or a folder holding ``saved_model.pb``."""
    path = Path(path)
    if path.suffix.lower() == ".keras" or path.suffix.lower() in _H5_SUFFIXES:
        return True
    return path.is_dir() and (path / "saved_model.pb").is_file()


def _is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def unsafe_layers(path: str | Path) -> list[str]:
    """Layers that carry Python code (``Lambda``; Python lambdas serialized anywhere in a layer's
    config), as ``"name (Lambda)"``, read from the saved config without deserializing anything:
    a ``.keras`` archive's ``config.json``, an h5 file's ``model_config`` attribute, a
    SavedModel's ``keras_metadata.pb`` (absent: ``[]``). DataError if the file cannot be read."""
    path = Path(path)
    if _is_saved_model(path):
        meta = path / "keras_metadata.pb"
        if not meta.is_file():
            return []
        try:
            nodes = [json.loads(text) for text in _saved_metadata_json(meta.read_bytes())]
        except (OSError, ValueError) as exc:
            raise DataError(f"{meta}: unreadable Keras metadata ({exc})") from exc
        # One metadata node per layer, nested ones included: read each layer's own config and
        # skip the models' (their layers are nodes of their own).
        configs = [{"class_name": d.get("class_name"), "config": d.get("config")}
                   for d in nodes if isinstance(d, dict)
                   and not (isinstance(d.get("config"), dict) and "layers" in d["config"])]
    elif path.suffix.lower() in _H5_SUFFIXES:
        configs = [_h5_config(path)]
    else:
        configs = [_keras_zip_config(path)]
    found: list[str] = []
    for cfg in configs:
        for item in _code_layers(cfg):
            if item not in found:
                found.append(item)
    return found


def _keras_zip_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"Model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json"))
    except KeyError as exc:
        raise DataError(f"{path}: not a Keras archive (no config.json inside)") from exc
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .keras archive ({exc})") from exc


def _h5_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"Model file not found: {path}")
    try:
        import h5py
    except ImportError as exc:
        raise BackendUnavailable(f"Reading .h5 Keras models needs h5py: {KERAS_HINT}") from exc
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc
    if raw is None:
        raise DataError(f"{path}: holds no model config (a weights-only .h5?); save the whole "
                        "model with model.save()")
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError as exc:
        raise DataError(f"{path}: unreadable model config ({exc})") from exc


def _code_layers(cfg: Any, scope: str = "", top: bool = True,
                 owner: str | None = None) -> Iterator[str]:
    """``"name (Lambda)"`` for every Lambda layer; ``"name (Python lambda in its config)"`` for
    any other layer whose config holds a serialized Python lambda (Keras 3 ``__lambda__``).
    Layers of nested models are named ``model/layer``."""
    if isinstance(cfg, list):
        for item in cfg:
            yield from _code_layers(item, scope, top, owner)
        return
    if not isinstance(cfg, dict):
        return
    cls = cfg.get("class_name")
    inner = cfg.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    if cls == "Lambda":
        yield f"{scope}{name or '?'} (Lambda)"
        return
    if cls in ("__lambda__", "lambda"):
        yield f"{owner or '?'} (Python lambda in its config)"
        return
    if isinstance(cls, str) and isinstance(name, str):  # a layer or a model
        owner = f"{scope}{name}"
        if isinstance(inner, dict) and "layers" in inner and not top:
            scope = f"{scope}{name}/"
        top = False
    for key, value in cfg.items():
        if key != "class_name":
            yield from _code_layers(value, scope, top, owner)


def _saved_metadata_json(data: bytes) -> list[str]:
    """The ``metadata`` JSON strings of a ``keras_metadata.pb`` (``SavedMetadata``: repeated
    ``SavedObject nodes = 1``, each with ``string metadata = 5``), read from the protobuf wire
    format directly so that neither TensorFlow nor tf_keras is needed."""
    out = []
    for number, node in _pb_fields(data):
        if number == 1 and isinstance(node, bytes):
            for inner_number, value in _pb_fields(node):
                if inner_number == 5 and isinstance(value, bytes):
                    out.append(value.decode("utf-8"))
    return out


def _pb_fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    def varint(i: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if i >= len(buf):
                raise ValueError("truncated protobuf")
            b = buf[i]
            result |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return result, i
            shift += 7

    i = 0
    while i < len(buf):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
            yield number, value
        elif wire == 1:
            i += 8
        elif wire == 2:
            size, i = varint(i)
            if i + size > len(buf):
                raise ValueError("truncated protobuf")
            yield number, buf[i:i + size]
            i += size
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _unsafe_message(path: Path, layers: list[str]) -> str:
    return (f"{path} holds {len(layers)} layer(s) with Python code: {', '.join(layers)}. A Lambda "
            "layer stores arbitrary Python code that runs when the model is loaded and called, "
            "so Keras safe mode refuses to load it. Pass --trust-source (trust_source=True) to "
            "load it anyway, only for files you trust, or rebuild the model with built-in "
            "layers.")


# ----------------------------------------------------------------------------- TF plumbing
@contextlib.contextmanager
def _fd2_silenced() -> Iterator[list[str]]:
    """Route descriptor 2 to a temporary file while native libraries print their import-time
    banners (absl/oneDNN/CUDA lines that TF_CPP_MIN_LOG_LEVEL does not reach); the text is
    kept for error messages."""
    captured: list[str] = []
    try:
        os.fstat(2)
    except OSError:
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _import_tf() -> tuple[Any, Any]:
    """``tensorflow`` and ``keras`` (Keras 3 on the TensorFlow backend), quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    try:
        if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
            import keras
            import tensorflow as tf
        else:
            with _fd2_silenced():
                import keras
                import tensorflow as tf
    except ImportError as exc:
        raise BackendUnavailable(
            f"Keras sources need TensorFlow and Keras, which are not installed ({exc}): "
            f"{KERAS_HINT}") from exc
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise BackendUnavailable(
            f"Keras was imported on the {backend!r} backend; edgekit converts Keras models "
            "through TensorFlow: set KERAS_BACKEND=tensorflow")
    return tf, keras


def _import_tf2onnx() -> Any:
    try:
        import tf2onnx
        import tf2onnx.tf_loader  # noqa: F401 - used by the SavedModel loader
    except ImportError as exc:
        raise BackendUnavailable(
            f"Converting Keras models to ONNX needs tf2onnx, which is not installed ({exc}): "
            f"{KERAS_HINT}") from exc
    return tf2onnx


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Converter chatter (python loggers, warnings) down to errors for the duration."""
    levels = {n: logging.getLogger(n).level for n in _NOISY_LOGGERS}
    for n in _NOISY_LOGGERS:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {text}"[:400] if text else type(exc).__name__


# ----------------------------------------------------------------------------- the model
@dataclass
class KerasModel:
    """A loaded, cleaned Keras model (or SavedModel serving graph) and what edgekit read from it.

    ``flavor``: "keras" (Keras 3 object), "tf_keras" (legacy object from tf_keras) or
    "saved_model" (a frozen serving graph; no Keras layers). ``removed``: what was taken out
    before conversion because it is the identity at inference. ``notes``: other facts a deploy
    engineer should know (repairs of a SavedModel's serving graph, subclassed models, ...).
    """

    path: Path
    flavor: str
    name: str
    input_size: tuple[int, int] | None
    channels: int
    input_range: str
    range_reason: str
    removed: list[str]
    outputs: int
    final_activation: str
    notes: list[str] = field(default_factory=list)
    _call: Callable[[Any], Any] | None = field(default=None, repr=False, compare=False)
    _keep: Any = field(default=None, repr=False, compare=False)  # keeps variables alive
    _predict_fn: Any = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ inference
    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """NHWC float32 batch -> (N, outputs) float32, in inference mode, on the cleaned model."""
        tf, _ = _import_tf()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[-1] != self.channels or (
                self.input_size is not None and tuple(x.shape[1:3]) != tuple(self.input_size)):
            want = (f"(N, {self.input_size[0]}, {self.input_size[1]}, {self.channels})"
                    if self.input_size else f"(N, H, W, {self.channels})")
            raise DataError(f"{self.name}: expected an NHWC batch of shape {want}, "
                            f"got {tuple(x.shape)}")
        if self._predict_fn is None:
            h, w = self.input_size or (None, None)
            spec = tf.TensorSpec((None, h, w, self.channels), tf.float32, name=INPUT_NAME)
            self._predict_fn = tf.function(self._call, input_signature=[spec], autograph=False)
        if len(x) == 0:
            return np.zeros((0, self.outputs), np.float32)
        step = max(1, int(batch_size))
        outs = [np.asarray(self._predict_fn(tf.constant(x[i:i + step])), dtype=np.float32)
                for i in range(0, len(x), step)]
        return np.concatenate(outs).reshape(len(x), -1)

    def _hw(self, size: tuple[int, int] | int | None) -> tuple[int | None, int | None]:
        if isinstance(size, int):
            size = (size, size)
        if size is not None:
            size = (int(size[0]), int(size[1]))
        if self.input_size is not None:
            if size is not None and size != tuple(self.input_size):
                raise ConfigError(f"{self.path} takes {self.input_size[0]}×{self.input_size[1]} "
                                  f"inputs, not {size[0]}×{size[1]}")
            return tuple(self.input_size)  # type: ignore[return-value]
        return size if size is not None else (None, None)

    def _concrete(self, batch: int | None, size: Any) -> Any:
        tf, _ = _import_tf()
        h, w = self._hw(size)
        spec = tf.TensorSpec((batch, h, w, self.channels), tf.float32, name=INPUT_NAME)
        fn = tf.function(self._call, input_signature=[spec], autograph=False)
        return fn, spec

    # ------------------------------------------------------------------ ONNX
    def to_onnx(self, path: str | Path, size: tuple[int, int] | None = None) -> Path:
        """tf2onnx (opset 17): NHWC float32 input "input" with a dynamic batch, output "output".
        The file is checked to load in ONNX Runtime (when installed); ExportError naming the
        operator otherwise."""
        _import_tf()
        tf2onnx = _import_tf2onnx()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fn, spec = self._concrete(None, size)
        try:
            with _quiet(), _fd2_silenced():  # grappler's C++ session lines
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
            raise _onnx_error(self.name, exc) from exc
        _rename_io(proto, "input", INPUT_NAME)
        _rename_io(proto, "output", OUTPUT_NAME)
        _check_onnx(proto, self.name)
        import onnx

        onnx.save(proto, str(path))
        return path

    # ------------------------------------------------------------------ TFLite
    def to_tflite(self, path: str | Path, *, precision: str, calibration: Iterable[Any] | None = None,
                  int8_io: bool = False, size: tuple[int, int] | None = None,
                  per_channel: bool = True) -> dict[str, Any]:
        """``tf.lite.TFLiteConverter`` from a batch-1 concrete function.

        ``fp32``: plain conversion. ``fp16``: float16 weights (``supported_types=[float16]``).
        ``int8``: full-integer post-training quantization calibrated on ``calibration``
        (re-iterable (1, H, W, C) float32 items in the model's input range): int8 weights
        (per-channel unless ``per_channel=False``) and int8 activations; float32 I/O with
        QUANTIZE/DEQUANTIZE at the boundary, or int8 I/O with ``int8_io``. Returns the facts
        for the manifest."""
        tf, _ = _import_tf()
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
        fn, spec = self._concrete(1, size)
        shape = tuple(int(d) if d is not None else -1 for d in spec.shape)
        if -1 in shape:
            raise ConfigError(f"{self.path} does not fix its input size: give the size to export")
        facts: dict[str, Any] = {
            "converter": f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__})",
            "from": ("concrete function of the SavedModel serving graph"
                     if self.flavor == "saved_model" else
                     f"concrete function of the cleaned {self.flavor} model (training=False)"),
            "input_shape": list(shape), "optimizations": [], "io": "float32"}
        count = 0
        bad: list[EdgekitError] = []
        captured: list[str] = []  # the converter's C++ lines on stderr, kept for errors
        try:
            with _quiet(), _fd2_silenced() as captured:
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
            raise _tflite_error(self.name, precision, exc, "".join(captured)) from exc
        if bad:
            raise bad[0]
        if precision == "int8":
            if count == 0:
                raise ConfigError("int8 TFLite export needs calibration data: the calibration "
                                  "set yielded no images")
            facts["calibration_images"] = count
        path.write_bytes(bytes(content))
        return facts


# ----------------------------------------------------------------------------- errors
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
                           f"({_first_line(exc)})")
    return ExportError(f"{what}: {_first_line(exc)}")


def _tflite_error(name: str, precision: str, exc: BaseException, log: str = "") -> ExportError:
    op = _op_in(f"{exc}\n{log}")
    what = (f"Backend 'litert': converting the Keras model {name} to TFLite ({precision}) with "
            "tf.lite.TFLiteConverter failed")
    if op:
        return ExportError(f"{what}: TensorFlow op {op} has no TFLite builtin kernel "
                           f"({_first_line(exc)}); replace the layer that makes it or use the "
                           "onnxruntime/openvino backends")
    return ExportError(f"{what}: {_first_line(exc)}")


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
                          f"made from {name}: {_first_line(exc)}") from exc


# ----------------------------------------------------------------------------- loading
def load_keras(path: str | Path, *, trust_source: bool = False) -> KerasModel:
    """Load a ``.keras``/``.h5``/SavedModel source, clean it for inference and describe it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Model file not found: {path}")
    if not is_keras_source(path):
        raise ConfigError(f"{path} is not a Keras model (.keras, .h5/.hdf5 or a SavedModel "
                          "folder with saved_model.pb)")
    risky = unsafe_layers(path)
    saved_model = _is_saved_model(path)
    if risky and not trust_source and not saved_model:
        raise UnsafeKerasModel(_unsafe_message(path, risky))
    tf, keras = _import_tf()
    if saved_model:
        return _load_saved_model(path, tf, risky)
    model, flavor = _load_file(path, keras, trust_source)
    km = _from_keras_object(path, model, flavor, tf, keras)
    if risky:
        km.notes.append(f"loaded with trust_source: the Python code of {', '.join(risky)} was "
                        "deserialized and runs inside the model")
    return km


def _load_file(path: Path, keras: Any, trust_source: bool) -> tuple[Any, str]:
    """Keras 3 first (safe mode unless trusted); tf_keras for files Keras 3 cannot read."""
    try:
        with _quiet():
            return keras.models.load_model(str(path), compile=False,
                                           safe_mode=not trust_source), "keras"
    except Exception as exc:  # noqa: BLE001 - Keras raises many classes for unreadable files
        first = exc
        if "safe_mode" in str(exc) or "safe mode" in str(exc):
            raise UnsafeKerasModel(
                f"{path}: Keras safe mode refused to load it ({_first_line(exc)}). The model "
                "stores Python code (e.g. a Lambda layer) that runs when it is loaded and "
                "called. Pass --trust-source (trust_source=True) to load it anyway, only for "
                "files you trust.") from exc
    try:
        import tf_keras
    except ImportError:
        raise DataError(f"{path}: Keras 3 cannot load it ({_first_line(first)}); legacy "
                        f"tf.keras files also need tf_keras: {KERAS_HINT}") from first
    try:
        with _quiet():
            return tf_keras.models.load_model(str(path), compile=False,
                                              safe_mode=not trust_source), "tf_keras"
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a loadable Keras model. Keras 3: {_first_line(first)}; "
                        f"tf_keras: {_first_line(exc)}") from exc


def _from_keras_object(path: Path, model: Any, flavor: str, tf: Any, keras: Any) -> KerasModel:
    inputs, outputs = list(model.inputs or []), list(model.outputs or [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConfigError(f"{path}: edgekit handles image classifiers with one input and one "
                          f"output; this model has {len(inputs)} input(s) and {len(outputs)} "
                          "output(s)")
    size, channels = _input_geometry(path, tuple(inputs[0].shape))
    _refuse_channels_first(path, model)
    width = _output_width(path, tuple(outputs[0].shape))
    notes: list[str] = []
    if flavor == "tf_keras":
        cleaned, removed = _clean_tf_keras(model, sys.modules["tf_keras"])
        notes.append("loaded with tf_keras: Keras 3 cannot read this legacy file")
    else:
        cleaned, removed = _clean_keras3(model, keras)
    if isinstance(cleaned, str):
        raise ConfigError(f"{path}: every layer of the model is the identity at inference")
    if cleaned is None:  # a subclassed model: no graph to edit
        cleaned = model
        notes.append("subclassed model: its layers cannot be edited, so nothing was removed; "
                     "it runs in inference mode (training=False)")

    def call(x: Any) -> Any:
        return _single_output(cleaned(x, training=False), tf)

    km = KerasModel(path=path, flavor=flavor, name=str(model.name), input_size=size,
                    channels=channels, input_range="0-1", range_reason="", removed=removed,
                    outputs=width, final_activation="unknown", notes=notes, _call=call,
                    _keep=cleaned)
    fn, _ = km._concrete(None, None)
    km._predict_fn = fn  # the same signature predict() uses: trace once
    graph = fn.get_concrete_function().graph
    layer_classes = _layer_classes(cleaned)
    km.input_range, km.range_reason = _input_range(graph, graph.inputs[0],
                                                   _graph_values(graph), layer_classes)
    km.final_activation = _final_activation(graph.outputs[0])
    _refuse_random_ops(path, graph.as_graph_def())
    return km


def _single_output(out: Any, tf: Any) -> Any:
    flat = tf.nest.flatten(out)
    if len(flat) != 1:
        raise ConfigError(f"the model returns {len(flat)} outputs; edgekit handles one")
    return flat[0]


def _input_geometry(path: Path, shape: tuple[Any, ...]) -> tuple[tuple[int, int] | None, int]:
    if len(shape) != 4:
        raise ConfigError(f"{path}: edgekit handles image classifiers with an NHWC input "
                          f"(batch, height, width, channels); this model's input has shape "
                          f"{shape}")
    h, w, c = shape[1], shape[2], shape[3]
    if c is None:
        raise ConfigError(f"{path}: the model's input does not fix its channel count "
                          f"(shape {shape})")
    if c not in (1, 3, 4) and h in (1, 3):
        raise ConfigError(f"{path}: the input shape {shape} looks channels-first (NCHW); "
                          "edgekit handles channels-last (NHWC) Keras models, the Keras default. "
                          "Rebuild the model with data_format='channels_last'.")
    size = (int(h), int(w)) if h is not None and w is not None else None
    return size, int(c)


def _refuse_channels_first(path: Path, model: Any) -> None:
    for layer in _all_layers(model):
        if getattr(layer, "data_format", None) == "channels_first":
            raise ConfigError(
                f"{path}: layer {layer.name!r} ({type(layer).__name__}) is channels-first "
                "(data_format='channels_first'); edgekit handles channels-last (NHWC) Keras "
                "models, the Keras default. Rebuild the model with data_format='channels_last'.")


def _output_width(path: Path, shape: tuple[Any, ...]) -> int:
    if len(shape) != 2 or shape[-1] is None:
        raise ConfigError(f"{path}: edgekit handles classifiers with a (batch, classes) output; "
                          f"this model's output has shape {shape}")
    return int(shape[-1])


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in getattr(model, "layers", []) or []:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _layer_classes(model: Any) -> dict[str, str]:
    return {str(layer.name): type(layer).__name__ for layer in _all_layers(model)}


def _refuse_random_ops(path: Path, graph_def: Any) -> None:
    ops = sorted({n.op for n in graph_def.node if _RANDOM_OP.search(n.op)})
    for f in graph_def.library.function:
        ops += sorted({n.op for n in f.node_def if _RANDOM_OP.search(n.op)} - set(ops))
    if ops:
        raise DataError(f"{path}: the model draws random numbers at inference "
                        f"({', '.join(ops)}) in a layer edgekit cannot remove; its outputs "
                        "would change from call to call")


# ----------------------------------------------------------------------------- cleanup
def _is_candidate(layer: Any) -> bool:
    cls = type(layer).__name__
    return cls in _REGULARISERS or cls in _AUGMENTERS or cls.startswith("Random")


def _is_identity(layer: Any, shape: tuple[Any, ...] | None) -> bool:
    """A candidate layer that returns a probe unchanged with training=False."""
    if not _is_candidate(layer):
        return False
    if shape is None or len(shape) < 2:
        return type(layer).__name__ in _REGULARISERS
    dims = [2] + [int(d) if d is not None else 32 for d in shape[1:]]
    probe = np.random.default_rng(0).uniform(0.0, 255.0, dims).astype(np.float32)
    try:
        out = np.asarray(layer(probe, training=False))
    except Exception:  # noqa: BLE001 - a layer that cannot take the probe: keep it unless classic
        return type(layer).__name__ in _REGULARISERS
    return out.shape == probe.shape and bool(np.array_equal(out, probe))


def _describe_removed(prefix: str, layer: Any, inner: list[str] | None = None) -> str:
    cls = type(layer).__name__
    if inner is not None:
        kinds = [s[s.rfind("(") + 1:-1] for s in inner]
        return f"{prefix}{layer.name} ({cls} of {', '.join(kinds)})"
    return f"{prefix}{layer.name} ({cls})"


def _clean_keras3(model: Any, keras: Any, shape: tuple[Any, ...] | None = None,
                  prefix: str = "") -> tuple[Any, list[str]]:
    """``(cleaned, removed)``: a Functional/Sequential copy sharing the original layers (and so
    their weights) with the identity-at-inference layers left out, recursively. ``cleaned`` is
    the string "identity" when nothing is left of a nested Sequential, None for a model that is
    neither Functional nor Sequential (subclassed)."""
    from keras.src.models.functional import Functional

    removed: list[str] = []
    if isinstance(model, keras.Sequential):
        if shape is None and model.inputs:
            shape = tuple(model.inputs[0].shape)
        kept = []
        for layer in model.layers:
            sub = _clean_nested(layer, keras, shape, prefix, removed)
            if sub == "identity" or (sub is None and _is_identity(layer, shape)):
                if sub is None:
                    removed.append(_describe_removed(prefix, layer))
                continue
            layer = sub if sub is not None else layer
            kept.append(layer)
            shape = _next_shape(layer, shape)
        if not kept:
            return "identity", removed
        if not removed:
            return model, removed
        head = []
        if prefix == "" and model.inputs:
            inp = model.inputs[0]
            head = [keras.Input(batch_shape=tuple(inp.shape), dtype=inp.dtype)]
        return keras.Sequential(head + kept, name=model.name), removed
    if not isinstance(model, Functional):
        return None, removed
    if not any(_is_candidate(layer) or isinstance(layer, keras.Model)
               for layer in _all_layers(model)):
        return model, removed  # nothing to remove: no need to re-trace the graph

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else None
        xshape = tuple(x.shape) if hasattr(x, "shape") else None
        sub = _clean_nested(layer, keras, xshape, prefix, removed)
        if sub == "identity":
            return x
        if sub is not None:
            return sub(*args, **kwargs)
        if xshape is not None and len(args) == 1 and _is_identity(layer, xshape):
            removed.append(_describe_removed(prefix, layer))
            return x
        return layer(*args, **kwargs)

    cleaned = keras.models.clone_model(model, clone_function=lambda layer: layer,
                                       call_function=call)
    return (cleaned if removed else model), removed


def _clean_nested(layer: Any, keras: Any, shape: tuple[Any, ...] | None, prefix: str,
                  removed: list[str]) -> Any:
    """For a nested model: its cleaned copy, "identity" (recorded as one entry) or None."""
    if not isinstance(layer, keras.Model):
        return None
    sub, inner = _clean_keras3(layer, keras, shape, f"{prefix}{layer.name}/")
    if sub == "identity":
        removed.append(_describe_removed(prefix, layer, inner))
        return "identity"
    removed.extend(inner)
    return sub if sub is not None and sub is not layer else None


def _next_shape(layer: Any, shape: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    if shape is None:
        return None
    try:
        return tuple(layer.compute_output_shape(shape))
    except Exception:  # noqa: BLE001 - only used to size probes of later layers
        return None


def _clean_tf_keras(model: Any, tfk: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """The tf_keras counterpart: ``clone_model`` reusing the layers, with each identity layer
    swapped for a weightless linear Activation of the same name (no op in the traced graph)."""
    removed: list[str] = []
    if not isinstance(model, (tfk.Sequential, tfk.Model)) or not getattr(
            model, "_is_graph_network", False):
        return None, removed

    def shape_of(layer: Any) -> tuple[Any, ...] | None:
        try:
            shape = layer.input_shape
        except Exception:  # noqa: BLE001 - shared layers have no single input shape
            return None
        return tuple(shape) if isinstance(shape, tuple) else None

    def replace(layer: Any) -> Any:
        if isinstance(layer, tfk.Model) and getattr(layer, "_is_graph_network", False):
            sub, inner = _clean_tf_keras(layer, tfk, f"{prefix}{layer.name}/")
            kept = [x for x in layer.layers if type(x).__name__ != "InputLayer"]
            if sub is not None and len(inner) == len(kept):  # report the block as one entry
                removed.append(_describe_removed(prefix, layer, inner))
            else:
                removed.extend(inner)
            # The cloned block, not an Activation in its place: the outer config calls it by
            # node index (its own input is node 0), which a fresh layer cannot match.
            return sub if sub is not None else layer
        if _is_identity(layer, shape_of(layer)):
            removed.append(_describe_removed(prefix, layer))
            return tfk.layers.Activation("linear", name=layer.name)
        return layer

    cleaned = tfk.models.clone_model(model, clone_function=replace)
    if not removed:
        return model, removed
    return cleaned, removed


# ----------------------------------------------------------------------------- graph reading
def _graph_values(graph: Any) -> Callable[[Any], np.ndarray | None]:
    """Constant value of a graph tensor: Const chains, captured constants and variables."""
    import tensorflow as tf

    captured = {id(internal): external for external, internal in getattr(graph, "captures", [])}
    variables = {}
    for v in getattr(graph, "variables", []) or []:
        with contextlib.suppress(Exception):
            variables[id(v.handle)] = v

    def value(t: Any, depth: int = 0) -> np.ndarray | None:
        if depth > 8:
            return None
        with contextlib.suppress(Exception):
            v = tf.get_static_value(t)
            if v is not None:
                return np.asarray(v)
        op = t.op
        if op.type == "Placeholder" and id(t) in captured:
            ext = captured[id(t)]
            if ext.dtype == tf.resource:
                return None
            with contextlib.suppress(Exception):
                return np.asarray(ext.numpy())
            return None
        if op.type == "ReadVariableOp":
            handle = op.inputs[0]
            ext = captured.get(id(handle))
            var = variables.get(id(ext)) if ext is not None else None
            return np.asarray(var.numpy()) if var is not None else None
        if op.type in ("Identity", "Cast", "Reshape", "Squeeze", "ExpandDims"):
            inner = value(op.inputs[0], depth + 1)
            if inner is None:
                return None
            if op.type == "Reshape":
                shape = value(op.inputs[1], depth + 1)
                return inner.reshape(shape) if shape is not None else inner
            return inner
        return None

    return value


def _layer_of(op_name: str, layer_classes: dict[str, str]) -> str:
    """"Rescaling 'rescale'" for an op in a layer's name scope, else "the op 'a/b'"."""
    parts = [p for p in op_name.split("/") if not p.startswith("StatefulPartitionedCall")]
    for part in reversed(parts[:-1]):
        for cand in (part, re.sub(r"_\d+$", "", part)):
            if cand in layer_classes:
                return f"{layer_classes[cand]} '{cand}'"
    scope = "/".join(parts[-3:-1]) if len(parts) > 1 else parts[-1]
    return f"the graph scope '{scope}'"


def _fmt_scale(s: float) -> str:
    if s and abs(1 / s - round(1 / s)) < 1e-3 * abs(1 / s):
        return f"1/{round(1 / s):g}"
    return f"{s:.4g}"


def _input_range(graph: Any, start: Any, value_of: Callable[[Any], np.ndarray | None],
                 layer_classes: dict[str, str]) -> tuple[str, str]:
    """("0-255" | "0-1", reason) from the first value-changing op after the input."""
    t = start
    for _ in range(64):
        users = [op for op in t.consumers() if op.type not in _SHAPE_OPS]
        if len(users) != 1:
            break
        op = users[0]
        if op.type in _PASS_OPS:
            if op.inputs[0] is not t:
                break
            t = op.outputs[0]
            continue
        others = [i for i in op.inputs if i is not t]
        const = value_of(others[0]) if len(others) == 1 else None
        if const is None or const.size == 0:
            break
        c = np.asarray(const, dtype=np.float64)
        where = _layer_of(op.name, layer_classes)
        if op.type == "Mul":
            s = float(np.max(np.abs(c)))
            if 0 < s < 0.1:
                return "0-255", (f"{where} multiplies the input by {_fmt_scale(s)} right after "
                                 "it (in-graph rescaling): the model takes 0-255 pixels")
            return "0-1", (f"{where} multiplies the input by {_fmt_scale(s)} first (not a "
                           "0-255 rescale): the model takes 0-1 inputs")
        if op.type in ("RealDiv", "Div", "TrueDiv", "FloorDiv") and op.inputs[0] is t:
            s = float(np.min(np.abs(c)))
            if s > 10:
                return "0-255", (f"{where} divides the input by {s:g} right after it "
                                 "(in-graph rescaling): the model takes 0-255 pixels")
            return "0-1", f"{where} divides the input by {s:g} first: the model takes 0-1 inputs"
        if op.type in ("Sub", "AddV2", "Add", "BiasAdd"):
            if op.type == "Sub" and op.inputs[0] is not t:
                break
            mean = float(np.mean(c)) * (1 if op.type == "Sub" else -1)
            if mean > 2:
                return "0-255", (f"{where} subtracts a mean of {mean:.4g} right after the input "
                                 "(normalization adapted on 0-255 data): the model takes "
                                 "0-255 pixels")
            return "0-1", (f"{where} subtracts a mean of {mean:.4g} right after the input "
                           "(normalization of 0-1 data): the model takes 0-1 inputs")
        break
    return "0-1", ("no in-graph rescaling right after the input (no Rescaling with a scale "
                   "below 0.1, no Normalization with a mean above 2): the model takes 0-1 "
                   "inputs")


def _final_activation(out: Any) -> str:
    op = out.op
    for _ in range(16):
        if op.type in ("Identity", "IdentityN", "Cast", "Reshape", "Squeeze", "EnsureShape",
                       "StopGradient"):
            op = op.inputs[0].op
            continue
        break
    return {"Softmax": "softmax", "Sigmoid": "sigmoid", "MatMul": "linear", "BiasAdd": "linear",
            "AddV2": "linear", "Add": "linear"}.get(op.type, "unknown")


# ----------------------------------------------------------------------------- SavedModel
def _load_saved_model(path: Path, tf: Any, risky: list[str]) -> KerasModel:
    tf2onnx = _import_tf2onnx()
    try:
        with _quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - TF raises many classes for bad folders
        raise DataError(f"{path}: not a readable SavedModel ({_first_line(exc)})") from exc
    sigs = dict(getattr(loaded, "signatures", {}) or {})
    if "serving_default" in sigs:
        sig_name = "serving_default"
    elif len(sigs) == 1:
        sig_name = next(iter(sigs))
    else:
        raise ConfigError(f"{path}: a SavedModel needs a serving signature to be converted; "
                          f"it has {', '.join(sigs) or 'none'}")
    cf = sigs[sig_name]
    args, kwargs = cf.structured_input_signature
    specs = tf.nest.flatten((args, kwargs))
    outs = tf.nest.flatten(cf.structured_outputs)
    if len(specs) != 1 or len(outs) != 1:
        raise ConfigError(f"{path}: edgekit handles image classifiers with one input and one "
                          f"output; signature {sig_name!r} has {len(specs)} input(s) and "
                          f"{len(outs)} output(s)")
    in_spec = specs[0]
    size, channels = _input_geometry(path, tuple(in_spec.shape.as_list()))
    width = _output_width(path, tuple(outs[0].shape.as_list()))
    if not (in_spec.dtype.is_floating or in_spec.dtype in (tf.uint8, tf.int32)):
        raise ConfigError(f"{path}: the serving signature takes {in_spec.dtype.name} input; "
                          "edgekit feeds float32 (or uint8) images")
    in_name, out_name = cf.inputs[0].name, cf.outputs[0].name
    try:
        with _quiet(), _fd2_silenced():
            graph_def = tf2onnx.tf_loader.from_function(cf, [in_name], [out_name])
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot freeze the serving signature {sig_name!r} "
                        f"({_first_line(exc)})") from exc
    out_node = out_name.split(":")[0]
    graph_def, removed = _bypass_random_scopes(graph_def, out_node, tf)
    values: dict[str, list[Any]] = {}
    for v in loaded.variables:
        values.setdefault(v.name.split(":")[0], []).append(v)
    graph_def, repaired = _repair_training_bn(path, graph_def, out_node, values, tf)
    _refuse_random_ops(path, graph_def)
    notes = []
    if repaired or removed:
        notes.append("the SavedModel's serving graph ran in training mode (what Keras 3 "
                     "model.export() does with random augmentation layers at the front: their "
                     "training=True default leaks into the trace); edgekit bypassed the random "
                     "scopes and restored inference-mode BatchNormalization")
    notes += repaired
    if risky:
        notes.append(f"Lambda layers ({', '.join(risky)}) are part of the traced serving graph; "
                     "no Python code is loaded or run")
    dtype = in_spec.dtype

    def call(x: Any) -> Any:
        if dtype == tf.uint8:
            x = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
        elif dtype != tf.float32:
            x = tf.cast(x, dtype)
        y = tf.graph_util.import_graph_def(graph_def, input_map={in_name: x},
                                           return_elements=[out_name], name="saved_model")[0]
        return tf.cast(y, tf.float32) if y.dtype != tf.float32 else y

    km = KerasModel(path=path, flavor="saved_model", name=path.name, input_size=size,
                    channels=channels, input_range="0-1", range_reason="", removed=removed,
                    outputs=width, final_activation="unknown", notes=notes, _call=call,
                    _keep=loaded)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    start = graph.get_tensor_by_name(in_name)
    km.input_range, km.range_reason = _input_range(graph, start, _graph_values(graph), {})
    km.range_reason = km.range_reason.replace("the graph scope", "the serving-graph scope")
    km.final_activation = _final_activation(graph.get_tensor_by_name(out_name))
    return km


def _tensor_name(inp: str) -> str:
    node, _, index = inp.partition(":")
    return f"{node}:{index or 0}"


def _strip_folded(name: str) -> str:
    return name[len("ConstantFolding/"):] if name.startswith("ConstantFolding/") else name


def _prune(graph_def: Any, out_node: str, tf: Any) -> Any:
    """Only the nodes the output depends on (data and control inputs)."""
    by_name = {n.name: n for n in graph_def.node}
    keep, todo = set(), [out_node]
    while todo:
        name = todo.pop()
        if name in keep or name not in by_name:
            continue
        keep.add(name)
        todo.extend(i.lstrip("^").split(":")[0] for i in by_name[name].input)
    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    out.node.extend(n for n in graph_def.node if n.name in keep)
    return out


def _static_graph(graph_def: Any, tf: Any) -> Any:
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph


def _scope_label(prefix: str) -> str:
    parts = [p for p in prefix.strip("/").split("/") if not p.startswith("StatefulPartitionedCall")]
    return "/".join(parts[1:] if len(parts) > 1 else parts)


def _bypass_random_scopes(graph_def: Any, out_node: str, tf: Any) -> tuple[Any, list[str]]:
    """Rewire around every name scope that draws random numbers and maps exactly one outside
    tensor to exactly one tensor used outside, of the same dtype and (4-D) shape: an
    augmentation, dropout or noise layer traced in training mode, the identity at inference.
    The smallest such scope around each random op is taken."""
    removed: list[str] = []
    graph = None  # static shapes, read once: rewiring around same-shape scopes keeps them
    for _ in range(256):
        random_nodes = [n for n in graph_def.node if _RANDOM_OP.search(n.op)]
        if not random_nodes:
            break
        by_name = {n.name: n for n in graph_def.node}
        graph = graph or _static_graph(graph_def, tf)
        done = False
        for r in random_nodes:
            parts = _strip_folded(r.name).split("/")
            for k in range(len(parts) - 1, 0, -1):
                prefix = "/".join(parts[:k]) + "/"
                inside = {n.name for n in graph_def.node if _strip_folded(n.name).startswith(prefix)}
                ext_in, ext_out = set(), set()
                for n in graph_def.node:
                    for inp in n.input:
                        if inp.startswith("^"):
                            continue
                        src = inp.split(":")[0]
                        if n.name in inside and src not in inside and \
                                by_name[src].op not in ("Const",):
                            ext_in.add(_tensor_name(inp))
                        if n.name not in inside and src in inside:
                            ext_out.add(_tensor_name(inp))
                if out_node in inside:
                    break  # the scope holds the model's output: not a layer in the middle
                if len(ext_in) != 1 or len(ext_out) != 1:
                    continue
                src_t, dst_t = next(iter(ext_in)), next(iter(ext_out))
                a, b = graph.get_tensor_by_name(src_t), graph.get_tensor_by_name(dst_t)
                if a.dtype != b.dtype or a.shape.rank is None or a.shape.rank < 2 or \
                        a.shape.as_list() != b.shape.as_list():
                    continue
                for n in graph_def.node:
                    if n.name in inside:
                        continue
                    for i, inp in enumerate(n.input):
                        if not inp.startswith("^") and _tensor_name(inp) == dst_t:
                            n.input[i] = src_t
                ops = sorted({by_name[s].op for s in inside
                              if _RANDOM_OP.search(by_name[s].op) or "Image" in by_name[s].op})
                removed.append(f"{_scope_label(prefix)} (random ops in the serving graph: "
                               f"{', '.join(ops)}; the identity at inference)")
                graph_def = _prune(graph_def, out_node, tf)
                done = True
                break
            if done:
                break
        if not done:
            break
    return graph_def, removed


def _repair_training_bn(path: Path, graph_def: Any, out_node: str,
                        variables: dict[str, list[Any]],
                        tf: Any) -> tuple[Any, list[str]]:
    """Replace the batch mean/variance of training-mode BatchNormalization (``tf.nn.moments``:
    ``<scope>/moments/mean`` and ``<scope>/moments/variance``) with the layer's moving
    statistics, found among the SavedModel's variables as ``<layer>/moving_mean``."""
    from tensorflow.core.framework import attr_value_pb2

    names = {n.name for n in graph_def.node}
    scopes = sorted({n.name[:-len("/moments/variance")] for n in graph_def.node
                     if n.op == "Mean" and n.name.endswith("/moments/variance")
                     and f"{n.name[:-len('/variance')]}/mean" in names})
    if not scopes:
        return graph_def, []
    graph = _static_graph(graph_def, tf)
    by_name = {n.name: n for n in graph_def.node}
    repaired = []
    for scope in scopes:
        layer = scope.split("/")[-1]
        found = None
        for cand in dict.fromkeys((layer, re.sub(r"_\d+$", "", layer))):
            mm = variables.get(f"{cand}/moving_mean", [])
            mv = variables.get(f"{cand}/moving_variance", [])
            if len(mm) == 1 and len(mv) == 1:  # two layers of that name: ambiguous, refuse
                found = (cand, mm[0].numpy(), mv[0].numpy())
                break
        if found is None:
            raise DataError(
                f"{path}: the serving graph runs BatchNormalization '{_scope_label(scope + '/')}' "
                "in training mode (it normalises with batch statistics, so a prediction depends "
                "on the other images in the batch) and edgekit cannot find its moving mean and "
                "variance among the SavedModel's variables. Load the .keras/.h5 file instead, or "
                "export again after removing the random augmentation layers.")
        cand, mean, var = found
        inner = f"{scope}/moments/"
        for n in list(graph_def.node):
            if n.name.startswith(inner):
                continue
            for i, inp in enumerate(n.input):
                if inp.startswith("^") or not inp.startswith(inner):
                    continue
                t = graph.get_tensor_by_name(_tensor_name(inp))
                stat = _moments_kind(by_name, inp.split(":")[0], inner)
                if stat is None or not t.shape.is_fully_defined():
                    raise DataError(f"{path}: cannot restore inference-mode BatchNormalization "
                                    f"'{_scope_label(scope + '/')}' in the serving graph")
                value = (mean if stat == "mean" else var).astype(t.dtype.as_numpy_dtype)
                const_name = f"{scope}/edgekit_moving_{stat}"
                if const_name not in by_name:
                    node = graph_def.node.add()
                    node.name, node.op = const_name, "Const"
                    node.attr["dtype"].CopyFrom(attr_value_pb2.AttrValue(type=t.dtype.as_datatype_enum))
                    node.attr["value"].CopyFrom(attr_value_pb2.AttrValue(
                        tensor=tf.make_tensor_proto(value.reshape(t.shape.as_list()))))
                    by_name[const_name] = node
                n.input[i] = const_name
        repaired.append(f"BatchNormalization '{_scope_label(scope + '/')}' ran in training mode: "
                        f"its batch statistics were replaced by {cand}/moving_mean and "
                        f"{cand}/moving_variance")
    return _prune(graph_def, out_node, tf), repaired


def _moments_kind(by_name: dict[str, Any], node: str, inner: str) -> str | None:
    """"mean" or "variance": which ``tf.nn.moments`` result a tensor of the scope carries."""
    for _ in range(8):
        n = by_name.get(node)
        if n is None or not n.name.startswith(inner):
            return None
        if n.name == f"{inner}mean":
            return "mean"
        if n.name == f"{inner}variance":
            return "variance"
        if n.op not in ("Squeeze", "Identity", "Reshape", "StopGradient"):
            return None
        node = n.input[0].split(":")[0]
    return None
