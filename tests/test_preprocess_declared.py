"""Declared preprocessing (issue 15 item 1): ``--preprocess FILE.yaml`` and its flags, the resize
filter, what an ONNX model fixes itself (size, layout, channels, an in-graph softmax), the
contradiction errors, and spec version 1 bundles still readable by the runner.

The models are built here: a 1-channel 48 px CNN (torch → ONNX, opset 17) normalised with mean /
std 0.5, and an NHWC RGB graph with a softmax (onnx.helper, a Transpose at the input, like tf2onnx
writes). The test's own preprocessing is PIL + numpy, written out independently of edgekit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data.folder import scan_folder
from edgekit.data.preprocess import RESIZE_FILTERS, PreprocessSpec
from edgekit.errors import ConfigError
from edgekit.evaluate import load_arrays
from edgekit.manifest import Manifest
from edgekit.runner import Runner
from edgekit.sources import load_model
from edgekit.sources.declared import declared

SMALL = ["--calibration-images", 8, "--verification-images", 16]
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
               "area": Image.Resampling.BOX}


def own_gray(path: Path, size: int, resample: Image.Resampling) -> np.ndarray:
    """The gray model's own preprocessing: L, resize, /255, (x - 0.5) / 0.5, (1, H, W)."""
    img = Image.open(path).convert("L").resize((size, size), resample)
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    return ((x - np.float32(0.5)) / np.float32(0.5))[None]


@pytest.fixture(scope="module")
def gray_onnx(tmp_path_factory) -> Path:
    """A 1-channel 48×48 NCHW classifier with 4 logits, exported from torch at opset 17."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    path = tmp_path_factory.mktemp("gray") / "gray.onnx"
    torch.onnx.export(net, (torch.rand(1, 1, 48, 48),), str(path), opset_version=17,
                      dynamo=False, input_names=["x"], output_names=["logits"])
    return path


@pytest.fixture(scope="module")
def nhwc_onnx(tmp_path_factory) -> Path:
    """An RGB 32×32 NHWC graph ending in a Softmax: Transpose → Conv → ReLU → GAP → Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    fw = numpy_helper.from_array(rng.normal(0, 0.5, (8, 4)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(np.zeros(4, np.float32), "fb")
    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "nhwc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 32, 32, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])], [w, b, fw, fb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("nhwc") / "nhwc.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def gray_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pre") / "gray.yaml"
    path.write_text("color: gray\nmean: [0.5]\nstd: [0.5]\nscale: 0.00392156862745098\n"
                    "resize: lanczos\n")
    return path


@pytest.fixture(scope="module")
def gray_bundle(gray_onnx, gray_yaml, mri_phantoms, tmp_path_factory) -> Path:
    from cli_support import run_cli

    out = tmp_path_factory.mktemp("b") / "gray-fp32"
    run_cli("compress", gray_onnx, "--data", mri_phantoms, "--out", out, "--preprocess",
            gray_yaml, "--recipe", "fp32", "--backend", "onnxruntime", "--backend", "openvino",
            *SMALL)
    return out


# ------------------------------------------------------------------------- the resize filter
@pytest.mark.parametrize("name", sorted(PIL_FILTERS))
def test_each_resize_filter_matches_pillow_8_and_16_bit(name, tmp_path):
    rng = np.random.default_rng(1)
    eight = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)).save(eight)
    sixteen = tmp_path / "b.png"
    deep = rng.integers(0, 65536, (37, 53)).astype(np.uint16)
    Image.fromarray(deep).save(sixteen)
    spec = PreprocessSpec(input_size=(20, 24), color="gray", mean=(0.0,), std=(1.0,),
                          resize=name)
    # the spec's JSON (what a manifest carries to the runner) gives the same spec and arrays
    again = PreprocessSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.to_dict()["resize"] == name and again.version == 2
    want = np.asarray(Image.open(eight).convert("L").resize((24, 20), PIL_FILTERS[name]),
                      np.float32) / np.float32(255)
    np.testing.assert_array_equal(spec.load(eight)[0], again.load(eight)[0])
    np.testing.assert_allclose(spec.load(eight)[0], want, atol=1e-6)
    want16 = np.asarray(Image.fromarray(deep.astype(np.float32) * np.float32(255 / 65535))
                        .resize((24, 20), PIL_FILTERS[name]), np.float32) / np.float32(255)
    np.testing.assert_allclose(spec.load(sixteen)[0], want16, atol=1e-6)
    assert set(RESIZE_FILTERS) == set(PIL_FILTERS)


