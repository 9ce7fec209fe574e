"""ONNX Runtime backend: real exports (torch and ONNX sources), real ORT sessions, 64 px inputs.

Zoo models carry fresh (seeded) weights, so INT8 quality is judged against the fp32 artifact on
phantom images: the logits must point the same way (cosine > 0.9), be close relative to their
size, and still depend on the input.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="pip install 'edgekit[onnxruntime]'")
onnx = pytest.importorskip("onnx", reason="pip install 'edgekit[torch]'")
torch = pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")
pytest.importorskip("onnxscript", reason="pip install 'edgekit[torch]'")

from backend_support import (  # noqa: E402
    N_CALIB,
    N_EVAL,
    REPO,
    SIZE,
    LazyImages,
    assert_int8_sound,
    calibration_for,
    eager,
    eval_batch,
    onnx_source,
    zoo_model,
)

from edgekit.backends import ExportRequest, QuantOptions, get_backend  # noqa: E402
from edgekit.backends.onnxruntime import (  # noqa: E402
    BACKEND,
    StreamingCalibrationReader,
    _chunk_stride,
)
from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.errors import ConfigError, DataError, ExportError  # noqa: E402
from edgekit.sources import OnnxSource, Source, TorchSource  # noqa: E402
from edgekit.zoo import list_models, model_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def export(model: Source, precision: str, out: Path, stem: str, calibration=None,
           backend=BACKEND, **options):
    return backend.export(ExportRequest(model, precision, out, stem, calibration,
                                        QuantOptions(**options)))


# --- every zoo model ---------------------------------------------------------------------------


def test_backend_registered_with_interface() -> None:
    backend = get_backend("onnxruntime")
    assert backend is BACKEND
    assert (backend.name, backend.extra, backend.suffix) == ("onnxruntime", "onnxruntime", ".onnx")
    assert backend.precisions == ("fp32", "int8")
    assert backend.sources == ("torch", "torchscript", "onnx", "keras")
    assert backend.available() is None


@pytest.mark.parametrize("name", list_models())
def test_fp32_and_int8_export_every_zoo_model(name: str, tmp_path: Path, phantom_files) -> None:
    model = zoo_model(name)
    batch = eval_batch(name, phantom_files, model.spec)
    expected = eager(model, batch)

    fp32 = export(model, "fp32", tmp_path, f"{name}-fp32")
    assert fp32.path == tmp_path / f"{name}-fp32.onnx" and fp32.files == [fp32.path]
    assert (fp32.backend, fp32.precision, fp32.input_name) == ("onnxruntime", "fp32", "input")
    assert fp32.input_shape == [1, *model.spec.input_shape(1)[1:]] and fp32.layout == "NCHW"
    assert (fp32.input_dtype, fp32.output_dtype) == ("float32", "float32")
    proto = onnx.load(str(fp32.path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert not any(n.metadata_props for n in proto.graph.node), "exporter metadata left in"
    session = BACKEND.open(fp32.path)
    assert session.input_shape == [1, 3, SIZE, SIZE]
    actual = session.run(batch)
    assert actual.shape == expected.shape == (N_EVAL, model_config(name).num_classes)
    assert np.abs(actual - expected).max() <= 1e-4

    calibration = calibration_for(name, phantom_files, model.spec)
    int8 = export(model, "int8", tmp_path, f"{name}-int8", calibration)
    assert calibration.loaded == N_CALIB * calibration.passes  # streamed, never re-read per item
    assert int8.quantization["format"] == "QDQ"
    assert int8.quantization["calibration_images"] == N_CALIB
    assert int8.path.stat().st_size < fp32.path.stat().st_size
    assert int8.quantization["activation_type"] == "QUInt8"
    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    if platform.machine().lower() in ("x86_64", "amd64"):
        # what ORT actually runs: every convolution fused into an integer QLinearConv (with
        # int8 activations 15 of mobilenetv2's 52 convolutions stayed float on x86)
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(int8.path), options, providers=["CPUExecutionProvider"])
        optimized = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        (tmp_path / "optimized.onnx").unlink()
        assert "QLinearConv" in optimized and "Conv" not in optimized
    assert_int8_sound(actual, BACKEND.open(int8.path, threads=1).run(batch))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}-fp32.onnx",
                                                          f"{name}-int8.onnx"]


# --- ONNX files as the source ------------------------------------------------------------------


@pytest.mark.parametrize("dynamic_batch", [True, False], ids=["dynamic-batch", "static"])
def test_onnx_source_fp32_and_int8(dynamic_batch: bool, tmp_path: Path, phantom_files) -> None:
    name = "dsconv_cbam_gap"
    model = zoo_model(name)
    source = onnx_source(model, tmp_path / "user.onnx", dynamic_batch=dynamic_batch)
    batch = eval_batch(name, phantom_files, model.spec)
    out = tmp_path / "out"

    fp32 = export(source, "fp32", out, "m-fp32")
    proto = onnx.load(str(fp32.path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, SIZE, SIZE]  # a dynamic batch is fixed to 1
    assert fp32.input_name == "pixels" and fp32.input_shape == [1, 3, SIZE, SIZE]
    assert any("fixed" in note for note in fp32.notes) == dynamic_batch
    logits = BACKEND.open(fp32.path).run(batch)
    assert np.abs(logits - eager(model, batch)).max() <= 1e-4

    int8 = export(source, "int8", out, "m-int8", calibration_for(name, phantom_files, model.spec))
    assert int8.path.stat().st_size < fp32.path.stat().st_size
    assert_int8_sound(logits, BACKEND.open(int8.path).run(batch))
    assert sorted(p.name for p in out.iterdir()) == ["m-fp32.onnx", "m-int8.onnx"]


def test_onnx_source_with_wrong_input_size_is_config_error(tmp_path: Path) -> None:
    model = zoo_model("dsconv_cbam_gap")
    source = onnx_source(model, tmp_path / "user.onnx", dynamic_batch=False)
    source = dataclasses.replace(source, spec=model.spec.with_size(32))
    with pytest.raises(ConfigError, match=r"\[1, 3, 64, 64\].*\[1, 3, 32, 32\]"):
        export(source, "fp32", tmp_path / "out", "m")


def _graph_with_unknown_op(path: Path, domain: str) -> Source:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("FooBarOp", ["pooled"], ["odd"], domain=domain),
             helper.make_node("Flatten", ["odd"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1] * 12)
    graph = helper.make_graph(
        nodes, "unknown-op", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                            ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [weight])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), str(path))
    spec = PreprocessSpec(input_size=SIZE)
    return OnnxSource(path=path, name="handmade", task="multiclass",
                      class_names=("a", "b", "c", "d"), spec=spec, source=str(path))


@pytest.mark.parametrize("domain", ["", "com.example"], ids=["onnx-domain", "custom-domain"])
def test_unknown_operator_in_onnx_source_names_op_and_backend(domain: str,
                                                               tmp_path: Path) -> None:
    source = _graph_with_unknown_op(tmp_path / "odd.onnx", domain)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="onnxruntime") as info:
        export(source, "fp32", out, "odd")
    assert "FooBarOp" in str(info.value)
    assert not list(out.iterdir())


def test_operator_the_exporter_rejects_names_op_and_backend(tmp_path: Path) -> None:
    class Bessel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i1e(x).mean(dim=(2, 3))

    spec = PreprocessSpec(input_size=16)
    model = TorchSource(module=Bessel().eval(), name="bessel", task="multiclass",
                        class_names=("a", "b", "c"), spec=spec, source="test")
    with pytest.raises(ExportError, match="onnxruntime") as info:
        export(model, "fp32", tmp_path, "bessel")
    assert "i1e" in str(info.value)
    assert not list(tmp_path.iterdir())


# --- options and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_methods(method: str, tmp_path: Path, phantom_files) -> None:
    name = "dsconv_cbam_gap"
    model = zoo_model(name)
    batch = eval_batch(name, phantom_files, model.spec)
    fp32 = BACKEND.open(export(model, "fp32", tmp_path, "fp32").path).run(batch)
    # 20 images > CALIBRATION_CHUNK (16): ORT collects them in strides of 10
    files = phantom_files["mri"][:20]
    int8 = export(model, "int8", tmp_path, method, LazyImages(files, model.spec), method=method)
    assert int8.quantization["calibration_method"] == method
    assert_int8_sound(fp32, BACKEND.open(int8.path).run(batch))
    if method == "entropy":
        assert any("single candidate" in note for note in int8.notes)


def test_unknown_calibration_method_is_config_error(tmp_path: Path) -> None:
    model = zoo_model("dsconv_cbam_gap")
    calibration = [np.zeros((1, 3, SIZE, SIZE), np.float32)]
    with pytest.raises(ConfigError, match="'kl'.*'onnxruntime'.*minmax, percentile, entropy"):
        export(model, "int8", tmp_path, "m", calibration, method="kl")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("calibration", [None, []], ids=["none", "empty"])
def test_int8_without_calibration_is_config_error(calibration, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        export(zoo_model("dsconv_cbam_gap"), "int8", tmp_path, "m", calibration)


def test_unsupported_precision_and_int8_io_are_config_errors(tmp_path: Path) -> None:
    model = zoo_model("dsconv_cbam_gap")
    with pytest.raises(ConfigError, match="'fp16'.*fp32, int8"):
        export(model, "fp16", tmp_path, "m")
    with pytest.raises(ConfigError, match="int8_io"):
        export(model, "int8", tmp_path, "m", [np.zeros((1, 3, SIZE, SIZE), np.float32)],
               int8_io=True)


def test_excluded_op_types_stay_float(tmp_path: Path, phantom_files) -> None:
    # the attention-gate option: CBAM's Sigmoid gates and the Mul that applies them in float
    model = zoo_model("dsconv_cbam_gap")
    backend = dataclasses.replace(BACKEND, exclude_op_types=("Sigmoid", "Mul"))
    artifact = export(model, "int8", tmp_path, "m", calibration_for(
        "dsconv_cbam_gap", phantom_files, model.spec), backend=backend)
    graph = onnx.load(str(artifact.path)).graph
    kept = sorted(n.name for n in graph.node if n.op_type in ("Sigmoid", "Mul"))
    assert kept and artifact.quantization["excluded_nodes"] == kept
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    for node in graph.node:  # the gates' outputs stay float all the way into the Mul
        if node.op_type == "Sigmoid":
            assert consumers[node.output[0]] == ["Mul"], node.name
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the convolutions still are


def test_same_inputs_give_byte_identical_files(tmp_path: Path, phantom_files) -> None:
    model = zoo_model("dsconv_cbam")
    for precision in ("fp32", "int8"):
        paths = []
        for run in ("a", "b"):
            calibration = calibration_for("dsconv_cbam", phantom_files, model.spec)
            paths.append(export(model, precision, tmp_path / run, precision,
                                calibration if precision == "int8" else None).path)
        assert paths[0].read_bytes() == paths[1].read_bytes(), precision


# --- sessions ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = zoo_model("dsconv_cbam_gap")
    return export(model, "fp32", tmp_path_factory.mktemp("ort-small"), "small").path


def test_thread_setting_is_applied(small_artifact: Path) -> None:
    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    reference = BACKEND.open(small_artifact).run(x)
    for threads in (1, 2):
        session = BACKEND.open(small_artifact, threads=threads)
        options = session._session.get_session_options()
        assert options.intra_op_num_threads == threads
        assert options.inter_op_num_threads == 1
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        np.testing.assert_allclose(session.run(x), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="threads"):
        BACKEND.open(small_artifact, threads=0)


def test_wrong_input_shape_is_data_error(small_artifact: Path) -> None:
    with pytest.raises(DataError, match="does not fit"):
        BACKEND.open(small_artifact).run(np.zeros((1, 3, 32, 32), np.float32))


def test_open_and_run_work_without_torch(small_artifact: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        from edgekit.backends import get_backend
        session = get_backend("onnxruntime").open({str(small_artifact)!r}, threads=1)
        logits = session.run(np.zeros((2, 3, {SIZE}, {SIZE}), np.float32))
        heavy = sorted(m for m in ("onnx", "onnxscript", "torch") if sys.modules.get(m))
        print(json.dumps({{"shape": list(logits.shape), "heavy": heavy}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"shape": [2, 4], "heavy": []}


def test_streaming_reader_rewinds_and_ranges() -> None:
    items = [np.full((1, 3, 2, 2), i, np.float32) for i in range(5)]

    class Source:
        iterations = 0

        def __iter__(self):
            Source.iterations += 1
            return iter(items)

        def __len__(self) -> int:
            return len(items)

    reader = StreamingCalibrationReader(Source(), "input")
    assert len(reader) == 5
    assert [int(d["input"].max()) for d in reader] == [0, 1, 2, 3, 4]
    assert reader.get_next() is None
    reader.rewind()
    assert int(reader.get_next()["input"].max()) == 0
    reader.set_range(2, 4)
    assert [int(d["input"].max()) for d in reader] == [2, 3]
    assert Source.iterations == 3
    assert [_chunk_stride(n, 16) for n in (8, 16, 20, 32, 97)] == [8, 16, 10, 16, 1]


@pytest.mark.parametrize("count", [32, 33])
def test_minmax_ranges_cover_every_calibration_image(count: int, tmp_path: Path) -> None:
    """Every calibration image shapes the ranges, in every chunk (ORT's own chunked MinMax
    drops all full chunks: only the last ``count % 16`` images counted, none at 32)."""
    model = zoo_model("dsconv_cbam_gap")
    rng = np.random.default_rng(0)
    shape = model.spec.input_shape(1)
    calibration = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(count)]
    calibration[0] *= 50.0  # the widest input range is in the FIRST chunk only
    art = export(model, "int8", tmp_path, "m", calibration)
    graph = onnx.load(str(art.path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    (q,) = [n for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name]
    scale = float(inits[q.input[1]])
    assert scale * 255 >= 0.9 * 100.0, f"input range {scale * 255:.2f} misses the first chunk"
