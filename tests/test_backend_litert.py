"""LiteRT backend: real litert-torch conversions, run by the real LiteRT interpreter, at 64 px.

Exports are cached per module (one fp32 and one int8 conversion per zoo model), so the tests
share them. litert-torch conversions take 4-15 s (fp32) and 9-30 s (int8) each on 2 cores, so
the int8 matrix beyond ``dsconv_cbam_gap`` and the extra calibration settings are marked slow;
``-m "not slow"`` keeps every fp32 model, one int8 model, int8 I/O, fp16, determinism, the
error cases and the torch-free runtime check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.backends import get_backend  # noqa: E402
from edgekit.backends.base import ExportRequest, QuantOptions, Session  # noqa: E402
from edgekit.backends.litert import BACKEND, pt2e_quantize  # noqa: E402
from edgekit.data import phantoms  # noqa: E402
from edgekit.errors import ConfigError, DataError, ExportError  # noqa: E402
from edgekit.sources import OnnxSource, Source, TorchSource, load_model  # noqa: E402
from edgekit.zoo import list_models, model_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
FAST = "dsconv_cbam_gap"  # the quickest zoo model: the int8 cases that run by default use it


def phantom_inputs(loaded: Source, indices: range) -> list[np.ndarray]:
    """Preprocessed SYNTHETIC images the model's own spec makes: (1, C, H, W) float32 each."""
    from PIL import Image

    spec, out = loaded.spec, []
    for i in indices:
        if model_config(loaded.name).modality == "ct":
            hu = phantoms.render_ct(phantoms.ct_labels_for(7, i), phantoms.ct_rng(7, i), SIZE)
            out.append(spec.from_hu(hu))
        else:
            cls = phantoms.MRI_CLASSES[i % len(phantoms.MRI_CLASSES)]
            img = phantoms.render_mri(cls, phantoms.mri_rng(7, cls, i), SIZE)
            out.append(spec.from_pil(Image.fromarray(img)))
    return [x[None] for x in out]


class Store:
    """One model per zoo name and one export per (name, precision, int8_io), made on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, tuple[Source, list[np.ndarray], np.ndarray]] = {}
        self.artifacts: dict[tuple[str, str, bool], object] = {}

    def model(self, name: str) -> tuple[Source, list[np.ndarray], np.ndarray]:
        if name not in self.models:
            torch.manual_seed(0)
            loaded = load_model(name, input_size=SIZE)
            calibration = phantom_inputs(loaded, range(8))
            held_out = np.concatenate(phantom_inputs(loaded, range(100, 108)))
            self.models[name] = (loaded, calibration, held_out)
        return self.models[name]

    def export(self, name: str, precision: str, int8_io: bool = False, out: Path | None = None):
        key = (name, precision, int8_io)
        if out is None and key in self.artifacts:
            return self.artifacts[key]
        loaded, calibration, _ = self.model(name)
        artifact = BACKEND.export(ExportRequest(
            model=loaded, precision=precision, out_dir=out or self.root / name,
            stem=f"model-{precision}{'-io' if int8_io else ''}",
            calibration=calibration if precision == "int8" else None,
            options=QuantOptions(int8_io=int8_io)))
        if out is None:
            self.artifacts[key] = artifact
        return artifact


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return Store(tmp_path_factory.mktemp("litert"))


def torch_logits(loaded: Source, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return loaded.module(torch.from_numpy(x)).numpy()


def centred_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the input-dependent part of two logit batches (N, K).

    Each class's mean over the batch is removed first, so constant offsets (biases) cannot
    make two unrelated outputs look alike.
    """
    a, b = a - a.mean(0), b - b.mean(0)
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------- plugin basics
def test_registered_and_available() -> None:
    backend = get_backend("litert")
    assert backend is BACKEND
    assert (backend.name, backend.extra, backend.suffix) == ("litert", "litert", ".tflite")
    assert backend.precisions == ("fp32", "fp16", "int8")
    assert backend.sources == ("torch", "keras")
    assert backend.available() is None


# ----------------------------------------------------------------------------- every zoo model
@pytest.mark.parametrize("name", list_models())
def test_fp32_matches_torch(store: Store, name: str) -> None:
    loaded, _, held_out = store.model(name)
    artifact = store.export(name, "fp32")
    channels = loaded.spec.channels
    assert artifact.path == store.root / name / "model-fp32.tflite" and artifact.path.is_file()
    assert artifact.files == [artifact.path]
    assert (artifact.backend, artifact.precision, artifact.layout) == ("litert", "fp32", "NCHW")
    assert artifact.input_shape == [1, channels, SIZE, SIZE]
    assert (artifact.input_dtype, artifact.output_dtype) == ("float32", "float32")
    assert artifact.input_name and artifact.notes

    session = BACKEND.open(artifact.path, threads=2)
    assert isinstance(session, Session)
    assert session.input_shape == [1, channels, SIZE, SIZE]
    x = np.random.default_rng(1).random((3, channels, SIZE, SIZE), dtype=np.float32)
    x = np.concatenate([x, held_out[:2]])
    got = session.run(x)
    want = torch_logits(loaded, x)
    assert got.dtype == np.float32 and got.shape == (5, loaded.num_classes)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("name", [n if n == FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models()])
