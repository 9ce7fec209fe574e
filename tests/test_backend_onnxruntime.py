"""ONNX Runtime backend: what only this runtime does, on real exports and real ORT sessions.

What every backend must do (fp32 parity with torch, int8 streaming, ONNX sources, errors,
threads, torch-free sessions) is in ``test_backend_contract.py``; the exports are shared with it
through ``backend_support.Store``. Zoo models carry fresh (seeded) weights, so INT8 quality is
judged against the fp32 artifact on phantom images: the logits must point the same way
(cosine > 0.9), be close relative to their size, and still depend on the input.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="pip install 'edgekit[onnxruntime]'")
onnx = pytest.importorskip("onnx", reason="pip install 'edgekit[torch]'")
torch = pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")
pytest.importorskip("onnxscript", reason="pip install 'edgekit[torch]'")

from backend_support import (  # noqa: E402
    FAST,
    SIZE,
    LazyImages,
    Store,
    assert_int8_sound,
    calibration_for,
    export,
    resized,
    store,
)

from edgekit.backends import QuantOptions, get_backend  # noqa: E402
from edgekit.backends.onnxruntime import (  # noqa: E402
    BACKEND,
    StreamingCalibrationReader,
    _chunk_stride,
)
from edgekit.errors import ConfigError  # noqa: E402
from edgekit.zoo import list_models  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NAME = "onnxruntime"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, phantom_files) -> Store:
    return store(tmp_path_factory, phantom_files)


def test_backend_facts() -> None:
    backend = get_backend(NAME)
    assert backend is BACKEND
    assert (backend.name, backend.extra, backend.suffix) == ("onnxruntime", "onnxruntime", ".onnx")
    assert backend.precisions == ("fp32", "int8")
    assert backend.sources == ("torch", "torchscript", "onnx", "keras")
    assert (backend.label, backend.title, backend.colour) == ("ort", "ONNX Runtime", "#ff7f0e")
    assert backend.packages == (("onnxruntime", "onnxruntime"),)
    assert backend.module == "onnxruntime"
    assert backend.converter_packages == ("onnx", "onnxruntime")
    assert not backend.slow_export and not backend.int8_as_fp16_on_arm


# --- every zoo model ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_onnx_files_of_every_zoo_model(exports: Store, name: str, tmp_path: Path) -> None:
    fp32 = exports.export(NAME, name, "fp32")
    assert fp32.input_name == "input"
    proto = onnx.load(str(fp32.path))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert not any(n.metadata_props for n in proto.graph.node), "exporter metadata left in"

    int8 = exports.export(NAME, name, "int8")
    assert int8.quantization["format"] == "QDQ"
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
        assert "QLinearConv" in optimized and "Conv" not in optimized
    batch = exports.batch(name)
    assert_int8_sound(BACKEND.open(fp32.path).run(batch),
                      BACKEND.open(int8.path, threads=1).run(batch))


# --- ONNX files as the source ------------------------------------------------------------------


@pytest.mark.parametrize("dynamic_batch", [True, False], ids=["dynamic-batch", "static"])
def test_onnx_source_keeps_its_input_name_and_gets_a_static_batch(
        exports: Store, dynamic_batch: bool, tmp_path: Path) -> None:
    source = exports.onnx_source("dsconv_cbam", dynamic_batch=dynamic_batch)
    fp32 = export(BACKEND, source, "fp32", tmp_path, "m-fp32")
    proto = onnx.load(str(fp32.path))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, SIZE, SIZE]  # a dynamic batch is fixed to 1
    assert fp32.input_name == "pixels" and fp32.input_shape == [1, 3, SIZE, SIZE]


def test_onnx_source_with_wrong_input_size_is_config_error(exports: Store,
                                                           tmp_path: Path) -> None:
    small = resized(exports.onnx_source("dsconv_cbam", dynamic_batch=False), 32)
    with pytest.raises(ConfigError, match=r"\[1, 3, 64, 64\].*\[1, 3, 32, 32\]"):
        export(BACKEND, small, "fp32", tmp_path / "out", "m")


# --- options and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_methods(exports: Store, method: str, tmp_path: Path) -> None:
    model = exports.model(FAST)
    batch = exports.batch(FAST)
    fp32 = BACKEND.open(exports.export(NAME, FAST, "fp32").path).run(batch)
    # 20 images > CALIBRATION_CHUNK (16): ORT collects them in strides of 10
    files = exports.files["mri"][:20]
    int8 = export(BACKEND, model, "int8", tmp_path, method, LazyImages(files, model.spec),
                  method=method)
    assert int8.quantization["calibration_method"] == method
    assert_int8_sound(fp32, BACKEND.open(int8.path).run(batch))
    if method == "entropy":
        assert any("single candidate" in note for note in int8.notes)


def test_unknown_calibration_method_is_config_error(exports: Store, tmp_path: Path) -> None:
    calibration = [np.zeros((1, 3, SIZE, SIZE), np.float32)]
    with pytest.raises(ConfigError, match="'kl'.*'onnxruntime'.*minmax, percentile, entropy"):
        export(BACKEND, exports.model(FAST), "int8", tmp_path, "m", calibration, method="kl")
    assert not list(tmp_path.iterdir())


def test_int8_io_is_config_error(exports: Store, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="int8_io"):
        export(BACKEND, exports.model(FAST), "int8", tmp_path, "m",
               [np.zeros((1, 3, SIZE, SIZE), np.float32)], int8_io=True)


def test_excluded_op_types_stay_float(exports: Store, tmp_path: Path) -> None:
    # the attention-gate option: CBAM's Sigmoid gates and the Mul that applies them in float
    model = exports.model(FAST)
    backend = dataclasses.replace(BACKEND, exclude_op_types=("Sigmoid", "Mul"))
    artifact = export(backend, model, "int8", tmp_path, "m",
                      calibration_for(FAST, exports.files, model.spec))
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


def test_a_module_is_exported_to_onnx_once_until_its_weights_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The INT8 rescue re-exports the same model several times: the torch → ONNX step runs once
    per module and weights (a change in place, e.g. pruning or BN re-estimation, exports
    again)."""
    from edgekit.sources import load_model

    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = load_model(FAST, input_size=SIZE)
    x = np.random.default_rng(0).random((2, *model.spec.input_shape(1)[1:]), np.float32)
    first = export(NAME, model, "fp32", tmp_path / "a", "m")
    again = export(NAME, model, "fp32", tmp_path / "b", "m")
    assert len(calls) == 1 and first.path.read_bytes() == again.path.read_bytes()
    with torch.no_grad():
        next(model.module.parameters()).mul_(2.0)
    changed = export(NAME, model, "fp32", tmp_path / "c", "m")
    assert len(calls) == 2
    got = get_backend(NAME).open(changed.path).run(x)
    assert np.abs(got - model.predict(x)).max() <= 1e-4  # the new weights, not the cached ones


