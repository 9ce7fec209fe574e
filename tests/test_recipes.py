"""Recipes are strict: every bad key or value is named with its file."""

from __future__ import annotations

import pytest

from edgekit.errors import ConfigError
from edgekit.recipes import builtin_recipes, load_recipe


def test_builtin_recipes_load():
    assert {"fp32", "int8", "fp16"} <= set(builtin_recipes())
    r = load_recipe("int8")
    assert r.precision == "int8" and r.calibration.images == 300 and r.calibration.per_channel
    assert r.backends == ["onnxruntime", "openvino", "litert"] and r.needs_calibration
    assert load_recipe("fp16").backends == ["openvino", "litert"]
    assert not load_recipe("fp32").needs_calibration


@pytest.mark.parametrize("body, message", [
    ("name: x\nprecision: int4\nbackends: [onnxruntime]\n", "precision: Input should be"),
    ("name: x\nprecision: int8\nbackends: [tensorrt]\n", "unknown backend(s) tensorrt"),
    ("name: x\nprecision: int8\nbackends: [onnxruntime]\ngate: {max_top1_drp: 1}\n",
     "gate.max_top1_drp: unknown key"),
    ("name: x\nprecision: int8\nbackends: [onnxruntime]\ncalibration: {images: 0}\n",
     "calibration.images: Input should be greater than or equal to 1"),
    ("name: x\nprecision: int8\nbackends: []\n", "backends: List should have at least 1 item"),
    ("name: x\nprecision: int8\nbackends: [onnxruntime]\ngate: {max_top1_drop: .inf}\n",
     "gate.max_top1_drop: Input should be a finite number"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("name: [unclosed\n", "not valid YAML"),
    ("name: x\nprecision: int8\nbackends: [onnxruntime]\ngate: {max_top1_drop: 1}\n"
     "gate: {max_top1_drop: 9}\n", "duplicate key 'gate'"),
])
def test_bad_recipes_name_the_file_and_key(tmp_path, body, message):
    path = tmp_path / "r.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_unknown_recipe_lists_builtins():
    with pytest.raises(ConfigError, match="Unknown recipe 'int9'.*fp16, fp32, int8"):
        load_recipe("int9")


def test_overrides_are_validated():
    r = load_recipe("int8").with_overrides(**{"calibration.images": 8, "backends": ["litert"]})
    assert r.calibration.images == 8 and r.backends == ["litert"]
    with pytest.raises(ConfigError, match="calibration.method"):
        load_recipe("int8").with_overrides(**{"calibration.method": "kl"})
    assert load_recipe("int8").calibration.activation_ranges is None  # each backend's default
    with pytest.raises(ConfigError, match="activation_ranges"):
        load_recipe("int8").with_overrides(**{"calibration.activation_ranges": "median"})
    with pytest.raises(ConfigError, match="activation_ranges applies to method minmax"):
        load_recipe("int8").with_overrides(**{"calibration.activation_ranges": "mean",
                                              "calibration.method": "percentile"})
