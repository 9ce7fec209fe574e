"""``KerasModel``: a loaded, cleaned Keras model (or SavedModel serving graph), what edgekit read
from it, and its inference function."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError, DataError
from edgekit.sources.keras.convert import INPUT_NAME, convert_to_onnx, convert_to_tflite
from edgekit.sources.keras.runtime import import_tf


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
    _onnx: dict[Any, Path] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ inference
    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """NHWC float32 batch -> (N, outputs) float32, in inference mode, on the cleaned model."""
        tf, _ = import_tf()
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

    def concrete(self, batch: int | None, size: Any) -> Any:
        tf, _ = import_tf()
        h, w = self._hw(size)
        spec = tf.TensorSpec((batch, h, w, self.channels), tf.float32, name=INPUT_NAME)
        fn = tf.function(self._call, input_signature=[spec], autograph=False)
        return fn, spec

    # ------------------------------------------------------------------ conversion
    def to_onnx(self, path: str | Path, size: tuple[int, int] | None = None) -> Path:
        """ONNX with tf2onnx (``convert.convert_to_onnx``)."""
        return convert_to_onnx(self, path, size)

    def to_tflite(self, path: str | Path, *, precision: str,
                  calibration: Iterable[Any] | None = None, int8_io: bool = False,
                  size: tuple[int, int] | None = None, per_channel: bool = True) -> dict[str, Any]:
        """TFLite with TensorFlow's converter (``convert.convert_to_tflite``); the
        manifest's facts."""
        return convert_to_tflite(self, path, precision=precision, calibration=calibration,
                                 int8_io=int8_io, size=size, per_channel=per_channel)

    def onnx_file(self, size: tuple[int, int] | None = None) -> Path:
        """The model converted to ONNX once per process and size, in a temporary folder removed
        at exit: what the ONNX Runtime and OpenVINO backends convert from."""
        key = None if size is None else tuple(size)
        if key not in self._onnx:
            tmp = Path(tempfile.mkdtemp(prefix="edgekit-keras-onnx-"))
            atexit.register(shutil.rmtree, tmp, ignore_errors=True)
            self._onnx[key] = self.to_onnx(tmp / "model.onnx", size=size)
        return self._onnx[key]
