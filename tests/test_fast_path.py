"""Issue 18: knowing when an artifact is off its runtime's fast path, and the LiteRT fix for
depthwise kernels wider than XNNPACK's (PruDensNet's 7×7), with real exports at 64 px.

* LiteRT: a 7×7 depthwise convolution (what litert-torch makes of PruDensNet's) is found by
  ``fast_path``; edgekit's export hands it to litert-torch as pieces of ≤ 25 taps (INT8: row
  bands; float: centred row sets), so the ``.tflite`` has no wide depthwise kernel, computes the
  same function, and its INT8 GELU (an op XNNPACK does not take) is found as not delegated; a
  plain conv net is clean.
* OpenVINO: a depthwise layer NNCF was told to leave in float is found computing in f32 inside
  the INT8 IR; the same IR quantized throughout is clean.
* The typed record round-trips through the strict manifest validator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backend_support import export, hand_made  # noqa: E402

from edgekit.backends import get_backend  # noqa: E402
from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.errors import DataError  # noqa: E402
from edgekit.manifest import FastPath, OffPathOp  # noqa: E402

SIZE = 64
SPEC = PreprocessSpec(input_size=SIZE)


class WideBlock(torch.nn.Module):
    """PruDensNet's separable block in small: conv + GELU, 7×7 depthwise + pointwise + BN +
    GELU (the GELU between two convolutions is quantized: XNNPACK does not take it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU())
        self.depthwise = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8, bias=False)
        self.pointwise = torch.nn.Conv2d(8, 16, 1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.act = torch.nn.GELU()
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.pointwise(self.depthwise(self.stem(x)))))
        return self.fc(y.mean(dim=(2, 3)))


class Plain(torch.nn.Module):
    """Convolutions, ReLU, a 3×3 depthwise, a global mean: all on XNNPACK's/oneDNN's kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = torch.nn.Conv2d(8, 16, 1)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.pointwise(torch.relu(self.depthwise(torch.relu(self.conv(x))))))
        return self.fc(y.mean(dim=(2, 3)))


def _source(module: torch.nn.Module, name: str):
    torch.manual_seed(0)
    return hand_made(module.eval(), name, SPEC)


def _calibration(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((1, 3, SIZE, SIZE), dtype=np.float32) for _ in range(n)]


def _op_names(path: Path) -> list[str]:
    """The builtin op names of a .tflite's main subgraph, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    codes = model.operatorCodes
    return [names.get(max(codes[op.opcodeIndex].builtinCode,
                          codes[op.opcodeIndex].deprecatedBuiltinCode), "?")
            for op in model.subgraphs[0].operators]


