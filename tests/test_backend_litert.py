"""LiteRT backend: what only this runtime does (PT2E int8 faithful to its torch simulation, int8
I/O, fp16 weights, quiet conversions, the sources it refuses), with real litert-torch
conversions run by the real LiteRT interpreter, at 64 px.

What every backend must do (fp32 parity with torch, int8 streaming, byte-identical re-exports,
errors, threads, torch-free sessions) is in ``test_backend_contract.py``; the exports are shared
with it through ``backend_support.Store`` (one fp32 and one int8 conversion per zoo model).
litert-torch conversions take 4-15 s (fp32) and 9-30 s (int8) each on 2 cores, so the int8
matrix beyond ``dsconv_cbam_gap`` and the extra calibration settings are marked slow;
``-m "not slow"`` keeps every fp32 model, one int8 model, int8 I/O, fp16, the error cases and
the torch-free runtime check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from backend_support import (  # noqa: E402
    FAST,
    SIZE,
    Store,
    calibration_for,
    eager,
    export,
    hand_made,
    run_without_torch,
    store,
)

from edgekit.backends import get_backend  # noqa: E402
from edgekit.backends.litert import (  # noqa: E402
    BACKEND,
    _Calibration,
    _mean_minmax_observer,
    _set_io_types,
    pt2e_quantize,
    xnnpack_fit,
)
from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.errors import ConfigError, DataError, ExportError  # noqa: E402
from edgekit.zoo import list_models  # noqa: E402

NAME = "litert"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, phantom_files) -> Store:
    return store(tmp_path_factory, phantom_files)


def centred_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the input-dependent part of two logit batches (N, K).

    Each class's mean over the batch is removed first, so constant offsets (biases) cannot
    make two unrelated outputs look alike.
    """
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def mean_cosine(got: np.ndarray, want: np.ndarray) -> float:
    """Mean over images of the cosine between their logit vectors."""
    return float(((got * want).sum(1) / (np.linalg.norm(got, axis=1)
                                         * np.linalg.norm(want, axis=1))).mean())


# ----------------------------------------------------------------------------- plugin basics
def test_backend_facts() -> None:
    backend = get_backend(NAME)
    assert backend is BACKEND
    assert (backend.name, backend.extra, backend.suffix) == ("litert", "litert", ".tflite")
    assert backend.precisions == ("fp32", "fp16", "int8")
    assert backend.sources == ("torch", "torchscript", "onnx", "keras")
    assert (backend.label, backend.title, backend.colour) == ("litert", "LiteRT", "#2ca02c")
    assert backend.packages == (("ai-edge-litert", "ai_edge_litert"),
                                ("tflite-runtime", "tflite_runtime"))
    assert backend.module == "ai_edge_litert.interpreter"
    assert backend.converter_packages == ("litert-torch", "ai-edge-litert", "tensorflow")
    assert backend.slow_export and not backend.int8_as_fp16_on_arm
    assert backend.source_hint("onnx") == backend.source_hint("torchscript") == ""
    assert backend.source_hint("torch") == ""


# ----------------------------------------------------------------------------- every zoo model
@pytest.mark.parametrize("name", [n if n == FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models()])
def test_int8_smaller_and_faithful(exports: Store, name: str) -> None:
    loaded, held_out = exports.model(name), exports.batch(name)
    fp32 = exports.export(NAME, name, "fp32")
    int8 = exports.export(NAME, name, "int8")
    assert int8.quantization["method"] == "minmax"
    assert any("Cortex-A72" in n for n in int8.notes)
    assert int8.path.stat().st_size < 0.75 * fp32.path.stat().st_size

    got = BACKEND.open(int8.path).run(held_out)
    assert got.shape == (len(held_out), loaded.num_classes) and np.isfinite(got).all()
    # 1. The .tflite computes what PT2E's quantize/dequantize graph computes in torch: the
    #    conversion is faithful (independent of how quantization-friendly untrained weights are).
    calibration = calibration_for(name, exports.files, loaded.spec)
    sample = (torch.from_numpy(next(iter(calibration))),)
    module, _ = xnnpack_fit(loaded.module, torch)  # as the export hands it to litert-torch
    reference, _, _ = pt2e_quantize(module, sample, calibration)
    with torch.no_grad():
        simulated = np.concatenate([reference(torch.from_numpy(x[None])).numpy()
                                    for x in held_out])
    assert centred_correlation(got, simulated) >= 0.9
    # 2. And it still tracks the float model: per-image logit vectors point the same way.
    assert mean_cosine(got, eager(loaded, held_out)) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize(("method", "per_channel"), [("percentile", True), ("minmax", False)])
