"""``KerasSource``: a cleaned Keras model as an edgekit source.

Its preprocessing is NHWC, RGB (or grey for one channel), at the pixel range the model's own
first layers expect: an in-graph ``Rescaling(1/255)`` means the model takes 0–255 pixels and the
spec must not scale them again. Class names come from the data folder; an in-graph softmax or
sigmoid makes the outputs probabilities (``head``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import ConfigError
from edgekit.sources.base import Source
from edgekit.sources.keras.load import load_keras
from edgekit.sources.keras.model import KerasModel

INPUT_RANGES = ("0-255", "0-1")


@dataclass(frozen=True, kw_only=True)
class KerasSource(Source):
    """A Keras 3 / tf_keras model or a SavedModel serving graph (``keras``: the KerasModel)."""

    kind: ClassVar[str] = "keras"
    runtime: ClassVar[str] = "keras"
    runtime_label: ClassVar[str] = "Keras/TensorFlow"

    keras: KerasModel

    def predict(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return np.asarray(self.keras.predict(np.asarray(x, np.float32), batch_size=batch_size),
                          np.float32)

    def onnx_file(self) -> Path:
        """The cleaned model converted with tf2onnx, once per process (shared by every copy of
        this source)."""
        return self.keras.onnx_file(self.spec.input_size)


def from_keras(path: Path, input_size: int | None, trust_source: bool,
               input_range: str | None) -> KerasSource:
    """A Keras model, cleaned for inference, with the spec its in-graph layers expect."""
    if input_range is not None and input_range not in INPUT_RANGES:
        raise ConfigError(f"--input-range must be one of {', '.join(INPUT_RANGES)}, "
                          f"got {input_range!r}")
    km = load_keras(path, trust_source=trust_source)
    size = km.input_size
    if size is None:
        if input_size is None:
            raise ConfigError(f"{path} does not fix its input size: pass --input-size")
        size = (input_size, input_size)
    elif input_size is not None and tuple(size) != (input_size, input_size):
        raise ConfigError(f"{path} takes {size[0]}×{size[1]} inputs, not --input-size {input_size}")
    if km.channels not in (1, 3):
        raise ConfigError(f"{path} takes {km.channels}-channel images; edgekit reads RGB (3) or "
                          "greyscale (1) images")
    rng = input_range or km.input_range
    reason = (km.range_reason if input_range is None or input_range == km.input_range
              else f"--input-range {input_range} (edgekit had read {km.input_range}: "
                   f"{km.range_reason})")
    c = km.channels
    spec = PreprocessSpec(input_size=size, color="rgb" if c == 3 else "gray",
                          scale=1.0 if rng == "0-255" else 1.0 / 255.0, mean=(0.0,) * c,
                          std=(1.0,) * c, layout="NHWC")
    activation = km.final_activation
    task = "multilabel" if activation == "sigmoid" and km.outputs > 1 else "multiclass"
    head = {"scores_are": "probs" if activation in ("softmax", "sigmoid") else "logits",
            "threshold": 0.5}
    meta = {"keras": {"flavor": km.flavor, "removed_layers": list(km.removed),
                      "input_range": rng, "input_range_reason": reason,
                      "final_activation": activation, "outputs": km.outputs}}
    return KerasSource(keras=km, name=km.name, task=task, class_names=(), spec=spec,
                       source=str(path), metadata=meta, pretrained=True, head=head)
