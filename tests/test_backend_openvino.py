"""OpenVINO backend: real conversions (torch and ONNX sources), NNCF INT8, CPU plugin, 64 px.

Zoo models carry fresh (seeded) weights, so INT8 quality is judged against the fp32 IR on
phantom images: the logits must point the same way (cosine > 0.9), be close relative to their
size, and still depend on the input.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="pip install 'edgekit[openvino]'")
torch = pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")

from backend_support import (  # noqa: E402
    N_CALIB,
    N_EVAL,
    REPO,
    SIZE,
    assert_int8_sound,
    calibration_for,
    cosine,
    eager,
    eval_batch,
    onnx_source,
    zoo_model,
)

from edgekit.backends import ExportRequest, QuantOptions, get_backend  # noqa: E402
from edgekit.backends.openvino import BACKEND, _constant_precision  # noqa: E402
from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.errors import ConfigError, DataError, ExportError  # noqa: E402
from edgekit.sources import OnnxSource, Source, TorchSource  # noqa: E402
from edgekit.zoo import list_models, model_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")
ON_ARM = platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv8l")
needs_nncf = pytest.mark.skipif(importlib.util.find_spec("nncf") is None,
                                reason="pip install nncf (edgekit[compress])")


def total_size(artifact) -> int:
    return sum(f.stat().st_size for f in artifact.files)


def export(model: Source, precision: str, out: Path, stem: str, calibration=None,
           backend=BACKEND, **options):
    return backend.export(ExportRequest(model, precision, out, stem, calibration,
                                        QuantOptions(**options)))


# --- every zoo model ---------------------------------------------------------------------------


def test_backend_registered_with_interface() -> None:
    backend = get_backend("openvino")
    assert backend is BACKEND
    assert (backend.name, backend.extra, backend.suffix) == ("openvino", "openvino", ".xml")
    assert backend.precisions == ("fp32", "fp16", "int8")
    assert backend.sources == ("torch", "torchscript", "onnx", "keras")
    assert backend.available() is None


@needs_nncf
@pytest.mark.parametrize("name", list_models())
def test_fp32_fp16_int8_export_every_zoo_model(name: str, tmp_path: Path, phantom_files) -> None:
    model = zoo_model(name)
    batch = eval_batch(name, phantom_files, model.spec)
    expected = eager(model, batch)

    fp32 = export(model, "fp32", tmp_path, f"{name}-fp32")
    xml, binary = tmp_path / f"{name}-fp32.xml", tmp_path / f"{name}-fp32.bin"
    assert fp32.path == xml and fp32.files == [xml, binary]
    assert (fp32.backend, fp32.precision, fp32.input_name) == ("openvino", "fp32", "input")
    assert fp32.input_shape == [1, 3, SIZE, SIZE] and fp32.layout == "NCHW"
    session = BACKEND.open(fp32.path)
    assert session.input_shape == [1, 3, SIZE, SIZE]
    assert session.inference_precision == "f32"  # never the CPU's silent bf16 default
    actual = session.run(batch)
    assert actual.shape == expected.shape == (N_EVAL, model_config(name).num_classes)
    assert np.abs(actual - expected).max() <= 1e-4

    fp16 = export(model, "fp16", tmp_path, f"{name}-fp16")
    assert fp16.files[1].stat().st_size < 0.6 * binary.stat().st_size  # weights halved
    assert any("ARM" in note and "fp16" in note for note in fp16.notes)
    fp16_session = BACKEND.open(fp16.path)
    assert fp16_session.artifact_precision == "fp16"
    assert fp16_session.inference_precision == ("f16" if ON_ARM else "f32")
    assert cosine(actual, fp16_session.run(batch)) > 0.999

    calibration = calibration_for(name, phantom_files, model.spec)
    int8 = export(model, "int8", tmp_path, f"{name}-int8", calibration)
    assert calibration.loaded == N_CALIB * calibration.passes
    assert int8.quantization["calibration_images"] == N_CALIB
    assert "FakeQuantize" in int8.path.read_text()
    assert int8.files[1].stat().st_size < binary.stat().st_size
    if binary.stat().st_size >= 256 * 1024:
        # Below that (dsconv_cbam_gap: 31.5 k parameters, 124 KB of fp32 weights) the .xml
        # growth of ~40 FakeQuantize nodes with their range constants (+107 KB) outweighs
        # the weight savings (-89 KB): the INT8 IR is larger than the fp32 one.
        assert total_size(int8) < total_size(fp32)
    int8_session = BACKEND.open(int8.path, threads=1)  # one thread: see the Snippets test
    assert int8_session.inference_precision == "f32" and int8_session.snippets_disabled
    assert_int8_sound(actual, int8_session.run(batch))
    # IRs written by other tools carry no edgekit tag: precision read from the constants
    core = ov.Core()
    assert [_constant_precision(core.read_model(str(a.path))) for a in (fp32, fp16, int8)] == [
        "fp32", "fp16", "int8"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{name}-{p}.{s}" for p in ("fp32", "fp16", "int8") for s in ("xml", "bin"))


# --- ONNX files as the source ------------------------------------------------------------------


@needs_nncf
@pytest.mark.parametrize("dynamic_batch", [True, False], ids=["dynamic-batch", "static"])
def test_onnx_source_fp32_and_int8(dynamic_batch: bool, tmp_path: Path, phantom_files) -> None:
    name = "dsconv_cbam"
    model = zoo_model(name)
    source = onnx_source(model, tmp_path / "user.onnx", dynamic_batch=dynamic_batch)
    batch = eval_batch(name, phantom_files, model.spec)
    out = tmp_path / "out"

    fp32 = export(source, "fp32", out, "m-fp32")
    assert fp32.input_shape == [1, 3, SIZE, SIZE]
    assert any("fixed" in note for note in fp32.notes) == dynamic_batch
    session = BACKEND.open(fp32.path)
    assert session.input_shape == [1, 3, SIZE, SIZE]  # a dynamic batch is fixed to 1
    logits = session.run(batch)
    assert np.abs(logits - eager(model, batch)).max() <= 1e-4

    int8 = export(source, "int8", out, "m-int8", calibration_for(name, phantom_files, model.spec))
    assert total_size(int8) < total_size(fp32)
    assert_int8_sound(logits, BACKEND.open(int8.path).run(batch))
    assert sorted(p.name for p in out.iterdir()) == ["m-fp32.bin", "m-fp32.xml", "m-int8.bin",
                                                      "m-int8.xml"]


def test_onnx_source_with_wrong_input_size_is_config_error(tmp_path: Path) -> None:
    model = zoo_model("dsconv_cbam_gap")
    source = onnx_source(model, tmp_path / "user.onnx", dynamic_batch=False)
    source = dataclasses.replace(source, spec=model.spec.with_size(32))
    with pytest.raises(ConfigError, match=r"\[1,3,64,64\].*\[1, 3, 32, 32\]"):
        export(source, "fp32", tmp_path / "out", "m")


def test_unknown_operator_in_onnx_source_names_op_and_backend(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("FooBarOp", ["pooled"], ["odd"], domain="com.example"),
             helper.make_node("Flatten", ["odd"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)]
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1] * 12)
    graph = helper.make_graph(
        nodes, "unknown-op", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                            ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [weight])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]), str(path))
    source = OnnxSource(path=path, name="handmade", task="multiclass",
                        class_names=("a", "b", "c", "d"), spec=PreprocessSpec(input_size=SIZE),
                        source=str(path))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="openvino") as info:
        export(source, "fp32", out, "odd")
    assert "FooBarOp" in str(info.value)
    assert not out.exists() or not list(out.iterdir())


def test_operator_the_converter_rejects_names_op_and_backend(tmp_path: Path) -> None:
    class Bessel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i1e(x).mean(dim=(2, 3))

    spec = PreprocessSpec(input_size=16)
    model = TorchSource(module=Bessel().eval(), name="bessel", task="multiclass",
                        class_names=("a", "b", "c"), spec=spec, source="test")
    with pytest.raises(ExportError, match="openvino") as info:
        export(model, "fp32", tmp_path, "bessel")
    assert "aten::special_i1e" in str(info.value)
    assert not list(tmp_path.iterdir())


# --- options and errors ------------------------------------------------------------------------


@needs_nncf
def test_percentile_and_per_tensor_options(tmp_path: Path, phantom_files) -> None:
    name = "dsconv_cbam_gap"
    model = zoo_model(name)
    batch = eval_batch(name, phantom_files, model.spec)
    fp32 = BACKEND.open(export(model, "fp32", tmp_path, "fp32").path).run(batch)
    default = export(model, "int8", tmp_path, "default",
                     calibration_for(name, phantom_files, model.spec))
    tuned = export(model, "int8", tmp_path, "tuned",
                   calibration_for(name, phantom_files, model.spec), method="percentile",
                   per_channel=False, fast_bias_correction=False)
    assert tuned.quantization["range_estimator"] == "MEAN_QUANTILE"
    assert tuned.quantization["per_channel"] is False
    assert tuned.quantization["fast_bias_correction"] is False
    assert default.files[1].read_bytes() != tuned.files[1].read_bytes()
    assert_int8_sound(fp32, BACKEND.open(tuned.path).run(batch))


@pytest.mark.parametrize("method", ["entropy", "kl"])
def test_unsupported_calibration_method_is_config_error(method: str, tmp_path: Path) -> None:
    calibration = [np.zeros((1, 3, SIZE, SIZE), np.float32)]
    with pytest.raises(ConfigError, match=f"'{method}'.*'openvino'.*supported: minmax, "
                                          "percentile"):
        export(zoo_model("dsconv_cbam_gap"), "int8", tmp_path, "m", calibration, method=method)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("calibration", [None, []], ids=["none", "empty"])
def test_int8_without_calibration_is_config_error(calibration, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        export(zoo_model("dsconv_cbam_gap"), "int8", tmp_path, "m", calibration)


def test_bad_precision_and_preset_are_config_errors(tmp_path: Path) -> None:
    model = zoo_model("dsconv_cbam_gap")
    with pytest.raises(ConfigError, match="'bf16'.*fp32, fp16, int8"):
        export(model, "bf16", tmp_path, "m")
    with pytest.raises(ConfigError, match="preset"):
        export(model, "fp32", tmp_path, "m", backend=dataclasses.replace(BACKEND, preset="x"))


@needs_nncf
def test_ignored_types_stay_float(tmp_path: Path, phantom_files) -> None:
    model = zoo_model("dsconv_cbam_gap")
    backend = dataclasses.replace(BACKEND, ignored_types=("Sigmoid",))
    artifact = export(model, "int8", tmp_path, "m",
                      calibration_for("dsconv_cbam_gap", phantom_files, model.spec),
                      backend=backend)
    assert artifact.quantization["ignored_types"] == ["Sigmoid"]
    model_ir = ov.Core().read_model(str(artifact.path))
    for op in model_ir.get_ordered_ops():
        if op.get_type_name() == "Sigmoid":
            producer = op.input_value(0).get_node().get_type_name()
            assert producer != "FakeQuantize", op.get_friendly_name()


@needs_nncf
def test_same_inputs_give_byte_identical_files(tmp_path: Path, phantom_files) -> None:
    model = zoo_model("dsconv_cbam")
    for precision in ("fp32", "fp16", "int8"):
        files = []
        for run in ("a", "b"):
            calibration = calibration_for("dsconv_cbam", phantom_files, model.spec)
            files.append(export(model, precision, tmp_path / run, precision,
                                calibration if precision == "int8" else None).files)
        for first, second in zip(*files, strict=True):
            assert first.read_bytes() == second.read_bytes(), (precision, first.name)


@needs_nncf
@pytest.mark.xfail(strict=False, reason="OpenVINO 2026.4 CPU: 1-thread Snippets MLP fusion of "
                   "a quantized FC-ReLU-FakeQuantize-FC head outputs zeros; XPASS = fixed "
                   "upstream, the SNIPPETS_MODE=DISABLE workaround can go")
def test_openvino_single_thread_snippets_mlp_bug(tmp_path: Path, phantom_files) -> None:
    model = zoo_model("dsconv_cbam_gap")
    int8 = export(model, "int8", tmp_path, "m",
                  calibration_for("dsconv_cbam_gap", phantom_files, model.spec))
    x = eval_batch("dsconv_cbam_gap", phantom_files, model.spec)[:1]
    core = ov.Core()
    outputs = []
    for extra in ({}, {"SNIPPETS_MODE": "DISABLE"}):
        compiled = core.compile_model(str(int8.path), "CPU", {
            "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", **extra})
        outputs.append(compiled.create_infer_request().infer({0: x})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


# --- sessions ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = zoo_model("dsconv_cbam_gap")
    return export(model, "fp32", tmp_path_factory.mktemp("ov-small"), "small").path


def test_thread_setting_is_applied(small_artifact: Path) -> None:
    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    reference = BACKEND.open(small_artifact).run(x)
    for threads in (1, 2):
        session = BACKEND.open(small_artifact, threads=threads)
        assert session.threads == threads
        assert str(session._compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
        np.testing.assert_allclose(session.run(x), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="threads"):
        BACKEND.open(small_artifact, threads=0)


def test_wrong_input_shape_and_missing_bin_are_data_errors(small_artifact: Path,
                                                           tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not fit"):
        BACKEND.open(small_artifact).run(np.zeros((1, 3, 32, 32), np.float32))
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(small_artifact.read_bytes())
    with pytest.raises(DataError, match="lonely.bin"):
        BACKEND.open(lonely)


def test_open_and_run_work_without_torch_and_send_no_telemetry(small_artifact: Path,
                                                               tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any "import torch" now raises ImportError
        import numpy as np
        from edgekit.backends import get_backend
        session = get_backend("openvino").open({str(small_artifact)!r}, threads=1)
        logits = session.run(np.zeros((2, 3, {SIZE}, {SIZE}), np.float32))
        heavy = sorted(m for m in ("nncf", "onnx", "torch") if sys.modules.get(m))
        print(json.dumps({{"shape": list(logits.shape), "heavy": heavy,
                           "telemetry": sys.modules.get("openvino_telemetry") is None,
                           "precision": session.inference_precision}}))
    """)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}  # OpenVINO telemetry keeps its files in ~/intel
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"shape": [2, 4], "heavy": [], "telemetry": True, "precision": "f32"}
    assert not (home / "intel").exists()
