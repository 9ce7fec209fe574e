"""What every runtime plugin must do, tested alike for every name in ``backend_names()``.

Real exports (64 px zoo models with fresh, seeded weights), real runtime sessions. A check that
only one runtime makes stays in its own file (``test_backend_<name>.py``), which reads the same
exports from ``backend_support.Store``: each (backend, model, precision) is exported once per
test session. A backend whose runtime or converters are not installed is skipped, not failed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")

from backend_support import (  # noqa: E402
    FAST,
    N_CALIB,
    N_EVAL,
    SIZE,
    Store,
    assert_int8_sound,
    bessel_source,
    calibration_for,
    eager,
    export,
    hand_made,
    store,
    total_size,
)

from edgekit.backends import (  # noqa: E402
    TORCH_REFERENCE,
    Session,
    all_backends,
    backend_names,
    device_install_hint,
    get_backend,
    runtime,
    runtimes,
)
from edgekit.backends.base import PRECISIONS  # noqa: E402
from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.errors import ConfigError, DataError, ExportError  # noqa: E402
from edgekit.zoo import list_models, model_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")
KINDS = ("torch", "torchscript", "onnx", "keras")


def installed(name: str) -> str:
    """``name``, after skipping the test when its runtime is not installed (an export whose
    converters are missing skips too: ``backend_support.export``)."""
    hint = get_backend(name).available()
    if hint:
        pytest.skip(hint)
    return name


def taking(kind: str) -> list[str]:
    return [b.name for b in all_backends() if kind in b.sources]


def zoo_params() -> list:
    """(backend, model) pairs; int8 on a slow-exporting backend runs every model but FAST only
    under the ``slow`` mark."""
    return [pytest.param(b.name, m, marks=[pytest.mark.slow] if b.slow_export and m != FAST
                         else []) for b in all_backends() for m in list_models()]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, phantom_files) -> Store:
    return store(tmp_path_factory, phantom_files)


# ----------------------------------------------------------------------------- facts
def test_every_plugin_declares_every_fact() -> None:
    plugins = all_backends()
    assert [b.name for b in plugins] == backend_names()
    for b in plugins:
        assert get_backend(b.name) is b and runtime(b.name) is b
        for attr in ("extra", "suffix", "label", "title", "colour", "module"):
            assert isinstance(getattr(b, attr), str) and getattr(b, attr), (b.name, attr)
        assert b.suffix.startswith(".")
        assert re.fullmatch(r"#[0-9a-f]{6}", b.colour), b.colour
        assert b.precisions and set(b.precisions) <= set(PRECISIONS)
        assert b.sources and set(b.sources) <= set(KINDS)
        assert b.packages and all(isinstance(d, str) and isinstance(m, str) and d and m
                                  for d, m in b.packages)
        assert b.module.split(".")[0] == b.packages[0][1]  # the first package is the one run
        assert all(isinstance(p, str) and p for p in b.converter_packages)
        assert isinstance(b.slow_export, bool) and isinstance(b.int8_as_fp16_on_arm, bool)
        for kind in KINDS:
            assert isinstance(b.source_hint(kind), str)
        assert b.arm_failure_hint("", "cortex-a72", ()) is None
        assert callable(b.fast_path)  # issue 18: "unknown" unless the plugin can tell


def test_runtime_facts_are_distinct_and_reach_the_reference() -> None:
    every = runtimes()
    assert every[-1] is TORCH_REFERENCE and runtime(TORCH_REFERENCE.name) is TORCH_REFERENCE
    assert TORCH_REFERENCE.name not in backend_names() and runtime("no-such-runtime") is None
    for attr in ("name", "label", "title", "colour", "module"):
        values = [getattr(r, attr) for r in every]
        assert len(set(values)) == len(values), (attr, values)
    dists = [d for r in every for d, _ in r.packages]
    assert len(set(dists)) == len(dists)
    hint = device_install_hint()
    assert all(b.packages[0][0] in hint for b in all_backends())


# ----------------------------------------------------------------------------- plugin basics
@pytest.mark.parametrize("name", backend_names())
def test_registered_and_available(name: str) -> None:
    backend = get_backend(installed(name))
    assert backend.name == name and get_backend(name) is backend
    assert backend.available() is None


# ----------------------------------------------------------------------------- every zoo model
@pytest.mark.parametrize("backend", backend_names())
@pytest.mark.parametrize("name", list_models())
def test_fp32_export_matches_torch(exports: Store, backend: str, name: str) -> None:
    model, plugin = exports.model(name), get_backend(installed(backend))
    artifact = exports.export(backend, name, "fp32")
    out = artifact.path.parent
    shape = list(model.spec.input_shape(1))
    assert artifact.path == out / f"{name}-fp32{plugin.suffix}"
    assert artifact.files[0] == artifact.path
    assert sorted(out.iterdir()) == sorted(artifact.files)  # nothing else written
    assert (artifact.backend, artifact.precision, artifact.layout) == (backend, "fp32", "NCHW")
    assert artifact.input_shape == shape and artifact.input_name and artifact.notes
    assert (artifact.input_dtype, artifact.output_dtype) == ("float32", "float32")

    session = plugin.open(artifact.path, threads=2)
    assert isinstance(session, Session) and session.input_shape == shape
    x = np.random.default_rng(1).random((3, *shape[1:]), dtype=np.float32)
    x = np.concatenate([x, exports.batch(name)])
    got = session.run(x)
    assert got.dtype == np.float32
    assert got.shape == (3 + N_EVAL, model_config(name).num_classes)
    assert np.abs(got - eager(model, x)).max() <= 1e-4


@pytest.mark.parametrize(("backend", "name"), zoo_params())
def test_int8_export_streams_calibration_and_runs(exports: Store, backend: str,
                                                  name: str) -> None:
    plugin = get_backend(installed(backend))
    if "int8" not in plugin.precisions:
        pytest.skip(f"{backend} has no int8")
    int8 = exports.export(backend, name, "int8")
    calibration = exports.calibration[(backend, name, "int8")]
    assert calibration.loaded == N_CALIB * calibration.passes  # streamed, never re-read per item
    assert int8.quantization["calibration_images"] == N_CALIB
    assert (int8.backend, int8.precision) == (backend, "int8")
    assert (int8.input_dtype, int8.output_dtype) == ("float32", "float32")
    assert sorted(int8.path.parent.iterdir()) == sorted(int8.files)
    got = plugin.open(int8.path, threads=1).run(exports.batch(name))
    assert got.shape == (N_EVAL, model_config(name).num_classes) and np.isfinite(got).all()
    assert got.std(axis=0).max() > 0, "int8 logits do not depend on the input"


@pytest.mark.parametrize("backend", backend_names())
def test_reexport_is_byte_identical_and_restores_the_environment(
        exports: Store, backend: str, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    again = exports.reexport(installed(backend), capfd, monkeypatch)
    assert [a.precision for a, _ in again.pairs] == [
        p for p in ("fp32", "int8") if p in get_backend(backend).precisions]
    for first, second in again.pairs:
        assert second.path != first.path
        for old, new in zip(first.files, second.files, strict=True):
            assert old.read_bytes() == new.read_bytes(), (first.precision, new.name)
    assert again.environ == {"TF_CPP_MIN_LOG_LEVEL": "1", "LITERT_TORCH_SHOW_PROGRESS": None}


# ----------------------------------------------------------------------------- ONNX sources
@pytest.mark.parametrize("dynamic_batch", [True, False], ids=["dynamic-batch", "static"])
@pytest.mark.parametrize("backend", taking("onnx"))
def test_onnx_source_fp32_and_int8(exports: Store, backend: str, dynamic_batch: bool,
                                   tmp_path: Path) -> None:
    plugin = get_backend(installed(backend))
    name = "dsconv_cbam"  # large enough that an INT8 OpenVINO IR is smaller than the fp32 one
    source = exports.onnx_source(name, dynamic_batch=dynamic_batch)
    batch = exports.batch(name)
    fp32 = export(plugin, source, "fp32", tmp_path, "m-fp32")
    assert fp32.input_shape == [1, 3, SIZE, SIZE]
    assert any("fixed" in note for note in fp32.notes) == dynamic_batch
    session = plugin.open(fp32.path)
    assert session.input_shape == [1, 3, SIZE, SIZE]  # a dynamic batch is fixed to 1
    logits = session.run(batch)
    assert np.abs(logits - eager(exports.model(name), batch)).max() <= 1e-4

    calibration = calibration_for(name, exports.files, source.spec)
    int8 = export(plugin, source, "int8", tmp_path, "m-int8", calibration)
    assert total_size(int8) < total_size(fp32)
    assert_int8_sound(logits, plugin.open(int8.path).run(batch))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f.name for f in [*fp32.files, *int8.files])


def _graph_with_unknown_op(path: Path, domain: str):
    onnx = pytest.importorskip("onnx", reason="pip install 'edgekit[torch]'")
    helper, tensor_proto = onnx.helper, onnx.TensorProto

    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("FooBarOp", ["pooled"], ["odd"], domain=domain),
             helper.make_node("Flatten", ["odd"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)]
    weight = helper.make_tensor("w", tensor_proto.FLOAT, [4, 3], [0.1] * 12)
    graph = helper.make_graph(
        nodes, "unknown-op", [helper.make_tensor_value_info("input", tensor_proto.FLOAT,
                                                            ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", tensor_proto.FLOAT, ["N", 4])], [weight])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), str(path))
    return hand_made(None, "handmade", PreprocessSpec(input_size=SIZE), kind="onnx",
                     onnx_path=path, class_names=("a", "b", "c", "d"), source=str(path))


@pytest.mark.parametrize("domain", ["", "com.example"], ids=["onnx-domain", "custom-domain"])
@pytest.mark.parametrize("backend", taking("onnx"))
def test_unknown_operator_in_onnx_source_names_op_and_backend(backend: str, domain: str,
                                                               tmp_path: Path) -> None:
    source = _graph_with_unknown_op(tmp_path / "odd.onnx", domain)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=backend) as info:
        export(installed(backend), source, "fp32", out, "odd")
    assert "FooBarOp" in str(info.value)
    assert not out.exists() or not list(out.iterdir())


# ----------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("backend", taking("torch"))
def test_operator_the_converter_rejects_names_op_and_backend(backend: str,
                                                             tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=backend) as info:
        export(installed(backend), bessel_source(), "fp32", tmp_path, "bessel")
    assert "i1e" in str(info.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("calibration", [None, []], ids=["none", "empty"])
@pytest.mark.parametrize("backend", backend_names())
def test_int8_without_calibration_is_config_error(exports: Store, backend: str, calibration,
                                                  tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        export(installed(backend), exports.model(FAST), "int8", tmp_path, "m", calibration)


@pytest.mark.parametrize("backend", backend_names())
def test_unsupported_precision_is_config_error_naming_the_supported_ones(
        exports: Store, backend: str, tmp_path: Path) -> None:
    plugin = get_backend(installed(backend))
    offered = ", ".join(plugin.precisions)
    for precision in sorted({*PRECISIONS, "bf16", "int4"} - set(plugin.precisions)):
        with pytest.raises(ConfigError, match=f"'{precision}'.*{offered}"):
            export(plugin, exports.model(FAST), precision, tmp_path, "m")


# ----------------------------------------------------------------------------- sessions
class _Doubling(Session):
    """A Session that needs no runtime: logits = 2 * the row's channel means."""

    def __init__(self, shape: list[int]) -> None:
        self.path, self.input_name, self.input_shape = Path("double.bin"), "x", shape
        self.calls = 0

    def _run_one(self, row: np.ndarray) -> np.ndarray:
        assert row.shape[0] == 1 and row.dtype == np.float32 and row.flags.c_contiguous
        self.calls += 1
        return 2 * row.mean(axis=(2, 3))


