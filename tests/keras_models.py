"""Small Keras models built in code (no downloads) for the Keras-source tests.

Each builder returns an uncompiled ``keras.Model`` taking NHWC float32 images. Import this module
only inside tests that have already skipped when TensorFlow/Keras is missing.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers  # noqa: E402


def _cbam(x, ratio: int = 16, kernel: int = 5, name: str = "cbam"):
    """CBAM from the DSConv-CBAM paper with built-in layers and ops only (no Lambda)."""
    c = x.shape[-1]
    hidden = max(1, c // ratio)
    mlp1 = layers.Dense(hidden, activation="relu", name=f"{name}_mlp1")
    mlp2 = layers.Dense(c, name=f"{name}_mlp2")
    avg = mlp2(mlp1(layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)))
    mx = mlp2(mlp1(layers.GlobalMaxPooling2D(name=f"{name}_gmp")(x)))
    gate = layers.Activation("sigmoid", name=f"{name}_cgate")(layers.Add(name=f"{name}_sum")([avg, mx]))
    x = layers.Multiply(name=f"{name}_cmul")([x, layers.Reshape((1, 1, c), name=f"{name}_rs")(gate)])
    mean = keras.ops.mean(x, axis=-1, keepdims=True)
    peak = keras.ops.max(x, axis=-1, keepdims=True)
    s = layers.Concatenate(name=f"{name}_cat")([mean, peak])
    s = layers.Conv2D(1, kernel, padding="same", activation="sigmoid", name=f"{name}_sconv")(s)
    return layers.Multiply(name=f"{name}_smul")([x, s])


def dsconv_cbam(size: int = 64, classes: int = 4, dense: int = 128) -> keras.Model:
    """The published DSConv-CBAM layer list: 3 × (SeparableConv2D → MaxPool → CBAM) → Flatten →
    Dense(dense, ReLU) → Dense(classes, softmax). Input in [0, 1] (no in-graph scaling)."""
    inp = keras.Input((size, size, 3), name="image")
    x = inp
    for i, f in enumerate((32, 64, 128)):
        x = layers.SeparableConv2D(f, 3, padding="same", activation="relu", name=f"sep{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = _cbam(x, name=f"cbam{i}")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, activation="relu", name="fc")(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="dsconv_cbam_keras")


def augmented_cnn(size: int = 64, classes: int = 4, width: int = 16) -> keras.Model:
    """What public Keras tumour models look like: Rescaling(1/255) right after the input (so the
    model takes 0–255 pixels), a Sequential of random augmentation layers, Conv/BN/ReLU blocks,
    GaussianNoise and Dropout, softmax head."""
    inp = keras.Input((size, size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inp)
    x = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.05),
                          layers.RandomZoom(0.1)], name="augment")(x)
    for i, f in enumerate((width, 2 * width, 4 * width)):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GaussianNoise(0.1, name="noise")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="drop")(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="augmented_cnn")


def densenet121_binary(size: int = 64) -> keras.Model:
    """keras.applications.DenseNet121 (weights=None) with a 1-unit sigmoid head."""
    base = keras.applications.DenseNet121(weights=None, include_top=False,
                                          input_shape=(size, size, 3), pooling="avg")
    out = layers.Dense(1, activation="sigmoid", name="tumour")(base.output)
    return keras.Model(base.input, out, name="densenet121_binary")


def efficientnetv2b0_binary(size: int = 64) -> keras.Model:
    """keras.applications.EfficientNetV2B0 (weights=None, in-graph preprocessing: it takes
    0–255 pixels) with a 1-unit sigmoid head."""
    base = keras.applications.EfficientNetV2B0(weights=None, include_top=False,
                                               input_shape=(size, size, 3), pooling="avg")
    out = layers.Dense(1, activation="sigmoid", name="tumour")(base.output)
    return keras.Model(base.input, out, name="efficientnetv2b0_binary")


def with_lambda(size: int = 32) -> keras.Model:
    """A model with a Lambda layer: arbitrary Python that safe_mode refuses to deserialize."""
    inp = keras.Input((size, size, 3))
    x = layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(2, activation="softmax")(x))


def normalization_first(size: int = 32, data_max: float = 255.0, classes: int = 3,
                        seed: int = 0) -> keras.Model:
    """A Normalization layer adapted on uniform [0, data_max] images right after the input (so
    its mean is data_max / 2: 0–255 data gives ~127), then Conv → GAP → softmax head."""
    import numpy as np

    norm = layers.Normalization(name="norm")
    norm.adapt(np.random.default_rng(seed).uniform(0.0, data_max, (8, size, size, 3))
               .astype("float32"))
    inp = keras.Input((size, size, 3), name="pixels")
    x = layers.Conv2D(8, 3, activation="relu", name="conv")(norm(inp))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="normalization_first")
