"""Keras sources end to end: compress (fp32 + int8, all three backends), verify, bench --quick,
and the device runner without TensorFlow or torch.

The models are built in code (tests/keras_models.py); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import keras_models as km  # noqa: E402

from edgekit.bundle import read_manifest  # noqa: E402
from edgekit.compress import compress  # noqa: E402
from edgekit.errors import ConfigError  # noqa: E402
from edgekit.sources import load_model  # noqa: E402

BACKENDS = ["onnxruntime", "openvino", "litert"]
SMALL = {"calibration_images": 16, "verification_images": 32, "seed": 0}


def _pixels(data: Path, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of ``data`` as 0–255 NHWC float32 (edgekit's own decoder), with labels."""
    from edgekit.data.folder import scan
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.evaluate import load_arrays

    ds = scan(data)
    x, y = load_arrays(ds, PreprocessSpec(input_size=size, scale=1.0, layout="NHWC"))
    return x, y, list(ds.classes)


@pytest.fixture(scope="module")
def trained_keras(mri_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The augmented CNN (in-graph Rescaling(1/255) + random augmentation + BN + noise +
    dropout) trained on 0–255 phantom pixels until it separates the four classes."""
    import keras

    keras.utils.set_random_seed(0)
    x, y, _ = _pixels(mri_phantoms)
    model = km.augmented_cnn(64, 4)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=60, batch_size=16, verbose=0, shuffle=True)  # ~30 s on 2 cores
    path = tmp_path_factory.mktemp("keras") / "augmented.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def binary_data(mri_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two class folders (no / yes tumour) made from the phantoms."""
    root = tmp_path_factory.mktemp("binary") / "data"
    for name, src in (("no", "notumor"), ("yes", "glioma")):
        shutil.copytree(mri_phantoms / src, root / name)
    return root


@pytest.fixture(scope="module")
def keras_int8(trained_keras: Path, mri_phantoms: Path, tmp_path_factory: pytest.TempPathFactory):
    """The trained Keras model compressed to int8 for all three backends (read-only)."""
    return compress(trained_keras, data=mri_phantoms, recipe="int8", backends=BACKENDS,
                    out=tmp_path_factory.mktemp("keras-int8") / "bundle",
                    allow_accuracy_drop=True, **SMALL)


def test_in_graph_rescaling_is_kept_and_never_applied_twice(trained_keras, keras_int8,
                                                             mri_phantoms):
    """The model takes 0–255 pixels: the bundle's spec must not scale them. Fed [0, 1] inputs
    (what a default spec would do) the same model collapses to chance."""
    from edgekit.runner import Runner
    from edgekit.sources import load_model, reference_outputs

    loaded = load_model(trained_keras)
    assert loaded.kind == "keras" and loaded.spec.layout == "NHWC"
    assert loaded.spec.scale == 1.0 and loaded.metadata["keras"]["input_range"] == "0-255"
    removed = " ".join(loaded.metadata["keras"]["removed_layers"])
    assert "augment" in removed and "noise" in removed and "drop" in removed
    x, y, _ = _pixels(mri_phantoms)
    right = float(np.mean(reference_outputs(loaded, x).argmax(1) == y))
    twice = float(np.mean(reference_outputs(loaded, x / 255.0).argmax(1) == y))
    assert right >= 0.75, right
    assert twice <= 0.35, twice  # the collapse this test guards against (chance: 0.25)

    res, out = keras_int8, keras_int8.bundle
    for a in res.artifacts:  # 32 images: one flip is 3 points, so agreement, not the gate
        assert a.verification.top1_agreement >= 0.9, (a.name, a.verification.checks)
    m = read_manifest(out)
    assert m["preprocess"]["scale"] == 1.0 and m["preprocess"]["layout"] == "NHWC"
    assert m["source"]["kind"] == "keras" and m["head"]["scores_are"] == "probs"
    assert m["source_metrics"]["accuracy"]["value"] >= 0.7
    paths = sorted(p for c in ("glioma", "pituitary") for p in (mri_phantoms / c).glob("*.jpg"))
    names = read_manifest(out)["class_names"]
    keras_pred = [names[i] for i in reference_outputs(
        loaded, np.stack([loaded.spec.load(p) for p in paths])).argmax(1)]
    keras_acc = np.mean([k == p.parent.name for k, p in zip(keras_pred, paths, strict=True)])
    for art in m["artifacts"]:
        assert art["input"]["layout"] == "NHWC"
        runner = Runner(out, art["name"])  # the device runner: spec from the manifest
        preds = [runner.predict_one(p)["prediction"] for p in paths]
        agree = np.mean([a == b for a, b in zip(preds, keras_pred, strict=True)])
        acc = np.mean([pred == p.parent.name for pred, p in zip(preds, paths, strict=True)])
        assert agree >= 0.85, (art["name"], agree)
        assert acc >= keras_acc - 0.1 and acc >= 0.5, (art["name"], acc, keras_acc)


def test_device_runner_needs_neither_tensorflow_nor_torch(keras_int8, mri_phantoms):
    out = keras_int8.bundle
    images = sorted((mri_phantoms / "pituitary").glob("*.jpg"))[:2]
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in
                      ("torch", "tensorflow", "keras", "tf_keras", "tf2onnx"))
    code = (f"import sys; {block}; from edgekit.runner import main; "
            "sys.exit(main(sys.argv[1:]))")
    for artifact in ("onnxruntime-int8", "openvino-int8", "litert-int8"):
        proc = subprocess.run([sys.executable, "-c", code, str(out), *map(str, images),
                               "--artifact", artifact, "--json"], capture_output=True,
                              text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["prediction"] for r in rows] == ["pituitary", "pituitary"], rows


