"""`edgekit compress` end to end: real conversions, real runtimes, verification, bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import run_cli as _cli

from edgekit.backends import backend_names
from edgekit.backends import onnxruntime as ort_backend
from edgekit.backends import openvino as ov_backend
from edgekit.bundle import read_manifest, verify_bundle
from edgekit.compress import compress
from edgekit.errors import ConfigError, DataError, UnsafeSourceError, VerificationFailed
from edgekit.runner import Runner
from edgekit.sources import load_model
from edgekit.train import TrainConfig, train
from edgekit.zoo import create_model, list_models

SMALL = {"calibration_images": 8, "verification_images": 16}
FAST = "dsconv_cbam_gap"  # 31 k parameters: the zoo model compressed to every backend here


def _zoo_checkpoint(name: str, tmp: Path) -> str:
    """A zoo model with fresh weights saved as ARCH:weights.pt (4 classes, 64 px)."""
    torch.manual_seed(0)
    n = 6 if name == "ich_mrf" else 4
    path = tmp / f"{name}.pt"
    torch.save(create_model(name, num_classes=n, input_size=64).state_dict(), path)
    return f"{name}:{path}"


def _one_backend(name: str) -> list[str]:
    """One backend for a zoo model other than FAST, in rotation over the models, so that with
    FAST (every backend) every model and every backend go through compress. The full model ×
    backend matrix is the backend contract tests' (tests/test_backend_*.py export every zoo
    model with every backend: fp32 within 1e-4 of torch, int8 smaller and sound)."""
    names = backend_names()
    return [names[list_models().index(name) % len(names)]]


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_every_backend_fp32_and_int8(name, mri_phantoms, ct_phantoms, tmp_path):
    """Every zoo model × {fp32, int8} through compress, verified: FAST with the recipes' own
    backends (onnxruntime, openvino, litert), every other model with one (``_one_backend``)."""
    source = _zoo_checkpoint(name, tmp_path)
    data = ct_phantoms if name == "ich_mrf" else mri_phantoms
    backends = None if name == FAST else _one_backend(name)
    results = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        results[precision] = compress(source, input_size=64, data=data, out=out,
                                      recipe=precision, backends=backends,
                                      allow_accuracy_drop=True, **SMALL)
        assert [a.artifact.backend for a in results[precision].artifacts] == (
            backends or ["onnxruntime", "openvino", "litert"])
        verify_bundle(out)
    for a in results["fp32"].artifacts:
        assert a.verification.max_abs_logit_diff <= 1e-4 and a.passed, a.name
    pairs = zip(results["int8"].artifacts, results["fp32"].artifacts,
                results["int8"].manifest.to_json()["artifacts"],
                results["fp32"].manifest.to_json()["artifacts"],
                strict=True)
    for q, f, mq, mf in pairs:
        # weights always shrink; an OpenVINO IR of a tiny model (dsconv_cbam_gap, 31 k
        # parameters) grows overall because the .xml gains ~40 FakeQuantize nodes
        weights = [mq["files"][-1]["bytes"], mf["files"][-1]["bytes"]]
        assert weights[0] < weights[1], f"{q.name} weights are not smaller than {f.name}'s"
        if weights[1] >= 256_000:
            assert q.bytes < f.bytes, f"{q.name} ({q.bytes} B) is not smaller than {f.name}"
        assert np.isfinite(q.verification.max_abs_logit_diff)


def test_multilabel_ct_model(ct_phantoms, tmp_path):
    ckpt = tmp_path / "ct.pt"
    train(TrainConfig(model="ich_mrf", data=str(ct_phantoms), out=str(ckpt), epochs=1,
                      input_size=64, batch_size=8))
    res = compress(ckpt, data=ct_phantoms, out=tmp_path / "b", recipe="int8",
                   backends=["onnxruntime"], allow_accuracy_drop=True, **SMALL)
    m = read_manifest(tmp_path / "b")
    assert m["task"] == "multilabel" and m["preprocess"]["ct_windows"]
    assert m["class_names"][0] == "any"
    v = res.artifacts[0].verification.to_json()
    assert "mean_auroc" in v["metrics"] and v["checks"][0]["check"] == "mean AUROC drop"


def test_trained_model_int8_bundle_manifest_and_cli(trained, mri_phantoms, tmp_path):
    out = tmp_path / "bundle"
    res = _cli("compress", str(trained), "--recipe", "int8", "--data", str(mri_phantoms),
               "--out", str(out), "--calibration-images", "8", "--verification-images", "16",
               "--activation-ranges", "mean", "--allow-accuracy-drop")
    assert "Verification on" in res.stdout and "litert-int8" in res.stdout
    m = read_manifest(out)
    assert m["schema_version"] == 1 and m["recipe"]["name"] == "int8"
    assert m["recipe"]["calibration"]["activation_ranges"] == "mean"
    assert {a["quantization"]["activation_ranges"] for a in m["artifacts"]} == {"mean"}
    assert m["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert m["source"]["sha256"] and m["preprocess"]["input_size"] == [64, 64]
    assert m["data"]["origin"].startswith("held-out split recorded in the checkpoint")
    for a in m["artifacts"]:
        assert a["files"][0]["sha256"] and a["input"]["dtype"] == "float32"
        assert "top1_agreement" in a["verification"] and a["verification"]["checks"]
        # issue 18: every artifact says whether it runs on its runtime's fast path
        assert a["fast_path"]["status"] in ("clean", "off", "unknown")
        assert a["fast_path"]["status"] != "unknown", a["fast_path"]  # int8: every backend
    assert "python -m edgekit.runner" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".bundle.partial-*"))
    _cli("verify", str(out))
    # tampering is detected and named
    art = out / m["artifacts"][0]["files"][0]["path"]
    art.write_bytes(art.read_bytes() + b"\0")
    res = _cli("verify", str(out), code=1)
    assert "sha256 mismatch" in res.stderr and m["artifacts"][0]["files"][0]["path"] in res.stderr


def test_same_seed_same_data_gives_identical_artifacts(trained, mri_phantoms, bundle,
                                                      bundle_options, tmp_path):
    """Compressed again with the session ``bundle``'s settings: the same bytes."""
    compress(trained, data=mri_phantoms, out=tmp_path / "b1", **bundle_options)
    hashes = [{a["name"]: a["files"][0]["sha256"] for a in read_manifest(b)["artifacts"]}
              for b in (bundle, tmp_path / "b1")]
    assert hashes[0] == hashes[1]


