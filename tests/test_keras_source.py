"""Keras sources (edgekit.sources.keras) and the LiteRT backend's Keras path.

Every model is built in code (tests/keras_models.py) at 64 px or less and saved to tmp_path;
nothing is downloaded. The heavier Keras Applications models appear only in the input-range
test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

import keras_models as km  # noqa: E402

from edgekit.errors import (  # noqa: E402
    BackendUnavailable,
    ConfigError,
    DataError,
    ExportError,
    UnsafeSourceError,
)
from edgekit.sources.keras import (  # noqa: E402
    KERAS_HINT,
    KerasModel,
    is_keras_source,
    load_keras,
    unsafe_layers,
)

# Keras' own model.save() warns about numpy 2's __array__ copy keyword (and about .h5 files).
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")]

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def pixels(n: int, seed: int = 0, size: int = SIZE, high: float = 255.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, high, (n, size, size, 3)).astype(np.float32)


def with_bn_statistics(model, seed: int = 1):
    """Non-trivial BatchNormalization moving statistics, so inference and training mode differ."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 3.0, n).astype("float32"))
    return model


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keras")


@pytest.fixture(scope="module")
def augmented(store: Path):
    """(keras model, .keras path, loaded KerasModel) for the augmented CNN."""
    import keras

    keras.utils.set_random_seed(0)
    model = with_bn_statistics(km.augmented_cnn(SIZE, 4))
    path = store / "augmented.keras"
    model.save(path)
    return model, path, load_keras(path)


@pytest.fixture(scope="module")
def dsconv(store: Path):
    import keras

    keras.utils.set_random_seed(0)
    model = km.dsconv_cbam(SIZE, 4, dense=32)
    path = store / "dsconv.keras"
    model.save(path)
    return model, path, load_keras(path)


@pytest.fixture(scope="module")
def tflite_fp32(augmented, store: Path) -> Path:
    _, _, loaded = augmented
    path = store / "augmented-fp32.tflite"
    facts = loaded.to_tflite(path, precision="fp32")
    assert facts["io"] == "float32" and facts["input_shape"] == [1, SIZE, SIZE, 3]
    return path


# ----------------------------------------------------------------------------- loading
def test_keras_round_trip_in_safe_mode(dsconv):
    model, path, loaded = dsconv
    assert is_keras_source(path) and unsafe_layers(path) == []
    assert isinstance(loaded, KerasModel) and loaded.flavor == "keras"
    assert loaded.name == "dsconv_cbam_keras" and loaded.input_size == (SIZE, SIZE)
    assert loaded.channels == 3 and loaded.outputs == 4 and loaded.final_activation == "softmax"
    assert loaded.removed == []
    x = pixels(5, high=1.0)
    np.testing.assert_allclose(loaded.predict(x, batch_size=2),
                               model(x, training=False).numpy(), atol=1e-5)


def test_dsconv_cbam_to_onnx_matches(dsconv, tmp_path):
    import onnx
    import onnxruntime as ort

    model, _, loaded = dsconv
    path = loaded.to_onnx(tmp_path / "dsconv.onnx", size=(SIZE, SIZE))
    proto = onnx.load(str(path))
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "input" and inp.shape[1:] == [SIZE, SIZE, 3]
    assert not isinstance(inp.shape[0], int) or inp.shape[0] == 1
    x = pixels(3, seed=2, high=1.0)
    out = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(out, model(x, training=False).numpy(), atol=1e-4)


def test_lambda_is_refused_unless_trusted(tmp_path):
    model = km.with_lambda()
    path = tmp_path / "lambda.keras"
    model.save(path)
    model.save(tmp_path / "lambda.h5")
    assert unsafe_layers(path) == ["double (Lambda)"]
    assert unsafe_layers(tmp_path / "lambda.h5") == ["double (Lambda)"]
    with pytest.raises(ConfigError) as info:
        load_keras(path)
    msg = str(info.value)
    assert "double (Lambda)" in msg and "arbitrary Python code" in msg
    assert "safe mode" in msg and "--trust-source" in msg and "trust" in msg
    assert isinstance(info.value, UnsafeSourceError) and info.value.exit_code == 2
    loaded = load_keras(path, trust_source=True)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x), model(x).numpy(), atol=1e-6)