def test_int8_smaller_and_faithful(store: Store, name: str) -> None:
    loaded, calibration, held_out = store.model(name)
    fp32 = store.export(name, "fp32")
    int8 = store.export(name, "int8")
    assert (int8.precision, int8.input_dtype, int8.output_dtype) == ("int8", "float32", "float32")
    assert int8.quantization["calibration_images"] == len(calibration)
    assert int8.quantization["method"] == "minmax"
    assert any("Cortex-A72" in n for n in int8.notes)
    assert int8.path.stat().st_size < 0.75 * fp32.path.stat().st_size

    got = BACKEND.open(int8.path).run(held_out)
    assert got.shape == (len(held_out), loaded.num_classes) and np.isfinite(got).all()
    # 1. The .tflite computes what PT2E's quantize/dequantize graph computes in torch: the
    #    conversion is faithful (independent of how quantization-friendly untrained weights are).
    sample = (torch.from_numpy(calibration[0]),)
    reference, _, _ = pt2e_quantize(loaded.module, sample, calibration)
    with torch.no_grad():
        simulated = np.concatenate([reference(torch.from_numpy(x[None])).numpy()
                                    for x in held_out])
    assert centred_correlation(got, simulated) >= 0.9
    # 2. And it still tracks the float model: per-image logit vectors point the same way.
    want = torch_logits(loaded, held_out)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.mean() >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize(("method", "per_channel"), [("percentile", True), ("minmax", False)])
def test_int8_other_calibration_settings(store: Store, tmp_path: Path, method: str,
                                         per_channel: bool) -> None:
    loaded, calibration, held_out = store.model(FAST)
    artifact = BACKEND.export(ExportRequest(
        loaded, "int8", tmp_path, "model-int8", calibration=calibration,
        options=QuantOptions(method=method, per_channel=per_channel)))
    assert artifact.quantization["method"] == method
    assert ("per-channel" if per_channel else "per-tensor") in artifact.quantization["scheme"]
    if method == "percentile":
        assert any("HistogramObserver" in n for n in artifact.notes)
    got = BACKEND.open(artifact.path).run(held_out)
    want = torch_logits(loaded, held_out)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.mean() >= 0.95


# ----------------------------------------------------------------------------- int8 I/O, fp16
def test_int8_io(store: Store, tmp_path: Path) -> None:
    _, _, held_out = store.model(FAST)
    floating = store.export(FAST, "int8")
    integer = store.export(FAST, "int8", int8_io=True)
    assert (integer.input_dtype, integer.output_dtype) == ("int8", "int8")
    q_in, q_out = integer.quantization["input"], integer.quantization["output"]
    for q in (q_in, q_out):
        assert q["dtype"] == "int8" and q["scale"] > 0 and -128 <= q["zero_point"] <= 127
    # inputs are [0, 1] images: the input range must cover them
    assert q_in["scale"] * (127 - q_in["zero_point"]) >= 0.99

    from ai_edge_litert.interpreter import Interpreter

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
    from edgekit.backends.litert import _set_io_types

    stripped = tmp_path / "stripped.tflite"
    stripped.write_bytes(_set_io_types(floating.path.read_bytes(), integer=True))
    session = BACKEND.open(stripped)
    assert (session.input_dtype, session.output_dtype) == (np.int8, np.int8)
    np.testing.assert_array_equal(session.run(held_out), got)
    with pytest.raises(ExportError, match="runs in float"):
        _set_io_types(store.export(FAST, "fp32").path.read_bytes(), integer=True)


def test_fp16_half_size_and_close(store: Store) -> None:
    name = "prudensnet"  # 5.5 MB of fp32 weights: the size ratio is not blurred by overhead
    _, _, held_out = store.model(name)
    fp32 = store.export(name, "fp32")
    fp16 = store.export(name, "fp16")
    assert (fp16.precision, fp16.input_dtype, fp16.output_dtype) == ("fp16", "float32", "float32")
    ratio = fp16.path.stat().st_size / fp32.path.stat().st_size
    assert 0.4 < ratio < 0.55

    from ai_edge_litert.interpreter import Interpreter

    dtypes = {d["dtype"] for d in Interpreter(model_path=str(fp16.path)).get_tensor_details()}
    assert np.float16 in dtypes
    want = BACKEND.open(fp32.path).run(held_out)
    got = BACKEND.open(fp16.path).run(held_out)
    assert np.abs(got - want).max() <= 1e-2 * max(1.0, float(np.abs(want).max()))
    assert centred_correlation(got, want) > 0.999