def test_a_prepared_call_loads_nothing_again_and_writes_the_same_bundle(
        trained, mri_phantoms, tmp_path, monkeypatch):
    """``CompressResult.prepared`` of an fp32 call serves an int8 call (``edgekit.auto``'s
    path): no folder split, no verification decode, no source run; the same images, bytes and
    verification as the int8 call made from scratch. Another split is refused."""
    import edgekit.compress as module

    common = {"data": mri_phantoms, "verification_images": 24, "shared_split": True,
              "backends": ["onnxruntime"], "allow_accuracy_drop": True}
    first = compress(trained, out=tmp_path / "fp32", recipe="fp32", **common)
    plain = compress(trained, out=tmp_path / "int8", recipe="int8", calibration_images=16,
                     **common)
    seen, loads = [], []
    for name in ("plan_data", "load_model"):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} again"))
    real, real_load = module.reference_outputs, module.load_arrays
    monkeypatch.setattr(module, "reference_outputs",
                        lambda model, x: seen.append(len(x)) or real(model, x))
    monkeypatch.setattr(module, "load_arrays",
                        lambda *a, **k: loads.append(k["description"]) or real_load(*a, **k))
    reused = compress(trained, out=tmp_path / "int8-reused", recipe="int8",
                      calibration_images=16, prepared=first.prepared, **common)
    assert len(first.prepared.x) not in seen  # the source was not run on them again
    assert loads == ["Loading tuning images"]  # the rescue's, once; then kept for later calls
    compress(trained, out=tmp_path / "int8-again", recipe="int8", calibration_images=16,
             prepared=first.prepared, **common)
    assert loads == ["Loading tuning images"]
    a, b = (read_manifest(r.bundle) for r in (plain, reused))
    assert a["data"] == b["data"]  # the same calibration and verification files
    assert [x["files"][0]["sha256"] for x in a["artifacts"]] == \
        [x["files"][0]["sha256"] for x in b["artifacts"]]
    assert plain.artifacts[0].verification.to_json() == reused.artifacts[0].verification.to_json()
    with pytest.raises(ConfigError, match="prepared data was made for"):
        compress(trained, out=tmp_path / "other", recipe="int8",
                 **{**common, "verification_images": 20}, prepared=first.prepared)
    assert not (tmp_path / "other").exists()


