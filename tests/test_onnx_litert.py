"""ONNX sources reach TFLite (issue 15 item 2), and NHWC sources gain no per-convolution
transposes on any backend.

Three small third-party-style ONNX classifiers, built here: an RGB NCHW CNN (torch.onnx dynamo,
opset 18: BatchNorm, depthwise conv, Hardswish, global average pool, Linear), a greyscale NCHW
CNN (the legacy TorchScript exporter, opset 13: Shape/Gather/Reshape chains, Flatten, Gemm) and
a Keras CNN converted with tf2onnx (NHWC input transposed once to NCHW, BatchNorm, depthwise conv,
GlobalAveragePool, MatMul head, Softmax). Real exports, real runtimes, phantom images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
onnx = pytest.importorskip("onnx")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from backend_support import assert_int8_sound, export  # noqa: E402

from edgekit.backends import get_backend  # noqa: E402
from edgekit.data.folder import scan_folder  # noqa: E402
from edgekit.sources import load_model  # noqa: E402
from edgekit.sources.declared import declared  # noqa: E402

SMALL = ["--calibration-images", 8, "--verification-images", 16]


class _Net(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.Hardswish(),
            nn.Conv2d(8, 16, 1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, 2, 1), nn.LeakyReLU(0.1))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.head(x)


def _torch_net(channels: int) -> torch.nn.Module:
    torch.manual_seed(channels)
    net = _Net(channels).eval()
    for bn in net.modules():  # non-trivial running statistics, so BatchNorm matters
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-sources")
    rgb, grey = root / "rgb.onnx", root / "grey.onnx"
    torch.onnx.export(_torch_net(3), (torch.zeros(1, 3, 64, 64),), str(rgb), dynamo=True,
                      opset_version=18, external_data=False, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    torch.onnx.export(_torch_net(1), (torch.zeros(1, 1, 48, 48),), str(grey), dynamo=False,
                      opset_version=13, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    ts = root / "grey.ts"  # TorchScript: reaches litert through ONNX (TorchSource.torch_module)
    torch.jit.save(torch.jit.trace(_torch_net(1), (torch.zeros(1, 1, 48, 48),)), str(ts))
    return {"rgb": rgb, "grey": grey, "torchscript": ts}


@pytest.fixture(scope="module")
def nhwc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keras CNN with a softmax head, converted to ONNX with tf2onnx (NHWC input)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    from keras_models import keras, layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(16, 1, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(4, activation="softmax", bias_initializer="random_normal")(x)
    model = keras.Model(inp, out)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.moving_mean.assign(keras.random.uniform(layer.moving_mean.shape, -0.2, 0.2))
            layer.moving_variance.assign(keras.random.uniform(layer.moving_variance.shape, 0.5, 2))
    root = tmp_path_factory.mktemp("nhwc")
    model.save(root / "nhwc.keras")
    path = load_model(root / "nhwc.keras").keras.to_onnx(root / "nhwc.onnx")  # tf2onnx
    nodes = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert nodes[0] == "Transpose" and nodes.count("Transpose") == 1, nodes  # what tf2onnx wrote
    assert nodes[-1] == "Softmax" and "MatMul" in nodes
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every socket connection and name lookup fails: a converter that fetched anything (as
    onnx2tf fetches sample images) would fail the test."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access during an edgekit test")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)


def _images(source, root: Path, n: int, skip: int = 0) -> np.ndarray:
    files = [s.path for s in scan_folder(root).samples][skip::9][:n]  # across the classes
    return np.stack([source.spec.load(f) for f in files]).astype(np.float32)


def _transposes(path: Path) -> tuple[int, bool]:
    """(TRANSPOSE ops in a .tflite, whether each one reads the model input)."""
    interp = Interpreter(model_path=str(path))
    first = interp.get_input_details()[0]["index"]
    ops = [d for d in interp._get_ops_details() if d["op_name"] == "TRANSPOSE"]
    return len(ops), all(first in list(d["inputs"]) for d in ops)


@pytest.mark.parametrize("name", ["rgb", "grey", "nhwc", "torchscript"])
def test_onnx_source_to_litert_fp32_parity_and_int8(name: str, models, nhwc, mri_phantoms,
                                                    tmp_path: Path, no_network) -> None:
    path = nhwc if name == "nhwc" else models[name]
    # TorchScript fixes neither its size nor (to edgekit) its channels: they are declared
    source = (load_model(path, preprocess=declared(input_size=48, color="gray"))
              if name == "torchscript" else load_model(path))
    expect = {"rgb": ("NCHW", "rgb"), "grey": ("NCHW", "gray"), "nhwc": ("NHWC", "rgb"),
              "torchscript": ("NCHW", "gray")}[name]
    assert (source.spec.layout, source.spec.color) == expect
    batch = _images(source, mri_phantoms, 6, skip=8)
    reference = source.predict(batch)

    fp32 = export("litert", source, "fp32", tmp_path, f"{name}-fp32")
    assert fp32.layout == source.spec.layout and fp32.input_shape == list(source.spec.input_shape(1))
    logits = get_backend("litert").open(fp32.path).run(batch)
    assert np.abs(logits - reference).max() <= 1e-4
    count, at_input = _transposes(fp32.path)
    # NHWC: none at all; NCHW: at most litert-torch's one NCHW→NHWC transpose of the input
    assert count == (0 if name != "rgb" else 1) and at_input, count
    if name in ("rgb", "grey"):
        assert any("fixed" in note for note in fp32.notes)  # the dynamic batch, fixed to 1
    if name == "torchscript":
        assert any("TorchScript archive exported to ONNX" in note for note in fp32.notes)

    int8 = export("litert", source, "int8", tmp_path, f"{name}-int8",
                  _images(source, mri_phantoms, 8)[:, None])
    assert int8.quantization["calibration_images"] == 8
    assert int8.path.stat().st_size < fp32.path.stat().st_size
    assert_int8_sound(logits, get_backend("litert").open(int8.path).run(batch))
    assert _transposes(int8.path)[0] == count
    if name in ("grey", "torchscript"):  # the INT8 rescue's ranking and keep_float work on
        # the PyTorch replay too (a crash here once turned a rescue into a traceback)
        from edgekit.backends import ExportRequest, QuantOptions

        calibration = _images(source, mri_phantoms, 8)[:, None]
        request = ExportRequest(source, "int8", tmp_path / "s", "m", calibration, QuantOptions())
        ranked = get_backend("litert").layer_sensitivity(request, int8.path, batch)
        assert ranked and ranked[0].added >= ranked[-1].added
        kept = export("litert", source, "int8", tmp_path / "k", "m", calibration,
                      keep_float=(ranked[0].name,))
        assert 0 < kept.quantization["quantized_ops"] < int8.quantization["quantized_ops"]
    if name == "nhwc":  # tf2onnx's Mul/Add after the depthwise conv (its BatchNorm) is folded
        ops = [d["op_name"] for d in Interpreter(model_path=str(int8.path))._get_ops_details()]
        assert "MUL" not in ops and "ADD" not in ops, ops


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_nhwc_source_keeps_one_input_transpose_on_onnx_backends(backend: str, nhwc,
                                                               mri_phantoms,
                                                               tmp_path: Path) -> None:
    """ONNX Runtime and OpenVINO artifacts of the tf2onnx NHWC model: the one Transpose of the
    input that tf2onnx wrote, none per convolution (fp32 and int8)."""
    source = load_model(nhwc)
    calibration = _images(source, mri_phantoms, 8)[:, None]
    for precision in ("fp32", "int8"):
        art = export(backend, source, precision, tmp_path / precision, "m",
                     calibration if precision == "int8" else None)
        if backend == "onnxruntime":
            graph = onnx.load(str(art.path)).graph
            ops = [n for n in graph.node if n.op_type == "Transpose"]
            first = graph.input[0].name
            reads_input = all(n.input[0] == first or n.input[0].startswith(first) for n in ops)
        else:
            import openvino as ov

            model = ov.Core().read_model(str(art.path))
            ops = [op for op in model.get_ops() if op.get_type_name() == "Transpose"]
            reads_input = all(op.input_value(0).get_node().get_type_name() in
                              ("Parameter", "FakeQuantize", "Convert") for op in ops)
        assert len(ops) == 1 and reads_input, (backend, precision, len(ops))


def test_compress_cli_onnx_source_on_litert(nhwc, mri_phantoms, tmp_path: Path, cli,
                                            no_network) -> None:
    out = tmp_path / "bundle"
    cli("compress", nhwc, "--data", mri_phantoms, "--out", out, "--recipe", "int8",
        "--backend", "litert", "--allow-accuracy-drop", *SMALL)
    manifest = json.loads((out / "manifest.json").read_text())
    (artifact,) = manifest["artifacts"]
    assert (artifact["backend"], artifact["precision"]) == ("litert", "int8")
    assert artifact["input"]["shape"] == [1, 64, 64, 3]
    assert manifest["source"]["kind"] == "onnx" and manifest["head"]["scores_are"] == "probs"
    assert (out / artifact["files"][0]["path"]).is_file()
    assert artifact["verification"]["decision"] in ("pass", "fail", "inconclusive")


@pytest.mark.parametrize("opset", [11, 18])
def test_onnx_to_torch_matches_onnxruntime_on_less_common_ops(opset: int) -> None:
    """Pad (asymmetric), a SAME_UPPER strided conv, BatchNormalization, Clip, AveragePool, Slice,
    Concat, ReduceMean, the Shape → Gather → Unsqueeze → Concat → Reshape flatten of exporters
    with a dynamic batch, Gemm with transB=0 and alpha, Softmax; axes as attributes (opset 11)
    or inputs (18): the PyTorch replay equals ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.sources.onnx_torch import onnx_to_torch

    rng = np.random.default_rng(opset)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    def axes(name: str, values: list[int], node: str, inputs: list[str], out: str, **kw):
        if opset >= 13 or (node == "ReduceMean" and opset >= 18):
            return helper.make_node(node, [*inputs, name], [out], **kw)
        return helper.make_node(node, inputs, [out], axes=values, **kw)

    inits = [const("w", rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)),
             const("scale", rng.uniform(0.5, 2, 6).astype(np.float32)),
             const("shift", rng.normal(0, 0.2, 6).astype(np.float32)),
             const("mean", rng.normal(0, 0.2, 6).astype(np.float32)),
             const("var", rng.uniform(0.5, 2, 6).astype(np.float32)),
             const("pads", np.array([0, 0, 0, 1, 0, 0, 2, 0], np.int64)),
             const("lo", np.float32(-0.5)), const("hi", np.float32(0.5)),
             const("st", np.array([1], np.int64)), const("en", np.array([5], np.int64)),
             const("ax", np.array([1], np.int64)), const("hw", np.array([2, 3], np.int64)),
             const("zero", np.array(0, np.int64)), const("minus1", np.array([-1], np.int64)),
             const("fw", rng.normal(0, 0.5, (8, 3)).astype(np.float32)),
             const("fb", rng.normal(0, 0.5, (3,)).astype(np.float32))]
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
        helper.make_node("Conv", ["p", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["bn"],
                         epsilon=1e-3),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Slice", ["a", "st", "en", "ax"], ["s"]),
        helper.make_node("Concat", ["s", "s"], ["cat"], axis=1),
        axes("hw", [2, 3], "ReduceMean", ["cat"], "m", keepdims=0),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Shape", ["g"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        axes("ax0", [0], "Unsqueeze", ["n"], "n1"),
        helper.make_node("Concat", ["n1", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["g", "flat_shape"], ["flat"]),
        helper.make_node("Add", ["m", "flat"], ["feat"]),
        helper.make_node("Gemm", ["feat", "fw", "fb"], ["z"], alpha=0.5),
        helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    inits.append(const("ax0", np.array([0], np.int64)))
    graph = helper.make_graph(
        nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 20, 21])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9 if opset >= 13 else 7
    onnx.checker.check_model(model)
    x = rng.random((1, 3, 20, 21), dtype=np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    module = onnx_to_torch(model, (1, 3, 20, 21))
    assert module.symbolic_dims == ["N"]
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5
    assert len(module._steps) == len(nodes) - 4  # Shape → Gather → Unsqueeze → Concat folded
