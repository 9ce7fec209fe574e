"""``KerasSource``: a cleaned Keras model as an edgekit source.

Its preprocessing is NHWC, RGB (or grey for one channel), at the pixel range the model's own
first layers expect: an in-graph ``Rescaling(1/255)`` means the model takes 0–255 pixels and the
spec must not scale them again. Class names come from the data folder; an in-graph softmax or
sigmoid makes the outputs probabilities (``head``). The model fixes the layout, the channel count
and (when its input says) the size; a declared ``--preprocess`` file or flag may set the rest
(resize filter, mean/std, and a scale that replaces the one read from the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekit.errors import ConfigError
from edgekit.sources.base import Source
from edgekit.sources.declared import MODEL, DeclaredPreprocess, resolve_spec
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


def from_keras(path: Path, decl: DeclaredPreprocess | None, trust_source: bool,
               input_range: str | None) -> KerasSource:
    """A Keras model, cleaned for inference, with the spec its in-graph layers expect."""
    if input_range is not None and input_range not in INPUT_RANGES:
        raise ConfigError(f"--input-range must be one of {', '.join(INPUT_RANGES)}, "
                          f"got {input_range!r}")
    km = load_keras(path, trust_source=trust_source)
    if km.channels not in (1, 3):
        raise ConfigError(f"{path} takes {km.channels}-channel images; edgekit reads RGB (3) or "
                          "greyscale (1) images")
    rng = input_range or km.input_range
    reason = (km.range_reason if input_range is None or input_range == km.input_range
              else f"--input-range {input_range} (edgekit had read {km.input_range}: "
                   f"{km.range_reason})")
    fixed = {"layout": "NHWC", "color": "rgb" if km.channels == 3 else "gray"}
    if km.input_size is not None:
        fixed["input_size"] = tuple(km.input_size)
    scale = {"scale": 1.0 if rng == "0-255" else 1.0 / 255.0}
    spec, origins = resolve_spec(path, decl, fixed=fixed, defaults=scale,
                                 default_by="--input-range" if input_range else MODEL)
    activation = km.final_activation
    task = "multilabel" if activation == "sigmoid" and km.outputs > 1 else "multiclass"
    head = {"scores_are": "probs" if activation in ("softmax", "sigmoid") else "logits",
            "threshold": 0.5}
    meta = {"keras": {"flavor": km.flavor, "removed_layers": list(km.removed),
                      "input_range": rng, "input_range_reason": reason,
                      "final_activation": activation, "outputs": km.outputs}}
    return KerasSource(keras=km, name=km.name, task=task, class_names=(), spec=spec,
                       source=str(path), metadata=meta, pretrained=True, head=head,
                       spec_sources=origins)