# ----------------------------------------------------------------------------- determinism
def test_reexport_is_byte_identical(store: Store, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    first = [store.export(FAST, "fp32"), store.export(FAST, "int8")]
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.delenv("LITERT_TORCH_SHOW_PROGRESS", raising=False)
    capfd.readouterr()
    again = [store.export(FAST, "fp32", out=tmp_path), store.export(FAST, "int8", out=tmp_path)]
    for a, b in zip(first, again, strict=True):
        assert a.path != b.path
        assert a.path.read_bytes() == b.path.read_bytes(), f"{a.precision} differs on re-export"
    # quiet, and the environment is restored
    assert capfd.readouterr().out == ""
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    assert "LITERT_TORCH_SHOW_PROGRESS" not in os.environ


# ----------------------------------------------------------------------------- clear errors
def _tiny(module: object, kind: str = "torch") -> Source:
    loaded = load_model(FAST, input_size=SIZE)
    common = {"name": "tiny", "task": "multiclass", "class_names": ("a", "b"),
              "spec": loaded.spec, "source": "tiny.pt"}
    if kind == "onnx":
        return OnnxSource(path=Path("tiny.onnx"), **common)
    return TorchSource(module=module, **common)


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    nn = torch.nn
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2)).eval()
    with pytest.raises(ExportError) as info:
        BACKEND.export(ExportRequest(_tiny(module), "fp32", tmp_path, "model-fp32"))
    message = str(info.value)
    assert "litert" in message and "aten.adaptive_max_pool2d" in message
    assert not list(tmp_path.glob("*.tflite"))


def test_onnx_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        BACKEND.export(ExportRequest(_tiny(None, kind="onnx"), "fp32", tmp_path, "model-fp32"))
    message = str(info.value)
    for word in ("litert", "ONNX", "litert-torch", "onnxruntime", "openvino", "onnx2tf"):
        assert word in message


@pytest.mark.parametrize(("precision", "calibration", "options", "words"), [
    ("int8", None, QuantOptions(), ("calibration",)),
    ("int8", [], QuantOptions(), ("calibration",)),
    ("int8", "ok", QuantOptions(method="entropy"), ("'entropy'", "litert", "minmax")),
    ("fp32", None, QuantOptions(int8_io=True), ("int8_io",)),
    ("int4", None, QuantOptions(), ("int4", "fp32, fp16, int8")),
])
def test_bad_requests_are_config_errors(tmp_path: Path, precision: str, calibration: object,
                                        options: QuantOptions, words: tuple[str, ...]) -> None:
    loaded = load_model(FAST, input_size=SIZE)
    if calibration == "ok":
        calibration = [np.zeros((1, 3, SIZE, SIZE), np.float32)]
    with pytest.raises(ConfigError) as info:
        BACKEND.export(ExportRequest(loaded, precision, tmp_path, "m", calibration=calibration,
                                     options=options))
    for word in words:
        assert word in str(info.value)


def test_session_rejects_wrong_shape(store: Store) -> None:
    session = BACKEND.open(store.export(FAST, "fp32").path)
    with pytest.raises(DataError, match="expected a batch of shape"):
        session.run(np.zeros((1, 3, 32, 32), np.float32))


# ----------------------------------------------------------------------------- device side
def test_runtime_never_imports_torch(store: Store, tmp_path: Path) -> None:
    """open/run in a fresh interpreter where torch, torchao and litert_torch cannot import."""
    _, _, held_out = store.model(FAST)
    paths = [store.export(FAST, "fp32").path, store.export(FAST, "int8", int8_io=True).path]
    np.save(tmp_path / "x.npy", held_out)
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "torchao", "litert_torch", "tensorflow"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import numpy as np
        from edgekit.backends import get_backend
        backend = get_backend("litert")
        assert backend.available() is None
        x = np.load({str(tmp_path / 'x.npy')!r})
        for i, path in enumerate({[str(p) for p in paths]!r}):
            np.save({str(tmp_path)!r} + f"/y{{i}}.npy", backend.open(path, threads=1).run(x))
        assert sys.modules["torch"] is None
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    for i, path in enumerate(paths):
        np.testing.assert_array_equal(np.load(tmp_path / f"y{i}.npy"),
                                      BACKEND.open(path, threads=1).run(held_out))