def test_gate_violation_exits_1_and_marks_the_bundle(trained, mri_phantoms, tmp_path,
                                                     monkeypatch):
    real_open = type(ort_backend.BACKEND).open

    def noisy_open(self, path, threads=None):
        session = real_open(self, path, threads)

        class Noisy:
            input_shape = session.input_shape

            def run(self, batch):
                out = session.run(batch)
                return out[:, ::-1].copy()  # a broken artifact: classes reversed

        return Noisy()

    monkeypatch.setattr(type(ort_backend.BACKEND), "open", noisy_open)
    out = tmp_path / "bundle"
    res = _cli("compress", str(trained), "--recipe", "fp32", "--backend", "onnxruntime",
               "--data", str(mri_phantoms), "--out", str(out), "--verification-images", "16",
               code=1)
    assert "FAIL" in res.stdout and "failed the 'fp32' recipe's accuracy gate" in res.stderr
    assert read_manifest(out)["status"] == "failed-gate"
    with pytest.raises(VerificationFailed):
        compress(trained, data=mri_phantoms, out=tmp_path / "b2", recipe="fp32",
                 backends=["onnxruntime"], verification_images=16)
    ok = compress(trained, data=mri_phantoms, out=tmp_path / "b3", recipe="fp32",
                  backends=["onnxruntime"], verification_images=16, allow_accuracy_drop=True)
    assert not ok.passed


def test_interrupt_leaves_nothing_behind(trained, mri_phantoms, tmp_path, monkeypatch):
    def interrupted(self, request):
        (request.out_dir / "half-written.xml").write_text("<net")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(ov_backend.BACKEND), "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compress(trained, data=mri_phantoms, out=tmp_path / "bundle", recipe="fp32", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(trained, mri_copy, tmp_path):
    with pytest.raises(DataError, match="Data folder not found"):
        compress(trained, data=tmp_path / "missing", out=tmp_path / "b", recipe="fp32")
    (mri_copy / "pituitary").rename(mri_copy / "astrocytoma")
    with pytest.raises(DataError, match="missing: pituitary; unexpected: astrocytoma"):
        compress(trained, data=mri_copy, out=tmp_path / "b", recipe="fp32")
    (mri_copy / "astrocytoma").rename(mri_copy / "pituitary")
    bad = mri_copy / "glioma" / "zz_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match="zz_corrupt.jpg: not a readable image"):
        compress(trained, data=mri_copy, out=tmp_path / "b", recipe="int8",
                 calibration_images=1000, on_error="fail")
    with pytest.warns(UserWarning, match="zz_corrupt.jpg: not a readable image"):
        res = compress(trained, data=mri_copy, out=tmp_path / "ok", recipe="int8",
                       backends=["onnxruntime"], calibration_images=1000,
                       verification_images=8, allow_accuracy_drop=True)
    assert any("zz_corrupt.jpg" in p for p in res.data["skipped_files"])
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("name: mine\nprecision: int8\nbackends: [onnxruntime]\n"
                      "calibration:\n  images: 8\n  methd: minmax\n")
    res = _cli("compress", str(trained), "--recipe", str(recipe), "--data", str(mri_copy),
               "--out", str(tmp_path / "b"), code=2)
    assert "calibration.methd: unknown key" in res.stderr and str(recipe) in res.stderr
    evil = tmp_path / "evil.pt"
    torch.save(torch.nn.Linear(2, 2), evil)
    with pytest.raises(UnsafeSourceError, match="refusing to load"):
        compress(f"dsconv_cbam_gap:{evil}", data=mri_copy, out=tmp_path / "b", recipe="fp32")
    assert not (tmp_path / "b").exists()


