"""ONNX Runtime INT8: the per-ISA quantization scheme and the 'off the fast path' detector.

``unfused_ops`` runs ORT's real optimizer on small hand-built QDQ graphs (one op ORT has an
integer kernel for, one it does not) and on a real 64 px quantization; the scheme tests quantize
a real zoo model and read what the artifact and its quantization record say.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="pip install 'edgekit[onnxruntime]'")
onnx = pytest.importorskip("onnx", reason="pip install 'edgekit[torch]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

torch = pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")
pytest.importorskip("onnxscript", reason="pip install 'edgekit[torch]'")

from backend_support import (  # noqa: E402
    FAST,
    Store,
    assert_int8_sound,
    calibration_for,
    export,
    store,
)

from edgekit.backends.onnxruntime import (  # noqa: E402
    BACKEND,
    SCHEMES,
    _host_cpu,
    _int8_rewrites,
    _pre_process,
    isa_of,
    unfused_ops,
)
from edgekit.errors import ConfigError, DataError  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NAME = "onnxruntime"
GELU_MODEL = "prudensnet"  # exact GELU, squeeze-excitation and spatial attention


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, phantom_files) -> Store:
    return store(tmp_path_factory, phantom_files)


def _qdq_model(path: Path, middle: str) -> Path:
    """input → Q → DQ → ``middle`` → Q → DQ → output; ``middle`` is "Conv" (a 3×3 conv with
    int8 weights: ORT fuses it into QLinearConv) or "Erf" (no integer kernel: stays float)."""
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    inits = [scale, zero]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in")]
    if middle == "Conv":
        rng = np.random.default_rng(0)
        inits += [numpy_helper.from_array(rng.integers(-100, 100, (4, 4, 3, 3)).astype(np.int8),
                                          "wq"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.array(0, np.int8), "wz")]
        nodes += [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w"),
                  helper.make_node("Conv", ["xd", "wd"], ["y"], name="the_conv",
                                   pads=[1, 1, 1, 1])]
    else:
        nodes.append(helper.make_node(middle, ["xd"], ["y"], name=f"the_{middle.lower()}"))
    nodes += [helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="q_out"),
              helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"], name="dq_out")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_unfused_ops_names_a_float_op_between_dq_and_q(tmp_path: Path) -> None:
    rows = unfused_ops(_qdq_model(tmp_path / "erf.onnx", "Erf"))
    assert [(r["op"], r["node"]) for r in rows] == [("Erf", "the_erf")]
    assert "DequantizeLinear and QuantizeLinear" in rows[0]["reason"]


def test_unfused_ops_is_empty_when_ort_fuses_everything(tmp_path: Path) -> None:
    path = _qdq_model(tmp_path / "conv.onnx", "Conv")
    assert unfused_ops(path) == []
    # the backend's fast-path record (manifest, bench, report) is the same finding
    assert BACKEND.fast_path(path, "int8").status == "clean"
    off = BACKEND.fast_path(_qdq_model(tmp_path / "erf.onnx", "Erf"), "int8")
    assert off.status == "off" and [(o.op, o.node) for o in off.ops] == [("Erf", "the_erf")]
    # with graph optimisations off nothing is fused: the same conv is reported
    rows = unfused_ops(path, "ORT_DISABLE_ALL")
    assert [(r["op"], r["node"]) for r in rows] == [("Conv", "the_conv")]


def test_unfused_ops_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such ONNX artifact"):
        unfused_ops(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="ORT_ENABLE_ALL"):
        unfused_ops(_qdq_model(tmp_path / "erf.onnx", "Erf"), "ALL")


# --- the per-ISA scheme ------------------------------------------------------------------------


def test_isa_of_picks_the_scheme_from_arch_and_features() -> None:
    assert isa_of("x86_64", ["avx2", "avx512f", "avx512_vnni"]) == "x86-vnni"
    assert isa_of("AMD64", ["avx2", "avx_vnni"]) == "x86-vnni"
    assert isa_of("x86_64", ["avx2", "amx_int8"]) == "x86-vnni"
    assert isa_of("x86_64", ["avx2", "fma", "avx512f"]) == "x86"
    assert isa_of("aarch64", ["neon", "dotprod"]) == "arm64"
    assert SCHEMES["x86"].reduce_range and not SCHEMES["x86-vnni"].reduce_range
    assert {s.activation_type for s in SCHEMES.values()} == {"uint8"}


def test_the_int8_record_names_the_isa_scheme_and_why(exports: Store, tmp_path: Path) -> None:
    default = exports.export(NAME, FAST, "int8")
    q = default.quantization
    host = isa_of(_host_cpu()["arch"], _host_cpu()["features"])
    assert (q["isa"], q["isa_from"]) == (host, "this machine's CPU (isa=auto)")
    assert q["reduce_range"] is SCHEMES[host].reduce_range
    assert q["scheme_basis"] == SCHEMES[host].basis and q["op_types"] == "all ORT quantizes"
    assert any(f"ISA {host}" in note for note in default.notes)
    # a declared ISA (what compress sets for a target) wins over the host
    model = exports.model(FAST)
    x86 = export(dataclasses.replace(BACKEND, isa="x86"), model, "int8", tmp_path, "x86",
                 calibration_for(FAST, exports.files, model.spec))
    assert (x86.quantization["isa"], x86.quantization["reduce_range"]) == ("x86", True)
    assert x86.quantization["isa_from"] == "backend option isa"
    # an explicit option still beats the scheme
    full = export(dataclasses.replace(BACKEND, isa="x86", reduce_range=False), model, "int8",
                  tmp_path, "x86-full", calibration_for(FAST, exports.files, model.spec))
    assert full.quantization["reduce_range"] is False


def test_unknown_isa_is_config_error(exports: Store, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="isa must be 'auto' or one of x86-vnni, x86, arm64"):
        export(dataclasses.replace(BACKEND, isa="riscv"), exports.model(FAST), "int8", tmp_path,
               "m", [np.zeros((1, 3, 64, 64), np.float32)])


# --- the fast-path rewrites --------------------------------------------------------------------


def test_rewrites_are_exact_in_float(exports: Store, tmp_path: Path) -> None:
    fp32 = exports.export(NAME, GELU_MODEL, "fp32")
    pre, rewritten = tmp_path / "pre.onnx", tmp_path / "rewritten.onnx"
    _pre_process(fp32.path, pre, [])
    rewritten.write_bytes(pre.read_bytes())
    counts = _int8_rewrites(rewritten)
    erfs = sum(n.op_type == "Erf" for n in onnx.load(str(pre)).graph.node)
    assert erfs and counts["gelu"] == erfs  # every exact GELU of PruDensNet
    assert counts["global_pool"] >= 3 and counts["channel_mean"] >= 3  # SE + spatial attention
    ops = {n.op_type for n in onnx.load(str(rewritten)).graph.node}
    assert "Erf" not in ops and {"Gelu", "GlobalAveragePool"} <= ops
    graph = onnx.load(str(rewritten)).graph  # no orphans left for ORT to warn about
    read = {t for n in graph.node for t in n.input}
    assert all(i.name in read for i in graph.initializer)

    def run(path: Path) -> np.ndarray:
        o = ort.SessionOptions()
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {fp32.input_name: row[None]})[0]
                               for row in exports.batch(GELU_MODEL)])

    np.testing.assert_allclose(run(rewritten), run(pre), rtol=1e-4, atol=1e-4)


def test_int8_default_keeps_gelu_and_pools_off_the_float_path(exports: Store,
                                                               tmp_path: Path) -> None:
    model = exports.model(GELU_MODEL)
    fp32 = BACKEND.open(exports.export(NAME, GELU_MODEL, "fp32").path).run(
        exports.batch(GELU_MODEL))
    new = exports.export(NAME, GELU_MODEL, "int8")
    old = export(dataclasses.replace(BACKEND, rewrites=False), model, "int8", tmp_path, "old",
                 calibration_for(GELU_MODEL, exports.files, model.spec))
    assert new.quantization["rewrites"]["gelu"] > 0 and old.quantization["rewrites"] == {}
    off_new = {r["op"] for r in unfused_ops(new.path)}
    off_old = {r["op"] for r in unfused_ops(old.path)}
    assert {"Erf", "Div", "ReduceMean"} <= off_old  # as exported: GELU pieces, SE pooling
    assert not off_new & {"Erf", "Div"} and "com.microsoft.Gelu" in off_new
    assert len(unfused_ops(new.path)) < len(unfused_ops(old.path))
    assert_int8_sound(fp32, BACKEND.open(new.path).run(exports.batch(GELU_MODEL)))