def _depthwise_kernels(path: Path) -> list[tuple[int, int]]:
    """(kh, kw) of every DEPTHWISE_CONV_2D in a .tflite, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    sg = model.subgraphs[0]
    out = []
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == \
                fb.BuiltinOperator.DEPTHWISE_CONV_2D:
            shape = list(sg.tensors[op.inputs[1]].shape)
            out.append((shape[1], shape[2]))
    return out


# ----------------------------------------------------------------------------------- LiteRT
@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    out = tmp_path_factory.mktemp("wide")
    source = _source(WideBlock(), "wide")
    return source, {p: export("litert", source, p, out, f"wide-{p}",
                              _calibration() if p == "int8" else None)
                    for p in ("fp32", "int8")}


def test_litert_finds_a_wide_depthwise_kernel(tmp_path: Path) -> None:
    """The graph litert-torch makes of a 7×7 depthwise conv (no edgekit in between) is off the
    fast path, and the report names the op, its node and why."""
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    path = tmp_path / "raw.tflite"
    module = WideBlock().eval()
    path.write_bytes(litert_torch.convert(module, (torch.rand(1, 3, SIZE, SIZE),))
                     .model_content())
    assert (7, 7) in _depthwise_kernels(path)
    found = get_backend("litert").fast_path(path, "fp32")
    assert found.status == "off"
    assert [o.op for o in found.ops] == ["DEPTHWISE_CONV_2D"]
    assert "7×7" in found.ops[0].reason and "25 taps" in found.ops[0].reason
    assert "depthwise" in found.ops[0].node
    assert "DEPTHWISE_CONV_2D" in found.summary()


def test_litert_export_splits_wide_depthwise_into_xnnpack_bands(wide) -> None:
    """edgekit's export has no depthwise kernel over 25 taps, computes the same function in
    fp32, and says so in the notes. fp32: rows 2-4 as a 3×7, rows 1+5 and 0+6 as dilated 2×7s
    (no PAD or SLICE); INT8: bands of rows 0-2, 3-5, 6. Fails without ``xnnpack_fit``."""
    source, artifacts = wide
    for precision, artifact in artifacts.items():
        kernels = _depthwise_kernels(artifact.path)
        assert kernels and all(kh * kw <= 25 for kh, kw in kernels), (precision, kernels)
        ops = _op_names(artifact.path)
        if precision == "int8":
            assert sorted(kernels) == [(1, 7), (3, 7), (3, 7)]
        else:
            assert sorted(kernels) == [(2, 7), (2, 7), (3, 7)]
            assert "PAD" not in ops and "SLICE" not in ops, ops
        form = "row bands" if precision == "int8" else "row sets centred"
        assert any(form in n and "≤ 25 taps" in n for n in artifact.notes), artifact.notes
        assert not any(o.op == "DEPTHWISE_CONV_2D"
                       for o in get_backend("litert").fast_path(artifact.path, precision).ops)
    x = np.stack([c[0] for c in _calibration(4)])
    with torch.no_grad():
        want = source.module(torch.from_numpy(x)).numpy()
    got = get_backend("litert").open(artifacts["fp32"].path).run(x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    int8 = get_backend("litert").open(artifacts["int8"].path).run(x)
    assert np.corrcoef(int8.ravel(), want.ravel())[0, 1] > 0.95


def test_litert_int8_adds_are_int8(wide) -> None:
    """The bands' sums are int8 ADDs, not float islands between DEQUANTIZE and QUANTIZE
    (litert-torch 0.10 does not annotate adds under non-strict export; edgekit does)."""
    from ai_edge_litert.interpreter import Interpreter

    _, artifacts = wide
    interp = Interpreter(model_path=str(artifacts["int8"].path))
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    adds = [op for op in interp._get_ops_details() if op["op_name"] == "ADD"]
    assert len(adds) == 2
    assert all(dtypes[i] == np.int8 for op in adds for i in op["inputs"]), adds


def test_litert_fp32_clean_and_int8_gelu_not_delegated(wide, tmp_path: Path) -> None:
    """A plain conv net is clean; in the INT8 block the GELU, which XNNPACK takes only in
    float, is reported as not delegated (and nothing else is)."""
    _, artifacts = wide
    found = get_backend("litert").fast_path(artifacts["int8"].path, "int8")
    assert found.status == "off" and {o.op for o in found.ops} == {"GELU"}
    assert "not delegated to XNNPACK" in found.ops[0].reason
    plain = export("litert", _source(Plain(), "plain"), "fp32", tmp_path, "plain-fp32")
    clean = get_backend("litert").fast_path(plain.path, "fp32")
    assert clean.status == "clean" and clean.ops == () and "XNNPACK" in clean.checked


def test_xnnpack_fit_is_exact_for_strides_dilations_and_odd_kernels() -> None:
    pytest.importorskip("litert_torch")
    from edgekit.backends.litert import xnnpack_fit

    for kernel, stride, dilation, padding in [(7, 1, 1, 3), (7, 2, 1, 3), (9, 1, 2, 8),
                                              ((7, 5), 2, 1, (3, 2)), (7, 1, 1, "same"),
                                              (7, 1, 2, "valid")]:
        conv = torch.nn.Conv2d(4, 8, kernel, stride=stride, padding=padding, dilation=dilation,
                               groups=4, bias=True).eval()
        net = torch.nn.Sequential(conv)
        for symmetric in (False, True):  # bands (INT8) and centred row sets (float)
            fitted, wide = xnnpack_fit(net, torch, symmetric=symmetric)
            assert wide == ["0"] and fitted is not net and net[0] is conv  # source untouched
            x = torch.randn(1, 4, 29, 31)
            with torch.no_grad():
                torch.testing.assert_close(fitted(x), net(x), atol=1e-5, rtol=1e-5)
    small = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 5, padding=2, groups=4))
    assert xnnpack_fit(small, torch) == (small, [])


# --------------------------------------------------------------------------------- OpenVINO
def test_openvino_finds_float_layers_in_an_int8_ir(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from edgekit.backends.openvino import BACKEND

    source = _source(Plain(), "plain")
    int8 = export(BACKEND, source, "int8", tmp_path / "q", "plain-int8", _calibration())
    clean = BACKEND.fast_path(int8.path, "int8")
    assert clean.status == "clean" and "OpenVINO" in clean.checked
    floated = export(dataclasses.replace(BACKEND, ignored_types=("GroupConvolution",)), source,
                     "int8", tmp_path / "f", "plain-int8", _calibration())
    found = BACKEND.fast_path(floated.path, "int8")
    assert found.status == "off"
    assert [o.op for o in found.ops] == ["Convolution"]
    assert "inside an INT8 model" in found.ops[0].reason and "f32" in found.ops[0].reason


def test_onnxruntime_checks_int8_only(tmp_path: Path) -> None:
    """A float artifact is not checked; an INT8 one lists ORT's unfused QDQ ops (the detector
    itself is tested in test_ort_int8.py)."""
    found = get_backend("onnxruntime").fast_path(tmp_path / "model.onnx", "fp32")
    assert found.status == "unknown" and found.ops == () and "INT8" in found.checked


# --------------------------------------------------------------------------------- manifest
def test_fast_path_record_round_trips_and_is_strict() -> None:
    record = FastPath(status="off", ops=(OffPathOp(op="GELU", node="act", reason="not "
                                                   "delegated"),), checked="test")
    assert FastPath.from_json(record.to_json()) == record
    assert record.to_json() == {"status": "off", "ops": [{"op": "GELU", "node": "act",
                                                          "reason": "not delegated"}],
                                "checked": "test"}
    with pytest.raises(DataError, match="off"):
        FastPath.from_json({"status": "off", "ops": [], "checked": ""})
    with pytest.raises(DataError, match="status"):
        FastPath.from_json({"status": "slow", "ops": [], "checked": ""})
    with pytest.raises(DataError, match="ops\\[0\\].reason: missing"):
        FastPath.from_json({"status": "off", "ops": [{"op": "X", "node": "n"}], "checked": ""})


def test_a_failing_check_records_unknown_and_never_fails_the_bundle(tmp_path: Path) -> None:
    from edgekit.backends import Artifact
    from edgekit.compress import fast_path_of

    class Broken:
        def fast_path(self, path: Path, precision: str) -> FastPath:
            raise RuntimeError("interpreter exploded\nsecond line")

    artifact = Artifact(backend="litert", precision="int8", path=tmp_path / "m.tflite",
                        files=[tmp_path / "m.tflite"], input_name="x", input_shape=[1, 3, 8, 8],
                        input_dtype="float32", output_dtype="float32", layout="NCHW")
    found = fast_path_of(Broken(), "litert-int8", artifact)
    assert found == FastPath(status="unknown", checked="the check failed: interpreter exploded")
