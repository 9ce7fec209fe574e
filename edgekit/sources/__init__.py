"""Load a model source into a ``Source``: the model plus everything needed to use it.

Sources:

- an edgekit checkpoint (``model.pt``, whose metadata names the architecture, classes and
  preprocessing), or ``zoo_name:weights.pt`` for a plain state_dict — read with
  ``torch.load(weights_only=True)``; a pickle that needs code execution is refused; they carry
  their preprocessing (a declared value that differs is a usage error);
- a bare zoo name (fresh weights, for inspection and tests);
- a ``torch.export`` program (``.pt2``), a TorchScript archive (``.ts``/``.torchscript``, or a
  ``.pt`` that is one) or an ONNX file (``.onnx``). These carry no class names: they come from
  the data folder (``with_classes``). What the file fixes (input shape, layout, channel count;
  an ONNX graph's final softmax) is read from it; the rest of the preprocessing is declared with
  ``preprocess`` (a ``--preprocess`` YAML file and flags, ``edgekit.sources.declared``) or
  edgekit's default [0, 1] RGB bilinear;
- a Keras model (``.keras``, legacy ``.h5``, or a SavedModel folder; ``edgekit[keras]``), loaded in
  safe mode and cleaned of inference-time no-ops (``edgekit.sources.keras``). Its preprocessing is
  NHWC at the scale the model's own in-graph layers expect (0–255 pixels after an in-graph
  ``Rescaling``), so nothing scales twice; class names come from the data folder.

One class per kind (``TorchSource``, ``TorchScriptSource``, ``OnnxSource``, ``KerasSource``), all
``Source``s: ``predict()`` gives the source's own outputs, ``onnx_file()`` the ONNX graph the ONNX
Runtime and OpenVINO backends convert from. An ONNX source reaches TFLite too: its
``torch_module()`` replays the graph with PyTorch ops (``edgekit.sources.onnx_torch``) for the
LiteRT backend's litert-torch path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.data.preprocess import PREPROCESS_KEYS
from edgekit.errors import ConfigError
from edgekit.sources.base import Source
from edgekit.sources.declared import DEFAULT, DeclaredPreprocess, check_agrees, declared
from edgekit.sources.keras import KerasSource, from_keras, is_keras_source
from edgekit.sources.onnx import OnnxSource, from_onnx
from edgekit.sources.torch import (
    TorchScriptSource,
    TorchSource,
    from_checkpoint,
    from_exported,
    from_torchscript,
    from_zoo,
    is_torchscript,
    predict_module,
)
from edgekit.zoo import list_models, model_config

LoadedModel = Source  # the name of the 0.1 API
SOURCE_CLASSES: tuple[type[Source], ...] = (TorchSource, TorchScriptSource, OnnxSource, KerasSource)

__all__ = ["KerasSource", "LoadedModel", "OnnxSource", "Source", "TorchScriptSource",
           "TorchSource", "load_model", "predict_module", "reference_outputs", "source_class"]


def load_model(source: str | Path, *, input_size: int | None = None,
               num_classes: int | None = None, trust_source: bool = False,
               input_range: str | None = None,
               preprocess: str | Path | DeclaredPreprocess | None = None) -> Source:
    """Resolve ``source``: a checkpoint, ``zoo_name:weights.pt``, ``.pt2``, TorchScript, ``.onnx``,
    a Keras model (``.keras``/``.h5``/SavedModel folder) or a bare zoo name.

    ``preprocess`` declares how the model's images are read: a YAML file with the keys of a
    manifest's ``preprocess`` section (input_size, color, layout, scale, mean, std, resize) or a
    ``DeclaredPreprocess`` (file and flags); ``input_size`` is ``--input-size`` on top. What the
    model fixes itself wins, and a declared value that contradicts it is a ConfigError.
    ``trust_source`` lets a Keras model with ``Lambda`` layers (arbitrary Python) load;
    ``input_range`` ("0-255" or "0-1") overrides the pixel range edgekit reads from a Keras
    model's in-graph preprocessing."""
    decl = declared(preprocess, input_size=input_size)
    if "input_size" in decl.values:  # the CLI declares --input-size: zoo models are built at it
        input_size = decl.values["input_size"][0]
    text = str(source)
    name, sep, weights = text.partition(":")
    if sep and name in list_models():
        return _carried(from_checkpoint(Path(weights), text, arch=name, input_size=input_size),
                        decl)
    path = Path(text)
    if is_keras_source(path):
        return from_keras(path, decl, trust_source, input_range)
    if input_range is not None:
        raise ConfigError("--input-range applies to Keras sources only (edgekit checkpoints "
                          "carry their preprocessing; ONNX/TorchScript/.pt2 take [0, 1] RGB "
                          "unless --preprocess or --scale say otherwise)")
    if path.suffix.lower() == ".onnx":
        return from_onnx(path, decl)
    if path.suffix.lower() == ".pt2":
        return from_exported(path, decl)
    if path.suffix.lower() in (".ts", ".torchscript") or is_torchscript(path):
        return from_torchscript(path, decl)
    if path.suffix in (".pt", ".pth") or path.is_file():
        return _carried(from_checkpoint(path, text, arch=None, input_size=input_size), decl)
    if text in list_models():
        return _carried(from_zoo(text, input_size=input_size, num_classes=num_classes), decl)
    model_config(text)  # raises ConfigError with the known names and a close match
    raise ConfigError(f"Unknown model source {text!r}")  # pragma: no cover


def _carried(loaded: Source, decl: DeclaredPreprocess) -> Source:
    """An edgekit checkpoint or zoo model: its spec is its own (a checkpoint's recorded one, or
    the architecture's at ``--input-size``); any other declared value must agree with it."""
    recorded = "preprocess" in loaded.metadata
    by = "checkpoint" if recorded else "architecture"
    others = DeclaredPreprocess({k: v for k, v in decl.values.items() if k != "input_size"},
                                decl.origins)
    check_agrees(loaded.source, others, {k: getattr(loaded.spec, k) for k in PREPROCESS_KEYS},
                 by)
    origins = {k: "checkpoint" if recorded else DEFAULT for k in PREPROCESS_KEYS}
    if not recorded and "input_size" in decl.values:
        origins["input_size"] = decl.origins["input_size"]
    return dataclasses.replace(loaded, spec_sources=origins)


def source_class(kind: str) -> type[Source]:
    """The Source class of a manifest's ``source.kind`` (a PyTorch module when unknown)."""
    return next((c for c in SOURCE_CLASSES if c.kind == kind), TorchSource)


def reference_outputs(source: Source, x: Any, batch_size: int = 32) -> np.ndarray:
    """The source model's own float32 outputs for a batch: what every artifact is held to."""
    return source.predict(x, batch_size=batch_size)