BUILDERS = {
    "dsconv_cbam": lambda: km.dsconv_cbam(64, 4, dense=32),
    "augmented_cnn": lambda: km.augmented_cnn(64, 4),
    "densenet121_binary": lambda: km.densenet121_binary(32),  # 32 px: the smallest it takes
    "efficientnetv2b0_binary": lambda: km.efficientnetv2b0_binary(32),
}
# The two Keras Applications (hundreds of layers) are the slow ones. Their fp32 conversions are
# checked on every backend (exact, so every converter is held to the logit tolerance on both
# architectures); int8 of a Keras Application on ONNX Runtime only, for EfficientNetV2 (it
# reuses the fp32 run's tf2onnx graph; DenseNet121's 12 s ORT calibration added no other
# path): int8 from Keras on OpenVINO and LiteRT is covered by the two small models here and by
# test_keras_source.py.
INT8_BACKENDS = {"densenet121_binary": [], "efficientnetv2b0_binary": ["onnxruntime"]}
# bench --quick with accuracy through the Keras reference took 20 s of DenseNet121's 46; the
# binary-head bench path is EfficientNetV2's (the same sigmoid head, the same bench code)
NOT_BENCHED = {"densenet121_binary"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_keras_model_compresses_verifies_and_benches(name, mri_phantoms, binary_data,
                                                           tmp_path, cli):
    """fp32 to all three backends and int8, verified against Keras; then bench --quick
    (``INT8_BACKENDS`` and ``NOT_BENCHED`` trim the two Keras Applications)."""
    import keras

    keras.utils.set_random_seed(0)
    model = BUILDERS[name]()
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = load_model(path)  # loaded (and converted to ONNX) once for both recipes
    binary = name.endswith("_binary")
    data = binary_data if binary else mri_phantoms
    bundles, artifacts = [], 0
    for recipe in ("fp32", "int8"):
        out = tmp_path / f"{name}-{recipe}"
        backends = INT8_BACKENDS.get(name, BACKENDS) if recipe == "int8" else BACKENDS
        if not backends:
            continue
        res = compress(loaded, data=data, out=out, recipe=recipe, backends=backends,
                       allow_accuracy_drop=True, **SMALL)
        assert [a.name for a in res.artifacts] == [f"{b}-{recipe}" for b in backends]
        artifacts += len(backends)
        for a in res.artifacts:
            v = a.verification.to_json()
            assert v["n"] >= 16 and np.isfinite(v["max_abs_logit_diff"])
            if recipe == "fp32":  # exact conversions: held to the logit tolerance
                assert v["passed"], (a.name, v["checks"])
            if binary:
                assert v["metrics"]["task"] == "binary"
                assert {"sensitivity", "specificity", "auroc"} <= set(v["metrics"])
        m = read_manifest(out)
        if binary:
            assert m["head"]["type"] == "binary-sigmoid" and m["head"]["positive_class"] == "yes"
            assert m["class_names"] == ["no", "yes"]
        bundles.append(out)
    expected = "0-255" if name in ("augmented_cnn", "efficientnetv2b0_binary") else "0-1"
    assert m["source"]["keras"]["input_range"] == expected
    if name in NOT_BENCHED:
        return
    res = cli("bench", *map(str, bundles), "--quick", "--threads", "1", "--data", str(data),
              "--max-images", "16", "--out", str(tmp_path / "runs"), "--json")
    report = json.loads(res.stdout)
    timed = {r["artifact"] for r in report["rows"] if (r.get("latency_ms") or {}).get("p50")}
    assert len(timed) == artifacts, report["rows"]  # the Keras source is the reference, not timed
    accuracy = [a for a in report["artifacts"] if a.get("kind") == "artifact"]
    assert all(a["accuracy_source"] == "bench" for a in accuracy), accuracy


def test_binary_threshold_is_configurable_and_recorded(binary_data, mri_phantoms, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "tiny.keras"
    keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x)).save(path)
    out = tmp_path / "b"
    res = compress(path, data=binary_data, out=out, recipe="fp32", backends=["onnxruntime"],
                   threshold=0.3, **SMALL)
    m = read_manifest(out)
    assert m["head"]["threshold"] == 0.3
    assert res.artifacts[0].verification.metrics["threshold"] == 0.3
    four = tmp_path / "four.keras"
    km.augmented_cnn(64, 4).save(four)
    with pytest.raises(ConfigError, match="sigmoid heads"):
        compress(four, data=mri_phantoms, out=tmp_path / "c", recipe="fp32",
                 backends=["onnxruntime"], threshold=0.3, **SMALL)


def test_pruning_a_keras_model_is_a_clear_usage_error(trained_keras, mri_phantoms, tmp_path,
                                                      cli):
    with pytest.raises(ConfigError, match="not supported for Keras models"):
        compress(trained_keras, data=mri_phantoms, out=tmp_path / "b", recipe="prune30-int8",
                 **SMALL)
    res = cli("prune", str(trained_keras), "--data", str(mri_phantoms), "--out",
              str(tmp_path / "p.pt"), code=2)
    assert "not supported for Keras models" in res.output
    assert not (tmp_path / "b").exists()