def test_onnx_source(trained, mri_phantoms, tmp_path):
    module = load_model(trained).module
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(module, (torch.rand(1, 3, 64, 64),), str(onnx_path), dynamo=True,
                      opset_version=18, external_data=False)
    res = compress(onnx_path, data=mri_phantoms, out=tmp_path / "b", recipe="int8",
                   allow_accuracy_drop=True, **SMALL)  # every backend, litert included
    assert [a.name for a in res.artifacts] == ["onnxruntime-int8", "openvino-int8",
                                               "litert-int8"]
    assert res.manifest.to_json()["class_names"] == ["glioma", "meningioma", "notumor", "pituitary"]
    fp32 = compress(onnx_path, data=mri_phantoms, out=tmp_path / "f", recipe="fp32",
                    backends=["onnxruntime", "openvino"], **SMALL)
    assert fp32.passed


def test_pt2_source(trained, mri_phantoms, tmp_path):
    module = load_model(trained).module
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (torch.rand(1, 3, 64, 64),)), str(path))
    res = compress(path, data=mri_phantoms, out=tmp_path / "b", recipe="fp32", **SMALL)
    assert res.passed and len(res.artifacts) == 3


def test_runner_works_without_torch(bundle, mri_phantoms, tmp_path):
    out = bundle  # the session's int8 bundle of ``trained`` (read-only)
    images = sorted((mri_phantoms / "meningioma").glob("*.jpg"))[:2]
    code = ("import sys; sys.modules['torch'] = None; "
            "from edgekit.runner import main; sys.exit(main(sys.argv[1:]))")
    for artifact in ("onnxruntime-int8", "openvino-int8", "litert-int8"):
        proc = subprocess.run([sys.executable, "-c", code, str(out), *map(str, images),
                               "--artifact", artifact, "--json"], capture_output=True,
                              text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(rows) == 2 and rows[0]["prediction"] in read_manifest(out)["class_names"]
        assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-5
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "nope.jpg")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "nope.jpg: file not found" in proc.stderr


def test_runner_matches_verification(trained, mri_phantoms, fp32_bundle):
    runner = Runner(fp32_bundle)  # the session's fp32 onnxruntime bundle of ``trained``
    loaded = load_model(trained)
    img = sorted((mri_phantoms / "glioma").glob("*.jpg"))[0]
    x = loaded.spec.load(img)[None]
    with torch.inference_mode():
        ref = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.logits(x), ref, atol=1e-4)
    assert runner.predict_one(img)["prediction"] == loaded.class_names[int(ref.argmax())]


def test_torchscript_source(trained, mri_phantoms, tmp_path):
    module = load_model(trained).module
    path = tmp_path / "model.ts"
    torch.jit.trace(module, torch.rand(1, 3, 64, 64)).save(str(path))
    res = compress(path, input_size=64, data=mri_phantoms, out=tmp_path / "b", recipe="fp32",
                   backends=["onnxruntime", "openvino"], **SMALL)
    assert res.passed and res.manifest.source.kind == "torchscript"