def test_unknown_resize_and_old_spec_with_resize_are_errors():
    with pytest.raises(ConfigError, match="resize.*'box'"):
        PreprocessSpec(resize="box")
    v1 = {k: v for k, v in PreprocessSpec(input_size=16).to_dict().items() if k != "resize"}
    old = PreprocessSpec.from_dict({**v1, "version": 1})
    assert old.resize == "bilinear" and "resize" not in old.to_dict()  # byte-identical again
    with pytest.raises(ConfigError, match="version 1"):
        PreprocessSpec.from_dict({**v1, "version": 1, "resize": "lanczos"})


# ------------------------------------------------------------------ a greyscale ONNX, end to end
def test_gray_onnx_compresses_with_declared_preprocessing(gray_bundle, gray_onnx, mri_phantoms,
                                                          gray_yaml, tmp_path, cli):
    m = json.loads((gray_bundle / "manifest.json").read_text())
    pre = m["preprocess"]
    assert (pre["input_size"], pre["color"], pre["layout"], pre["resize"], pre["mean"],
            pre["std"], pre["version"]) == ([48, 48], "gray", "NCHW", "lanczos", [0.5], [0.5], 2)
    src = f"--preprocess {gray_yaml.name}"
    assert m["preprocess_sources"] == {"input_size": "model", "color": "model",
                                       "layout": "model", "scale": src, "mean": src,
                                       "std": src, "resize": src}
    assert [a["name"] for a in m["artifacts"]] == ["onnxruntime-fp32", "openvino-fp32"]
    for a in m["artifacts"]:
        assert a["verification"]["max_abs_logit_diff"] <= 1e-4, a["name"]
        assert a["input"]["shape"] == [1, 1, 48, 48]
    # int8 as well, the flags overriding nothing the file says
    out = tmp_path / "int8"
    cli("compress", gray_onnx, "--data", mri_phantoms, "--out", out, "--preprocess", gray_yaml,
        "--recipe", "int8", "--backend", "onnxruntime", "--allow-accuracy-drop", *SMALL)
    assert json.loads((out / "manifest.json").read_text())["artifacts"][0]["name"] == \
        "onnxruntime-int8"


def test_gray_source_accuracy_equals_own_preprocessing(gray_onnx, gray_yaml, mri_phantoms, cli):
    import onnxruntime as ort

    loaded = load_model(gray_onnx, preprocess=gray_yaml)
    data = scan_folder(mri_phantoms)
    x, y = load_arrays(data, loaded.spec)
    own = np.stack([own_gray(s.path, 48, Image.Resampling.LANCZOS) for s in data.samples])
    np.testing.assert_array_equal(x, own)
    sess = ort.InferenceSession(str(gray_onnx), providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(None, {"x": own[i:i + 1]})[0] for i in range(len(own))])
    own_acc = float((logits.argmax(1) == y).mean())
    res = cli("evaluate", gray_onnx, "--data", mri_phantoms, "--preprocess", gray_yaml, "--json")
    assert json.loads(res.stdout)["metrics"]["accuracy"]["value"] == own_acc
    # the flags alone say the same as the file
    res = cli("evaluate", gray_onnx, "--data", mri_phantoms, "--mean", "0.5", "--std", "0.5",
              "--resize", "lanczos", "--json")
    assert json.loads(res.stdout)["metrics"]["accuracy"]["value"] == own_acc


def test_runner_reads_the_resize_filter_and_a_version_1_manifest(gray_bundle, mri_phantoms,
                                                                 tmp_path):
    import shutil

    import onnxruntime as ort

    image = sorted(mri_phantoms.rglob("*.jpg"))[0]
    art = "onnxruntime-fp32"
    sess = ort.InferenceSession(str(gray_bundle / Runner(gray_bundle, art).entry.files[0].path),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for resize, flt in (("lanczos", Image.Resampling.LANCZOS),
                        ("bilinear", Image.Resampling.BILINEAR)):
        if resize == "lanczos":
            bundle = gray_bundle
        else:  # the same bundle as an edgekit before spec version 2 wrote it: bilinear
            bundle = tmp_path / "old"
            shutil.copytree(gray_bundle, bundle)
            path = bundle / "manifest.json"
            m = json.loads(path.read_text())
            del m["preprocess"]["resize"], m["preprocess_sources"]
            m["preprocess"]["version"] = 1
            path.write_text(json.dumps(m, indent=2))
            assert Manifest.from_json(m).to_json() == m  # read and written again: unchanged
        runner = Runner(bundle, art)
        assert runner.spec.resize == resize
        want = sess.run(None, {name: own_gray(image, 48, flt)[None]})[0][0]
        np.testing.assert_allclose(runner.logits(runner.spec.load(image)[None])[0], want,
                                   atol=1e-6)


# ---------------------------------------------------------------- NHWC + softmax, read from ONNX
def test_nhwc_softmax_onnx_is_read_from_the_model(nhwc_onnx, mri_phantoms, tmp_path, cli):
    out = tmp_path / "nhwc"
    cli("compress", nhwc_onnx, "--data", mri_phantoms, "--out", out, "--recipe", "fp32",
        "--backend", "onnxruntime", "--resize", "bicubic", *SMALL)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["preprocess"]["layout"], m["preprocess"]["input_size"], m["preprocess"]["color"],
            m["preprocess"]["resize"]) == ("NHWC", [32, 32], "rgb", "bicubic")
    assert m["head"]["scores_are"] == "probs"
    assert m["preprocess_sources"]["layout"] == "model"
    assert m["preprocess_sources"]["resize"] == "--resize"
    assert m["preprocess_sources"]["mean"] == "default"
    assert m["artifacts"][0]["input"]["shape"] == [1, 32, 32, 3]
    assert m["artifacts"][0]["verification"]["max_abs_logit_diff"] <= 1e-4