def test_session_base_runs_batch_one_and_checks_the_shape() -> None:
    session = _Doubling([1, 3, -1, 4])  # -1: a dimension the artifact leaves open
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float64).reshape(2, 3, 5, 4)
    got = session.run(x)
    assert session.calls == 2 and got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_allclose(got, 2 * x.mean(axis=(2, 3)), rtol=1e-6)
    call = session.bind(x[:1].astype(np.float32))
    np.testing.assert_allclose(call(), got[:1], rtol=1e-6)
    assert (session.threads, session.inference_precision) == (None, None)
    for bad in (np.zeros((1, 3, 5, 5)), np.zeros((1, 3, 5))):
        with pytest.raises(DataError, match=r"double\.bin: input batch of shape .* does not fit "
                                            r"the artifact's input \[1, 3, -1, 4\] \(N first\)"):
            session.run(bad)


@pytest.mark.parametrize("backend", backend_names())
def test_thread_setting_is_applied(exports: Store, backend: str) -> None:
    plugin = get_backend(installed(backend))
    path = exports.export(backend, FAST, "fp32").path
    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    reference = plugin.open(path).run(x)
    for threads in (1, 2):
        session = plugin.open(path, threads=threads)
        assert session.threads == threads
        np.testing.assert_allclose(session.run(x), reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", backend_names())
def test_wrong_input_shape_is_data_error_naming_the_file(exports: Store, backend: str) -> None:
    plugin = get_backend(installed(backend))
    path = exports.export(backend, FAST, "fp32").path
    with pytest.raises(DataError, match=re.escape(path.name)):
        plugin.open(path).run(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.parametrize("backend", backend_names())
def test_open_and_run_work_without_torch(exports: Store, backend: str) -> None:
    """open/run in a fresh interpreter where torch and the converters cannot import: no
    converter imported, no OpenVINO telemetry, the same logits as in this process."""
    plugin = get_backend(installed(backend))
    report = exports.torch_free_run(backend)
    assert report["heavy"] == [] and report["telemetry"] and report["available"] is None
    x = report["x"]
    for artifact, got, precision in zip(report["artifacts"], report["outputs"],
                                        report["precision"], strict=True):
        session = plugin.open(artifact.path, threads=1)
        assert got.shape == (len(x), model_config(FAST).num_classes)
        np.testing.assert_array_equal(got, session.run(x))
        assert precision == session.inference_precision
