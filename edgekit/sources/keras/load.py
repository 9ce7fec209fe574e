"""Load a Keras source (``.keras``, legacy ``.h5``/``.hdf5``, SavedModel folder) into a cleaned
``KerasModel``.

* ``.keras`` and ``.h5`` load with Keras 3 in safe mode (``safe_mode=True``); files Keras 3
  cannot read (e.g. a legacy h5 with ``TFOpLambda`` layers from ``x / 127.5 - 1`` in a tf.keras 2
  model) load with ``tf_keras`` instead (flavor "tf_keras"). ``Lambda`` layers are found in the
  saved config first (``safety``) and refused unless ``trust_source=True``.
* SavedModel folders load as a graph (``tf.saved_model.load``; no Python code runs, so Lambda
  layers traced into it are harmless) from the serving signature, frozen with tf2onnx's loader.
  A Keras 3 ``model.export()`` of a model that starts with random augmentation layers traces the
  augmentation, and the BatchNormalization layers after it, in *training* mode: edgekit bypasses
  every graph scope that draws random numbers and maps one image tensor to one of the same shape,
  and puts each training-mode BatchNormalization's moving mean/variance back (``graph``).
* The input pixel range is read from the graph right after the input (``graph.input_range``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError, DataError
from edgekit.sources.keras.clean import all_layers, clean_keras3, clean_tf_keras
from edgekit.sources.keras.graph import (
    bypass_random_scopes,
    final_activation,
    graph_values,
    input_range,
    refuse_random_ops,
    repair_training_bn,
)
from edgekit.sources.keras.model import KerasModel
from edgekit.sources.keras.runtime import (
    KERAS_HINT,
    fd2_silenced,
    first_line,
    import_tf,
    import_tf2onnx,
    quiet,
)
from edgekit.sources.keras.safety import (
    UnsafeKerasModel,
    is_keras_source,
    is_saved_model,
    unsafe_layers,
    unsafe_message,
)


def load_keras(path: str | Path, *, trust_source: bool = False) -> KerasModel:
    """Load a ``.keras``/``.h5``/SavedModel source, clean it for inference and describe it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Model file not found: {path}")
    if not is_keras_source(path):
        raise ConfigError(f"{path} is not a Keras model (.keras, .h5/.hdf5 or a SavedModel "
                          "folder with saved_model.pb)")
    risky = unsafe_layers(path)
    saved_model = is_saved_model(path)
    if risky and not trust_source and not saved_model:
        raise UnsafeKerasModel(unsafe_message(path, risky))
    tf, keras = import_tf()
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
        with quiet():
            return keras.models.load_model(str(path), compile=False,
                                           safe_mode=not trust_source), "keras"
    except Exception as exc:  # noqa: BLE001 - Keras raises many classes for unreadable files
        first = exc
        if "safe_mode" in str(exc) or "safe mode" in str(exc):
            raise UnsafeKerasModel(
                f"{path}: Keras safe mode refused to load it ({first_line(exc)}). The model "
                "stores Python code (e.g. a Lambda layer) that runs when it is loaded and "
                "called. Pass --trust-source (trust_source=True) to load it anyway, only for "
                "files you trust.") from exc
    try:
        import tf_keras
    except ImportError:
        raise DataError(f"{path}: Keras 3 cannot load it ({first_line(first)}); legacy "
                        f"tf.keras files also need tf_keras: {KERAS_HINT}") from first
    try:
        with quiet():
            return tf_keras.models.load_model(str(path), compile=False,
                                              safe_mode=not trust_source), "tf_keras"
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a loadable Keras model. Keras 3: {first_line(first)}; "
                        f"tf_keras: {first_line(exc)}") from exc


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
        cleaned, removed = clean_tf_keras(model, sys.modules["tf_keras"])
        notes.append("loaded with tf_keras: Keras 3 cannot read this legacy file")
    else:
        cleaned, removed = clean_keras3(model, keras)
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
    fn, _ = km.concrete(None, None)
    km._predict_fn = fn  # the same signature predict() uses: trace once
    graph = fn.get_concrete_function().graph
    layer_classes = _layer_classes(cleaned)
    km.input_range, km.range_reason = input_range(graph, graph.inputs[0],
                                                   graph_values(graph), layer_classes)
    km.final_activation = final_activation(graph.outputs[0])
    refuse_random_ops(path, graph.as_graph_def())
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
    for layer in all_layers(model):
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


def _layer_classes(model: Any) -> dict[str, str]:
    return {str(layer.name): type(layer).__name__ for layer in all_layers(model)}


def _load_saved_model(path: Path, tf: Any, risky: list[str]) -> KerasModel:
    tf2onnx = import_tf2onnx()
    try:
        with quiet():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - TF raises many classes for bad folders
        raise DataError(f"{path}: not a readable SavedModel ({first_line(exc)})") from exc
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
        with quiet(), fd2_silenced():
            graph_def = tf2onnx.tf_loader.from_function(cf, [in_name], [out_name])
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot freeze the serving signature {sig_name!r} "
                        f"({first_line(exc)})") from exc
    out_node = out_name.split(":")[0]
    graph_def, removed = bypass_random_scopes(graph_def, out_node, tf)
    values: dict[str, list[Any]] = {}
    for v in loaded.variables:
        values.setdefault(v.name.split(":")[0], []).append(v)
    graph_def, repaired = repair_training_bn(path, graph_def, out_node, values, tf)
    refuse_random_ops(path, graph_def)
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
    km.input_range, km.range_reason = input_range(graph, start, graph_values(graph), {})
    km.range_reason = km.range_reason.replace("the graph scope", "the serving-graph scope")
    km.final_activation = final_activation(graph.get_tensor_by_name(out_name))
    return km