# --- sessions ----------------------------------------------------------------------------------


def test_thread_setting_reaches_the_session_options(exports: Store) -> None:
    path = exports.export(NAME, FAST, "fp32").path
    for threads in (1, 2):
        options = BACKEND.open(path, threads=threads)._session.get_session_options()
        assert options.intra_op_num_threads == threads
        assert options.inter_op_num_threads == 1
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    with pytest.raises(ConfigError, match="threads"):
        BACKEND.open(path, threads=0)


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
    assert Source.iterations == 2  # a range after the stream's position continues it
    # ORT's strided calibration asks for consecutive chunks: the stream goes on, each item
    # is read once; a range before the stream's position restarts it
    reader.rewind()
    chunks = []
    for start in (0, 2, 4):
        reader.set_range(start, start + 2)
        chunks.append([int(d["input"].max()) for d in reader])
    assert chunks == [[0, 1], [2, 3], [4]] and Source.iterations == 3
    reader.set_range(1, 3)
    assert [int(d["input"].max()) for d in reader] == [1, 2] and Source.iterations == 4
    assert [_chunk_stride(n, 16) for n in (8, 16, 20, 32, 97)] == [8, 16, 10, 16, 1]


@pytest.mark.parametrize(("count", "method"), [(32, "minmax"), (33, "minmax"),
                                               (32, "percentile")])
def test_ranges_cover_every_calibration_image(exports: Store, count: int, method: str,
                                              tmp_path: Path) -> None:
    """Every calibration image shapes the ranges, in every chunk (ORT's own chunked MinMax
    drops all full chunks: only the last ``count % 16`` images counted, none at 32; the
    streaming reader must hand ORT each chunk once, from the first)."""
    model = exports.model(FAST)
    rng = np.random.default_rng(0)
    shape = model.spec.input_shape(1)
    calibration = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(count)]
    calibration[0] *= 50.0  # the widest input range is in the FIRST chunk only
    art = export(BACKEND, model, "int8", tmp_path, "m", calibration, method=method)
    graph = onnx.load(str(art.path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    (q,) = [n for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name]
    scale = float(inits[q.input[1]])
    # percentile 99.999 of 32 images: the top ~4 values, all from the wide image
    assert scale * 255 >= (0.9 if method == "minmax" else 0.5) * 100.0, \
        f"input range {scale * 255:.2f} misses the first chunk"


def test_mean_activation_ranges_average_each_images_extremes(exports: Store,
                                                             tmp_path: Path) -> None:
    """``activation_ranges="mean"``: a range is the mean over images of each image's min/max
    (NNCF's default), over every image (one pass, no strided EMA): one wide image widens it by
    its share, not to its own extremes."""
    model = exports.model(FAST)
    rng = np.random.default_rng(0)
    shape = model.spec.input_shape(1)
    calibration = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(33)]
    calibration[0] *= 50.0
    art = export(BACKEND, model, "int8", tmp_path, "m", calibration, activation_ranges="mean")
    graph = onnx.load(str(art.path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    (q,) = [n for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name]
    lo = min(float(np.mean([c.min() for c in calibration])), 0.0)
    hi = max(float(np.mean([c.max() for c in calibration])), 0.0)
    assert float(inits[q.input[1]]) * 255 == pytest.approx(hi - lo, rel=1e-3)
    assert art.quantization["activation_ranges"] == "mean"


def test_unknown_activation_ranges_is_config_error() -> None:
    assert QuantOptions().ranges(BACKEND.activation_ranges) == "global"
    assert QuantOptions(activation_ranges="mean").ranges("global") == "mean"
    assert QuantOptions(method="percentile").ranges("global") is None  # not minmax: no ranges
    with pytest.raises(ConfigError, match="activation_ranges must be one of global, mean"):
        QuantOptions(activation_ranges="median")
    with pytest.raises(ConfigError, match="applies to method minmax"):
        QuantOptions(method="entropy", activation_ranges="global")
