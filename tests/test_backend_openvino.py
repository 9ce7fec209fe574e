"""OpenVINO backend: what only this runtime does (fp16 IRs, NNCF options, the CPU plugin's
precision and Snippets workaround), on real conversions and real CPU-plugin sessions, 64 px.

What every backend must do (fp32 parity with torch, int8 streaming, ONNX sources, errors,
threads, torch-free sessions without telemetry) is in ``test_backend_contract.py``; the exports
are shared with it through ``backend_support.Store``. Zoo models carry fresh (seeded) weights,
so INT8 quality is judged against the fp32 IR on phantom images: the logits must point the same
way (cosine > 0.9), be close relative to their size, and still depend on the input.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import platform
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="pip install 'edgekit[openvino]'")
torch = pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")

from backend_support import (  # noqa: E402
    FAST,
    SIZE,
    Store,
    assert_int8_sound,
    bessel_source,
    calibration_for,
    cosine,
    export,
    resized,
    store,
    total_size,
)

from edgekit.backends import get_backend  # noqa: E402
from edgekit.backends.openvino import BACKEND, _constant_precision  # noqa: E402
from edgekit.errors import ConfigError, DataError, ExportError  # noqa: E402
from edgekit.zoo import list_models  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NAME = "openvino"
ON_ARM = platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv8l")
needs_nncf = pytest.mark.skipif(importlib.util.find_spec("nncf") is None,
                                reason="pip install nncf (edgekit[compress])")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, phantom_files) -> Store:
    return store(tmp_path_factory, phantom_files)


def test_backend_facts() -> None:
    backend = get_backend(NAME)
    assert backend is BACKEND
    assert (backend.name, backend.extra, backend.suffix) == ("openvino", "openvino", ".xml")
    assert backend.precisions == ("fp32", "fp16", "int8")
    assert backend.sources == ("torch", "torchscript", "onnx", "keras")
    assert (backend.label, backend.title, backend.colour) == ("ov", "OpenVINO", "#1f77b4")
    assert backend.packages == (("openvino", "openvino"),) and backend.module == "openvino"
    assert backend.converter_packages == ("openvino", "nncf")
    assert not backend.slow_export and backend.int8_as_fp16_on_arm
    features = "fp asimd evtstrm crc32 cpuid".split()
    hint = backend.arm_failure_hint("Exception: object is not initialized", "cortex-a72", features)
    assert hint and "cortex-a72" in hint and "fp16" in hint
    assert backend.arm_failure_hint("object is not initialized", "cortex-a76",
                                    [*features, "fphp"]) is None


# --- every zoo model ---------------------------------------------------------------------------


@needs_nncf
@pytest.mark.parametrize("name", list_models())
def test_ir_precisions_of_every_zoo_model(exports: Store, name: str) -> None:
    batch = exports.batch(name)
    fp32 = exports.export(NAME, name, "fp32")
    xml, binary = fp32.path, fp32.path.with_suffix(".bin")
    assert fp32.files == [xml, binary] and fp32.input_name == "input"
    session = BACKEND.open(fp32.path)
    assert session.inference_precision == "f32"  # never the CPU's silent bf16 default
    actual = session.run(batch)

    fp16 = exports.export(NAME, name, "fp16")
    assert sorted(fp16.path.parent.iterdir()) == sorted(fp16.files)
    assert fp16.files[1].stat().st_size < 0.6 * binary.stat().st_size  # weights halved
    assert any("ARM" in note and "fp16" in note for note in fp16.notes)
    fp16_session = BACKEND.open(fp16.path)
    assert fp16_session.artifact_precision == "fp16"
    assert fp16_session.inference_precision == ("f16" if ON_ARM else "f32")
    assert cosine(actual, fp16_session.run(batch)) > 0.999

    int8 = exports.export(NAME, name, "int8")
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


# --- ONNX files as the source ------------------------------------------------------------------


def test_onnx_source_with_wrong_input_size_is_config_error(exports: Store,
                                                           tmp_path: Path) -> None:
    small = resized(exports.onnx_source("dsconv_cbam", dynamic_batch=False), 32)
    with pytest.raises(ConfigError, match=r"\[1,3,64,64\].*\[1, 3, 32, 32\]"):
        export(BACKEND, small, "fp32", tmp_path / "out", "m")


def test_operator_the_converter_rejects_is_named_as_torch_calls_it(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="openvino") as info:
        export(BACKEND, bessel_source(), "fp32", tmp_path, "bessel")
    assert "aten::special_i1e" in str(info.value)


# --- options and errors ------------------------------------------------------------------------


@needs_nncf
def test_percentile_and_per_tensor_options(exports: Store, tmp_path: Path) -> None:
    model = exports.model(FAST)
    batch = exports.batch(FAST)
    fp32 = BACKEND.open(exports.export(NAME, FAST, "fp32").path).run(batch)
    default = exports.export(NAME, FAST, "int8")
    tuned = export(BACKEND, model, "int8", tmp_path, "tuned",
                   calibration_for(FAST, exports.files, model.spec), method="percentile",
                   per_channel=False, fast_bias_correction=False)
    assert tuned.quantization["range_estimator"] == "MEAN_QUANTILE"
    assert tuned.quantization["per_channel"] is False
    assert tuned.quantization["fast_bias_correction"] is False
    assert default.files[1].read_bytes() != tuned.files[1].read_bytes()
    assert_int8_sound(fp32, BACKEND.open(tuned.path).run(batch))


@pytest.mark.parametrize("method", ["entropy", "kl"])
def test_unsupported_calibration_method_is_config_error(exports: Store, method: str,
                                                        tmp_path: Path) -> None:
    calibration = [np.zeros((1, 3, SIZE, SIZE), np.float32)]
    with pytest.raises(ConfigError, match=f"'{method}'.*'openvino'.*supported: minmax, "
                                          "percentile"):
        export(BACKEND, exports.model(FAST), "int8", tmp_path, "m", calibration, method=method)
    assert not list(tmp_path.iterdir())


def test_bad_preset_is_config_error(exports: Store, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preset"):
        export(dataclasses.replace(BACKEND, preset="x"), exports.model(FAST), "fp32", tmp_path,
               "m")


@needs_nncf
def test_ignored_types_stay_float(exports: Store, tmp_path: Path) -> None:
    model = exports.model(FAST)
    backend = dataclasses.replace(BACKEND, ignored_types=("Sigmoid",))
    artifact = export(backend, model, "int8", tmp_path, "m",
                      calibration_for(FAST, exports.files, model.spec))
    assert artifact.quantization["ignored_types"] == ["Sigmoid"]
    model_ir = ov.Core().read_model(str(artifact.path))
    for op in model_ir.get_ordered_ops():
        if op.get_type_name() == "Sigmoid":
            producer = op.input_value(0).get_node().get_type_name()
            assert producer != "FakeQuantize", op.get_friendly_name()


def test_fp16_reexport_is_byte_identical(exports: Store, tmp_path: Path) -> None:
    """(fp32 and int8: the contract.)"""
    first = exports.export(NAME, FAST, "fp16")
    again = export(BACKEND, exports.model(FAST), "fp16", tmp_path, first.path.stem)
    for old, new in zip(first.files, again.files, strict=True):
        assert old.read_bytes() == new.read_bytes(), new.name


@needs_nncf
@pytest.mark.xfail(strict=False, reason="OpenVINO 2026.4 CPU: 1-thread Snippets MLP fusion of "
                   "a quantized FC-ReLU-FakeQuantize-FC head outputs zeros; XPASS = fixed "
                   "upstream, the SNIPPETS_MODE=DISABLE workaround can go")
def test_openvino_single_thread_snippets_mlp_bug(exports: Store) -> None:
    int8 = exports.export(NAME, FAST, "int8")
    x = exports.batch(FAST)[:1]
    core = ov.Core()
    outputs = []
    for extra in ({}, {"SNIPPETS_MODE": "DISABLE"}):
        compiled = core.compile_model(str(int8.path), "CPU", {
            "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", **extra})
        outputs.append(compiled.create_infer_request().infer({0: x})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


# --- sessions ----------------------------------------------------------------------------------


def test_latency_hint_and_thread_check(exports: Store) -> None:
    path = exports.export(NAME, FAST, "fp32").path
    for threads in (1, 2):
        session = BACKEND.open(path, threads=threads)
        assert str(session._compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    with pytest.raises(ConfigError, match="threads"):
        BACKEND.open(path, threads=0)


def test_missing_bin_is_data_error(exports: Store, tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(exports.export(NAME, FAST, "fp32").path.read_bytes())
    with pytest.raises(DataError, match="lonely.bin"):
        BACKEND.open(lonely)


def test_torch_free_session_computes_in_f32_and_writes_nothing_home(exports: Store) -> None:
    """The contract's torch-free run: OpenVINO keeps no telemetry files in ~/intel."""
    report = exports.torch_free_run(NAME)
    assert report["precision"] == ["f32", "f32"]
    assert "intel" not in report["home"]