def test_unsafe_layers_reads_the_config_without_tensorflow(tmp_path):
    """The Lambda scan deserializes nothing: it runs with TensorFlow and Keras blocked."""
    km.with_lambda().save(tmp_path / "lambda.keras")
    code = textwrap.dedent(f"""
        import sys
        for name in ("tensorflow", "keras", "tf_keras", "tf2onnx", "torch"):
            sys.modules[name] = None
        from edgekit.sources.keras import unsafe_layers
        print(unsafe_layers({str(tmp_path / "lambda.keras")!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['double (Lambda)']"


def test_legacy_h5_loads_and_predicts(augmented, tmp_path):
    model, _, _ = augmented
    path = tmp_path / "augmented.h5"
    model.save(path)
    loaded = load_keras(path)
    assert loaded.flavor == "keras" and loaded.input_range == "0-255"
    assert [r.split(" ")[0] for r in loaded.removed] == ["augment", "noise", "drop"]
    x = pixels(4, seed=3)
    np.testing.assert_allclose(loaded.predict(x), model(x, training=False).numpy(), atol=1e-5)


def test_legacy_tf_keras_h5_falls_back_to_tf_keras(tmp_path):
    """A tf.keras 2 model with TFOpLambda preprocessing (x / 127.5 - 1), which Keras 3 cannot
    read: loaded with tf_keras, cleaned, 0-255 read from the in-graph division."""
    tfk = pytest.importorskip("tf_keras")
    layers = tfk.layers
    inp = tfk.Input((32, 32, 3))
    x = inp / 127.5 - 1.0
    x = tfk.Sequential([layers.RandomFlip(), layers.RandomRotation(0.1)], name="aug")(x)
    x = layers.BatchNormalization(name="bn")(layers.Conv2D(4, 3, name="conv")(x))
    x = layers.Dropout(0.3, name="drop")(layers.GlobalAveragePooling2D(name="gap")(x))
    model = tfk.Model(inp, layers.Dense(3, activation="softmax", name="head")(x))
    with_bn_statistics(model)
    path = tmp_path / "legacy.h5"
    model.save(path)
    loaded = load_keras(path)
    assert loaded.flavor == "tf_keras"
    assert loaded.removed == ["aug (Sequential of RandomFlip, RandomRotation)", "drop (Dropout)"]
    assert loaded.input_range == "0-255" and "127.5" in loaded.range_reason
    x = pixels(3, size=32)
    np.testing.assert_allclose(loaded.predict(x), model(x, training=False).numpy(), atol=1e-5)


def test_saved_model_from_keras_export(augmented, tmp_path):
    """Keras 3 ``model.export()`` of a model with augmentation at the front traces it — and the
    BatchNormalization after it — in training mode; the raw tf2onnx conversion keeps the random
    ops (ONNX Runtime refuses them). edgekit's SavedModel source predicts like the Keras model
    in inference mode and converts cleanly."""
    import onnx
    import onnxruntime as ort
    import tensorflow as tf

    model, _, _ = augmented
    folder = tmp_path / "exported"
    model.export(str(folder), verbose=False)
    x = pixels(4, seed=4)
    want = model(x, training=False).numpy()
    exported = tf.saved_model.load(str(folder))  # held: its functions need its variables
    raw = exported.serve(tf.constant(x)).numpy()
    assert np.abs(raw - want).max() > 1e-3  # the export itself does not compute inference mode

    assert is_keras_source(folder) and unsafe_layers(folder) == []
    loaded = load_keras(folder)
    assert loaded.flavor == "saved_model" and loaded.input_size == (SIZE, SIZE)
    assert loaded.outputs == 4 and loaded.final_activation == "softmax"
    assert loaded.input_range == "0-255", loaded.range_reason
    assert len(loaded.removed) == 3 and all("augment" in r for r in loaded.removed)
    assert sum(n.startswith("BatchNormalization '") for n in loaded.notes) == 3, loaded.notes
    np.testing.assert_allclose(loaded.predict(x), want, atol=1e-5)

    path = loaded.to_onnx(tmp_path / "exported.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any("Random" in op or "ImageProjective" in op for op in ops), ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], want, atol=1e-4)


# ----------------------------------------------------------------------------- cleanup
def test_cleanup_removes_identity_layers_and_onnx_matches(augmented, tmp_path):
    import onnx
    import onnxruntime as ort

    model, _, loaded = augmented
    assert loaded.removed == ["augment (Sequential of RandomFlip, RandomRotation, RandomZoom)",
                              "noise (GaussianNoise)", "drop (Dropout)"]
    x = pixels(6, seed=5)
    want = model(x, training=False).numpy()
    np.testing.assert_allclose(loaded.predict(x), want, atol=1e-6)
    path = loaded.to_onnx(tmp_path / "augmented.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any("Random" in op for op in ops), ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"input": x})[0] - want).max() < 1e-4


@pytest.mark.parametrize("builder, expected", [
    ("augmented_cnn", "0-255"),
    ("efficientnetv2b0_binary", "0-255"),
    ("dsconv_cbam", "0-1"),
    ("densenet121_binary", "0-1"),
    ("normalization_first_255", "0-255"),
    ("normalization_first_1", "0-1"),
])
def test_input_range(builder, expected, tmp_path):
    builders = {
        "augmented_cnn": lambda: km.augmented_cnn(SIZE, 4),
        "efficientnetv2b0_binary": lambda: km.efficientnetv2b0_binary(SIZE),
        "dsconv_cbam": lambda: km.dsconv_cbam(SIZE, 4, dense=16),
        "densenet121_binary": lambda: km.densenet121_binary(SIZE),
        "normalization_first_255": lambda: km.normalization_first(data_max=255.0),
        "normalization_first_1": lambda: km.normalization_first(data_max=1.0),
    }
    path = tmp_path / f"{builder}.keras"
    builders[builder]().save(path)
    loaded = load_keras(path)
    assert loaded.input_range == expected, loaded.range_reason
    assert loaded.range_reason
    if builder.endswith("_binary"):
        assert loaded.outputs == 1 and loaded.final_activation == "sigmoid"
    if expected == "0-255":
        assert any(k in loaded.range_reason for k in ("Rescaling", "Normalization"))


# ----------------------------------------------------------------------------- TFLite
def _keras_request(loaded: KerasModel, out: Path, precision: str, calibration=None,
                   int8_io: bool = False):
    from edgekit.backends.base import ExportRequest, QuantOptions
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.sources import KerasSource

    spec = PreprocessSpec(input_size=loaded.input_size, scale=1.0, layout="NHWC")
    source = KerasSource(keras=loaded, name=loaded.name, task="multiclass", class_names=(),
                         spec=spec, source=str(loaded.path), pretrained=True)
    return ExportRequest(model=source, precision=precision, out_dir=out,
                         stem=f"model-{precision}{'-io' if int8_io else ''}",
                         calibration=calibration, options=QuantOptions(int8_io=int8_io))


def test_tflite_fp32_matches_through_the_litert_session(augmented, tflite_fp32, tmp_path):
    from edgekit.backends.litert import BACKEND

    model, _, loaded = augmented
    x = pixels(4, seed=6)
    want = model(x, training=False).numpy()
    assert np.abs(BACKEND.open(tflite_fp32).run(x) - want).max() < 1e-4
    art = BACKEND.export(_keras_request(loaded, tmp_path, "fp32"))
    assert art.layout == "NHWC" and art.input_shape == [1, SIZE, SIZE, 3]
    assert art.input_dtype == "float32" and art.quantization == {}
    assert any("augment" in n for n in art.notes) and any("0-255" in n for n in art.notes)
    assert np.abs(BACKEND.open(art.path).run(x) - want).max() < 1e-4


def test_tflite_int8_float_and_integer_io(augmented, tmp_path):
    from edgekit.backends.litert import BACKEND

    model, _, loaded = augmented
    calibration = [pixels(1, seed=100 + i) for i in range(16)]
    x = pixels(24, seed=7)
    want = model(x, training=False).numpy()

    art = BACKEND.export(_keras_request(loaded, tmp_path, "int8", calibration))
    assert art.input_dtype == "float32" and art.output_dtype == "float32"
    assert art.quantization["calibration_images"] == 16
    assert art.quantization["method"] == "minmax" and "input" not in art.quantization
    session = BACKEND.open(art.path)
    out = session.run(x)
    assert out.shape == want.shape and np.isfinite(out).all()
    assert np.mean(out.argmax(1) == want.argmax(1)) >= 0.75
    assert np.abs(out - want).max() < 0.05

    art_io = BACKEND.export(_keras_request(loaded, tmp_path, "int8", calibration, int8_io=True))
    assert art_io.input_dtype == "int8" and art_io.output_dtype == "int8"
    q = art_io.quantization
    assert q["input"]["dtype"] == "int8" and q["input"]["scale"] > 0
    assert q["output"]["dtype"] == "int8" and any("int8 I/O" in n for n in art_io.notes)
    session_io = BACKEND.open(art_io.path)
    assert session_io.input_dtype == np.int8
    out_io = session_io.run(x)
    assert np.mean(out_io.argmax(1) == want.argmax(1)) >= 0.75


def test_tflite_requests_the_keras_path_refuses(augmented, tmp_path):
    import dataclasses

    from edgekit.backends.litert import BACKEND

    _, _, loaded = augmented
    request = _keras_request(loaded, tmp_path, "int8", [pixels(1)])
    with pytest.raises(ConfigError, match="min/max"):
        BACKEND.export(dataclasses.replace(
            request, options=dataclasses.replace(request.options, method="percentile")))
    with pytest.raises(ConfigError, match="calibration data"):
        BACKEND.export(_keras_request(loaded, tmp_path, "int8", []))
    with pytest.raises(DataError, match="calibration item 0 has shape"):
        loaded.to_tflite(tmp_path / "bad.tflite", precision="int8",
                         calibration=[np.zeros((1, 32, 32, 3), np.float32)])
    with pytest.raises(ConfigError, match="int8_io"):
        loaded.to_tflite(tmp_path / "bad.tflite", precision="fp32", int8_io=True)


# ----------------------------------------------------------------------------- errors
def test_unusable_models_are_refused_clearly(tmp_path):
    import keras
    from keras import layers

    inp = keras.Input((32, 32, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inp))
    two = keras.Model(inp, [layers.Dense(2)(x), layers.Dense(3)(x)])
    two.save(tmp_path / "two.keras")
    with pytest.raises(ConfigError, match="one input and one output"):
        load_keras(tmp_path / "two.keras")

    inp = keras.Input((3, 32, 32))
    x = layers.Conv2D(4, 3, data_format="channels_first", name="cf_conv")(inp)
    x = layers.GlobalAveragePooling2D(data_format="channels_first")(x)
    keras.Model(inp, layers.Dense(2)(x)).save(tmp_path / "nchw.keras")
    with pytest.raises(ConfigError, match="channels-first"):
        load_keras(tmp_path / "nchw.keras")

    (tmp_path / "broken.keras").write_bytes(b"not a zip archive")
    with pytest.raises(DataError, match="broken.keras"):
        load_keras(tmp_path / "broken.keras")
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n")
    with pytest.raises(DataError, match="broken.h5"):
        load_keras(tmp_path / "broken.h5")
    with pytest.raises(DataError, match="not found"):
        load_keras(tmp_path / "missing.keras")


def test_unconvertible_op_is_an_export_error_naming_it():
    """tf2onnx only logs TF ops it cannot convert and leaves them in the graph (how the random
    augmentation ops of a Keras export reach ONNX Runtime): the check names them."""
    from onnx import TensorProto, helper

    from edgekit.sources.keras.convert import _check_onnx

    node = helper.make_node("StatelessRandomUniformV2", ["shape"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("shape", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ExportError, match="onnxruntime.*StatelessRandomUniformV2"):
        _check_onnx(proto, "m")


def test_conversion_failures_name_the_op_and_the_backend(tmp_path):
    import keras
    from keras import layers

    inp = keras.Input((16, 16, 3))
    x = layers.GlobalAveragePooling2D()(keras.ops.image.rgb_to_hsv(inp))  # TF op RGBToHSV
    keras.Model(inp, layers.Dense(2)(x), name="hsv").save(tmp_path / "hsv.keras")
    loaded = load_keras(tmp_path / "hsv.keras")
    assert loaded.predict(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 2)
    with pytest.raises(ExportError, match="'onnxruntime'.*RGBToHSV"):
        loaded.to_onnx(tmp_path / "hsv.onnx")
    with pytest.raises(ExportError, match="'litert'.*RGBToHSV"):
        loaded.to_tflite(tmp_path / "hsv.tflite", precision="fp32")


def test_without_tensorflow_loading_says_how_to_install_and_tflite_still_runs(augmented,
                                                                               tflite_fp32):
    """With TensorFlow, Keras and torch unimportable: edgekit imports, recognises the source,
    explains what to install, and the exported .tflite still runs in the LiteRT session (what
    the device runner does)."""
    _, path, _ = augmented
    code = textwrap.dedent(f"""
        import sys
        for name in ("tensorflow", "keras", "tf_keras", "tf2onnx", "torch"):
            sys.modules[name] = None
        import numpy as np
        from edgekit.backends.litert import BACKEND
        from edgekit.errors import BackendUnavailable
        from edgekit.sources.keras import is_keras_source, load_keras
        assert is_keras_source({str(path)!r})
        try:
            load_keras({str(path)!r})
        except BackendUnavailable as exc:
            print("ERROR", exc)
        out = BACKEND.open({str(tflite_fp32)!r}).run(np.zeros((2, {SIZE}, {SIZE}, 3), np.float32))
        print("RAN", out.shape)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ERROR Keras sources need TensorFlow") and KERAS_HINT in lines[0]
    assert lines[1] == "RAN (2, 4)"
    assert issubclass(BackendUnavailable, Exception)