def test_int8_other_calibration_settings(exports: Store, tmp_path: Path, method: str,
                                         per_channel: bool) -> None:
    loaded, held_out = exports.model(FAST), exports.batch(FAST)
    artifact = export(BACKEND, loaded, "int8", tmp_path, "model-int8",
                      calibration_for(FAST, exports.files, loaded.spec), method=method,
                      per_channel=per_channel)
    assert artifact.quantization["method"] == method
    assert ("per-channel" if per_channel else "per-tensor") in artifact.quantization["scheme"]
    if method == "percentile":
        assert any("HistogramObserver" in n for n in artifact.notes)
    got = BACKEND.open(artifact.path).run(held_out)
    assert mean_cosine(got, eager(loaded, held_out)) >= 0.95


# ----------------------------------------------------------------------------- int8 I/O, fp16
def test_int8_io(exports: Store, tmp_path: Path) -> None:
    held_out = exports.batch(FAST)
    floating = exports.export(NAME, FAST, "int8")
    integer = exports.export(NAME, FAST, "int8", int8_io=True)
    assert (integer.input_dtype, integer.output_dtype) == ("int8", "int8")
    q_in, q_out = integer.quantization["input"], integer.quantization["output"]
    for q in (q_in, q_out):
        assert q["dtype"] == "int8" and q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    # inputs are [0, 1] images: the input range must cover them
    assert q_in["scale"] * (127 - q_in["zero_point"]) >= 0.99

    interp = Interpreter(model_path=str(integer.path))
    (detail,) = interp.get_input_details()
    assert detail["dtype"] == np.int8
    assert detail["quantization"] == pytest.approx((q_in["scale"], q_in["zero_point"]))

    session = BACKEND.open(integer.path)
    got = session.run(held_out)  # float in, float out: Session quantizes/dequantizes
    assert got.dtype == np.float32
    want = BACKEND.open(floating.path).run(held_out)
    assert np.abs(got - want).max() <= 2 * q_out["scale"] + 1e-6

    # The flatbuffer edit both ways: stripping the float model's boundary QUANTIZE/DEQUANTIZE
    # gives back litert-torch's integer interface; a float model cannot be made integer.
    stripped = tmp_path / "stripped.tflite"
    stripped.write_bytes(_set_io_types(floating.path.read_bytes(), integer=True))
    session = BACKEND.open(stripped)
    assert (session.input_dtype, session.output_dtype) == (np.int8, np.int8)
    np.testing.assert_array_equal(session.run(held_out), got)
    with pytest.raises(ExportError, match="runs in float"):
        _set_io_types(exports.export(NAME, FAST, "fp32").path.read_bytes(), integer=True)


def test_fp16_half_size_and_close(exports: Store) -> None:
    name = "prudensnet"  # 5.5 MB of fp32 weights: the size ratio is not blurred by overhead
    held_out = exports.batch(name)
    fp32 = exports.export(NAME, name, "fp32")
    fp16 = exports.export(NAME, name, "fp16")
    assert (fp16.precision, fp16.input_dtype, fp16.output_dtype) == ("fp16", "float32", "float32")
    ratio = fp16.path.stat().st_size / fp32.path.stat().st_size
    assert 0.4 < ratio < 0.55

    dtypes = {d["dtype"] for d in Interpreter(model_path=str(fp16.path)).get_tensor_details()}
    assert np.float16 in dtypes
    want = BACKEND.open(fp32.path).run(held_out)
    got = BACKEND.open(fp16.path).run(held_out)
    assert np.abs(got - want).max() <= 1e-2 * max(1.0, float(np.abs(want).max()))
    assert centred_correlation(got, want) > 0.999


# ----------------------------------------------------------------------------- quiet exports
def test_export_is_quiet(exports: Store, monkeypatch: pytest.MonkeyPatch,
                         capfd: pytest.CaptureFixture[str]) -> None:
    """The contract's re-export (fp32 and int8) printed nothing on stdout."""
    assert exports.reexport(NAME, capfd, monkeypatch).stdout == ""


# ----------------------------------------------------------------------------- clear errors
def _tiny(exports: Store, module: object, kind: str = "torch"):
    return hand_made(module, "tiny", exports.model(FAST).spec, kind=kind, class_names=("a", "b"),
                     onnx_path=Path("tiny.onnx") if kind == "onnx" else None, source="tiny.pt")


def test_unsupported_operator_is_named(exports: Store, tmp_path: Path) -> None:
    nn = torch.nn
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2)).eval()
    with pytest.raises(ExportError) as info:
        export(BACKEND, _tiny(exports, module), "fp32", tmp_path, "model-fp32")
    message = str(info.value)
    assert "litert" in message and "aten.adaptive_max_pool2d" in message
    assert not list(tmp_path.glob("*.tflite"))


