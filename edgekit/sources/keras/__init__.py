"""Keras sources: ``.keras`` (Keras 3), legacy ``.h5``/``.hdf5`` and SavedModel folders.

By concern: ``safety`` (what a file is, and whether it carries Python code — read without
deserializing anything), ``load`` (safe loading into a ``KerasModel``), ``clean`` (layers that are
the identity at inference removed), ``graph`` (input range and final activation read from the
graph; SavedModel serving graphs repaired), ``convert`` (ONNX with tf2onnx, TFLite with
TensorFlow's converter), ``model`` (``KerasModel``), ``source`` (``KerasSource``), ``runtime``
(quiet TensorFlow imports). TensorFlow, Keras and tf2onnx are imported lazily: edgekit itself
imports without them.
"""

from edgekit.sources.keras.load import load_keras
from edgekit.sources.keras.model import KerasModel
from edgekit.sources.keras.runtime import KERAS_HINT
from edgekit.sources.keras.safety import UnsafeKerasModel, is_keras_source, unsafe_layers
from edgekit.sources.keras.source import INPUT_RANGES, KerasSource, from_keras

__all__ = ["INPUT_RANGES", "KERAS_HINT", "KerasModel", "KerasSource", "UnsafeKerasModel",
           "from_keras", "is_keras_source", "load_keras", "unsafe_layers"]
