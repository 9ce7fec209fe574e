"""What a Keras source is, and whether it carries Python code — read from the saved config
without deserializing anything: a ``.keras`` archive's ``config.json``, an h5 file's
``model_config`` attribute, a SavedModel's ``keras_metadata.pb`` (parsed from the protobuf wire
format, so neither TensorFlow nor tf_keras is needed). ``Lambda`` layers store arbitrary Python
code that runs when the model is loaded and called: they are refused unless the user trusts the
file."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import BackendUnavailable, ConfigError, DataError, UnsafeSourceError
from edgekit.sources.keras.runtime import KERAS_HINT

H5_SUFFIXES = (".h5", ".hdf5")


class UnsafeKerasModel(ConfigError, UnsafeSourceError):
    """A Keras model whose config holds Python code (Lambda layers); exit code 2."""


def is_keras_source(path: str | Path) -> bool:
    """``.keras``, ``.h5``/``.hdf5`` (by suffix), or a folder holding ``saved_model.pb``."""
    path = Path(path)
    if path.suffix.lower() == ".keras" or path.suffix.lower() in H5_SUFFIXES:
        return True
    return path.is_dir() and (path / "saved_model.pb").is_file()


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def unsafe_layers(path: str | Path) -> list[str]:
    """Layers that carry Python code (``Lambda``; Python lambdas serialized anywhere in a layer's
    config), as ``"name (Lambda)"``, read from the saved config without deserializing anything:
    a ``.keras`` archive's ``config.json``, an h5 file's ``model_config`` attribute, a
    SavedModel's ``keras_metadata.pb`` (absent: ``[]``). DataError if the file cannot be read."""
    path = Path(path)
    if is_saved_model(path):
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
    elif path.suffix.lower() in H5_SUFFIXES:
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


def unsafe_message(path: Path, layers: list[str]) -> str:
    return (f"{path} holds {len(layers)} layer(s) with Python code: {', '.join(layers)}. A Lambda "
            "layer stores arbitrary Python code that runs when the model is loaded and called, "
            "so Keras safe mode refuses to load it. Pass --trust-source (trust_source=True) to "
            "load it anyway, only for files you trust, or rebuild the model with built-in "
            "layers.")


