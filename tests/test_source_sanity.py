"""A source model's own accuracy comes first: near-chance and permuted-class warnings, and
``--classes`` to declare the order of a third-party model's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_support import run_cli
from onnx import TensorProto, helper
from PIL import Image

from edgekit.bundle import read_manifest
from edgekit.evaluate import best_permutation, score, source_warnings
from edgekit.runner import Runner

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
LEVELS = (40, 90, 140, 190)  # each class's mean grey level in the synthetic folder


def _metrics(cm: list[list[int]]) -> dict:
    """Metrics of a model whose confusion matrix is ``cm`` (rows true, columns predicted)."""
    y, pred = [], []
    for t, row in enumerate(cm):
        for p, count in enumerate(row):
            y += [t] * count
            pred += [p] * count
    logits = np.eye(len(cm), dtype=np.float32)[pred] * 5
    return score(np.array(y), logits, task="multiclass", class_names=CLASSES[:len(cm)],
                 ci=False)


def test_best_permutation_finds_the_relabelling():
    cm = np.array([[1, 9, 0, 0], [8, 2, 0, 0], [0, 0, 0, 10], [0, 1, 9, 0]])
    assert best_permutation(cm) == (1, 0, 3, 2)
    assert best_permutation(np.diag([5, 5, 5])) == (0, 1, 2)


def test_permuted_outputs_name_the_classes_that_fit():
    lines = source_warnings(_metrics([[1, 19, 0, 0], [18, 2, 0, 0], [0, 0, 0, 20],
                                      [0, 0, 20, 0]]), CLASSES)
    assert len(lines) == 1 and "PERMUTED" in lines[0]
    assert "--classes meningioma,glioma,pituitary,notumor" in lines[0]
    assert "output 0 (glioma) looks like meningioma" in lines[0]


def test_near_chance_is_loud_and_a_healthy_model_is_quiet():
    chance = source_warnings(_metrics([[5, 5, 5, 5]] * 4), CLASSES)
    assert len(chance) == 1 and "near chance" in chance[0] and "preprocessing" in chance[0]
    assert source_warnings(_metrics([[18, 2, 0, 0], [1, 19, 0, 0], [0, 0, 20, 0],
                                     [0, 1, 0, 19]]), CLASSES) == []
    # one confused pair is not a permutation
    assert source_warnings(_metrics([[12, 8, 0, 0], [9, 11, 0, 0], [0, 0, 20, 0],
                                     [0, 0, 0, 20]]), CLASSES) == []


# ------------------------------------------------------- a third-party ONNX model, end to end
def _grey_folder(root: Path, per_class: int = 12, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for name, level in zip(CLASSES, LEVELS, strict=True):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(level + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(img).convert("RGB").save(root / name / f"{i}.png")
    return root


def _brightness_onnx(path: Path, order: tuple[int, ...], size: int = 32) -> Path:
    """An ONNX classifier (built from ONNX operators, no training) that recognises each class
    by its mean brightness; output j is class ``order[j]``."""
    centers = np.array([LEVELS[k] / 255 for k in order], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
         helper.make_node("Sub", ["m1", "centers"], ["d"]),
         helper.make_node("Mul", ["d", "d"], ["d2"]),
         helper.make_node("Mul", ["d2", "gain"], ["logits"])],
        "brightness",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, len(order)])],
        [helper.make_tensor("one", TensorProto.INT64, [1], [1]),
         helper.make_tensor("centers", TensorProto.FLOAT, [len(order)], centers),
         helper.make_tensor("gain", TensorProto.FLOAT, [], [-400.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def grey(tmp_path_factory) -> Path:
    return _grey_folder(tmp_path_factory.mktemp("grey") / "data")


def test_a_permuted_onnx_model_is_caught_and_fixed_with_classes(grey, tmp_path):
    model = _brightness_onnx(tmp_path / "model.onnx", order=(1, 0, 3, 2))
    args = ["compress", model, "--recipe", "fp32", "--backend", "onnxruntime", "--data", grey]
    res = run_cli(*args, "--out", tmp_path / "as-is")
    assert "Source model on" in res.stderr and "accuracy 0.0 %" in res.stderr
    assert "PERMUTED" in res.stderr
    assert "--classes meningioma,glioma,pituitary,notumor" in " ".join(res.stderr.split())
    fixed = run_cli(*args, "--out", tmp_path / "fixed", "--classes",
                    "meningioma,glioma,pituitary,notumor")
    assert "accuracy 100.0 %" in fixed.stderr and "PERMUTED" not in fixed.stderr
    manifest = read_manifest(tmp_path / "fixed")
    assert manifest["class_names"] == ["meningioma", "glioma", "pituitary", "notumor"]
    assert manifest["source_metrics"]["accuracy"]["value"] == 1.0
    out = run_cli("evaluate", model, "--data", grey, "--classes",
                  "meningioma,glioma,pituitary,notumor", "--json")
    assert json.loads(out.stdout)["metrics"]["accuracy"]["value"] == 1.0
    # the device runner names the right class with the declared order
    img = sorted((grey / "notumor").iterdir())[0]
    assert Runner(tmp_path / "fixed").predict_one(img)["prediction"] == "notumor"


def test_classes_must_match_the_outputs_and_the_folders(grey, tmp_path):
    model = _brightness_onnx(tmp_path / "model.onnx", order=(0, 1, 2, 3))
    base = ["compress", model, "--recipe", "fp32", "--backend", "onnxruntime", "--data", grey,
            "--out", tmp_path / "b"]
    res = run_cli(*base, "--classes", "glioma,meningioma,notumor", code=2)
    assert "--classes names 3 classes but" in res.stderr and "4 outputs" in res.stderr
    res = run_cli(*base, "--classes", "glioma,glioma,notumor,pituitary", code=2)
    assert "each class once" in res.stderr
    res = run_cli(*base, "--classes", "glioma,meningioma,notumor,pineal", code=1)
    assert "missing: pineal" in res.stderr and "unexpected: pituitary" in res.stderr
    assert not (tmp_path / "b").exists()