def test_onnx_source_with_an_untranslatable_op_names_it(exports: Store, tmp_path: Path) -> None:
    """An ONNX operator the ONNX → PyTorch step has no translation for is an ExportError naming
    the backend and the operator; nothing is written."""
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest"),
         helper.make_node("GlobalAveragePool", ["y"], ["g"]),
         helper.make_node("Flatten", ["g"], ["logits"])], "resize",
        [helper.make_tensor_value_info("x", tp.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", tp.FLOAT, [1, 3])],
        [helper.make_tensor("scales", tp.FLOAT, [4], [1, 1, 2, 2])])
    path = tmp_path / "resize.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    source = hand_made(None, "resize", PreprocessSpec(input_size=SIZE), kind="onnx",
                       onnx_path=path, source=str(path))
    with pytest.raises(ExportError) as info:
        export(BACKEND, source, "fp32", tmp_path / "out", "model-fp32")
    message = str(info.value)
    for word in ("litert", "ONNX", "Resize", "onnxruntime", "openvino"):
        assert word in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("precision", "options", "words"), [
    ("int8", {"method": "entropy"}, ("'entropy'", "litert", "minmax")),
    ("fp32", {"int8_io": True}, ("int8_io",)),
])
def test_bad_requests_are_config_errors(exports: Store, tmp_path: Path, precision: str,
                                        options: dict, words: tuple[str, ...]) -> None:
    calibration = [np.zeros((1, 3, SIZE, SIZE), np.float32)] if precision == "int8" else None
    with pytest.raises(ConfigError) as info:
        export(BACKEND, exports.model(FAST), precision, tmp_path, "m", calibration, **options)
    for word in words:
        assert word in str(info.value)


def test_session_rejects_wrong_shape(exports: Store) -> None:
    session = BACKEND.open(exports.export(NAME, FAST, "fp32").path)
    with pytest.raises(DataError, match="expected a batch of shape"):
        session.run(np.zeros((1, 3, 32, 32), np.float32))


# ----------------------------------------------------------------------------- device side
def test_integer_io_runtime_never_imports_torch(exports: Store, tmp_path: Path) -> None:
    """The int8-I/O artifact's quantize/dequantize in a fresh interpreter where torch, torchao
    and litert_torch cannot import (the fp32 and float-I/O int8 artifacts: the contract)."""
    held_out = exports.batch(FAST)
    path = exports.export(NAME, FAST, "int8", int8_io=True).path
    report = run_without_torch(NAME, [path], held_out, tmp_path)
    assert report["available"] is None and report["heavy"] == []
    np.testing.assert_array_equal(report["outputs"][0],
                                  BACKEND.open(path, threads=1).run(held_out))


def test_mean_minmax_observer_averages_each_images_extremes() -> None:
    """The "mean" activation range: the mean over images of each image's min/max; an observer
    shared by several edges (a concat's inputs) takes their joint extremes within one image."""
    images = _Calibration()
    observer = _mean_minmax_observer(images)(dtype=torch.qint8,
                                             qscheme=torch.per_tensor_symmetric)
    observer(torch.tensor([-1.0, 2.0]))
    observer(torch.tensor([-3.0, 0.5]))  # same image, second edge: min -3, max 2
    images.image = 1
    observer(torch.tensor([-1.0, 10.0]))
    assert float(observer.min_val) == pytest.approx((-3.0 - 1.0) / 2)
    assert float(observer.max_val) == pytest.approx((2.0 + 10.0) / 2)
    images.image = 2
    observer(torch.tensor([0.0, 0.0]))
    assert float(observer.max_val) == pytest.approx(12.0 / 3)


@pytest.mark.parametrize("ranges", ["global", "mean"])
def test_pt2e_input_range_follows_activation_ranges(ranges: str) -> None:
    """pt2e_quantize counts the images for the observers: with one wide image among 12, the
    input's symmetric range is its max |x| ("global") or the mean of each image's extremes."""
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32) for _ in range(12)]
    calibration[0] *= 50.0
    sample = (torch.from_numpy(calibration[1]),)
    converted, _, count = pt2e_quantize(module, sample, calibration, ranges=ranges)
    assert count == 12
    (scale,) = [float(n.args[1]) for n in converted.graph.nodes
                if "quantize_per_tensor" in str(n.target) and n.args[0].op == "placeholder"]
    lo, hi = ((min(c.min() for c in calibration), max(c.max() for c in calibration))
              if ranges == "global" else
              (np.mean([c.min() for c in calibration]), np.mean([c.max() for c in calibration])))
    assert scale * 255 / 2 == pytest.approx(max(-lo, hi), rel=1e-3)