# ------------------------------------------------------------------------------ contradictions
@pytest.mark.parametrize(("model", "args", "named"), [
    ("gray", ["--color", "rgb"], ("rgb", "gray")),
    ("gray", ["--input-size", "32"], ("32×32", "48×48")),
    ("nhwc", ["--layout", "NCHW"], ("NCHW", "NHWC")),
    ("gray", ["--mean", "0.5,0.5,0.5"], ("3 values", "1 channel")),
])
def test_contradictions_are_usage_errors_naming_both_values(model, args, named, gray_onnx,
                                                            nhwc_onnx, mri_phantoms, tmp_path,
                                                            cli):
    path = gray_onnx if model == "gray" else nhwc_onnx
    res = cli("compress", path, "--data", mri_phantoms, "--out", tmp_path / "x", "--recipe",
              "fp32", "--backend", "onnxruntime", *args, code=2)
    assert "Traceback" not in res.output
    for value in named:
        assert value in res.stderr, res.stderr


def test_preprocess_file_is_strict(gray_onnx, mri_phantoms, tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("color: gray\nnormalise: true\n")
    res = cli("evaluate", gray_onnx, "--data", mri_phantoms, "--preprocess", bad, code=2)
    assert "normalise" in res.stderr and str(bad) in res.stderr
    bad.write_text("resize: box\n")
    res = cli("evaluate", gray_onnx, "--data", mri_phantoms, "--preprocess", bad, code=2)
    assert "resize" in res.stderr and "box" in res.stderr
    with pytest.raises(ConfigError, match="not found"):
        load_model(gray_onnx, preprocess=tmp_path / "missing.yaml")


def test_gray_pt2_and_torchscript_take_the_declared_preprocessing(gray_yaml, tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 4),
                              torch.nn.Softmax(dim=1)).eval()
    pt2, ts = tmp_path / "gray.pt2", tmp_path / "gray.ts"
    torch.export.save(torch.export.export(net, (torch.rand(1, 1, 40, 40),)), str(pt2))
    torch.jit.trace(net, torch.rand(1, 1, 40, 40)).save(str(ts))
    classes = ("a", "b", "c", "d")
    exported = load_model(pt2, preprocess=gray_yaml).with_classes(classes)
    assert (exported.spec.color, exported.spec.input_size, exported.spec.resize) == \
        ("gray", (40, 40), "lanczos")
    assert exported.spec_sources["color"] == "model"
    assert exported.head["scores_are"] == "probs"  # the program ends in a softmax
    with pytest.raises(ConfigError, match="pass --input-size"):
        load_model(ts, preprocess=gray_yaml)
    script = load_model(ts, preprocess=gray_yaml, input_size=40).with_classes(classes)
    assert (script.spec.color, script.spec.mean, script.spec_sources["input_size"]) == \
        ("gray", (0.5,), "--input-size")
    with pytest.raises(ConfigError, match=r"--color says color rgb.*model fixes color gray"):
        load_model(pt2, preprocess=declared(gray_yaml, color="rgb"))


def test_zoo_models_take_the_declared_input_size_and_refuse_other_values():
    # the CLI hands --input-size over inside the declared preprocessing
    zoo = load_model("dsconv_cbam_gap", preprocess=declared(input_size=40))
    assert zoo.spec.input_size == (40, 40) and zoo.spec_sources["input_size"] == "--input-size"
    with pytest.raises(ConfigError, match="--resize says resize lanczos.*architecture fixes"):
        load_model("dsconv_cbam_gap", preprocess=declared(resize="lanczos"))
