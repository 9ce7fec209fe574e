"""TensorFlow plumbing for Keras sources: quiet imports, silenced native banners, one-line
errors. TensorFlow, Keras and tf2onnx are imported inside the functions: edgekit imports
without them."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from edgekit.backends.base import first_line as backend_first_line
from edgekit.errors import BackendUnavailable

KERAS_HINT = "pip install 'edgekit[keras]'"


_NOISY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "h5py")


@contextlib.contextmanager
def fd2_silenced() -> Iterator[list[str]]:
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


def import_tf() -> tuple[Any, Any]:
    """``tensorflow`` and ``keras`` (Keras 3 on the TensorFlow backend), quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    try:
        if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
            import keras
            import tensorflow as tf
        else:
            with fd2_silenced():
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


def import_tf2onnx() -> Any:
    try:
        import tf2onnx
        import tf2onnx.tf_loader  # noqa: F401 - used by the SavedModel loader
    except ImportError as exc:
        raise BackendUnavailable(
            f"Converting Keras models to ONNX needs tf2onnx, which is not installed ({exc}): "
            f"{KERAS_HINT}") from exc
    return tf2onnx


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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


def first_line(exc: BaseException) -> str:
    """"TypeName: first line" of an exception, at most 400 characters."""
    return backend_first_line(exc, 400, typed=True)


