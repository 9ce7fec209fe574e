"""Pruning recipes through compress, verify and bench: real exports, tiny inputs (64 px)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch_pruning", reason="pruning needs torch-pruning (edgekit[compress])")


@pytest.fixture(scope="module")
def pruned_bundle(trained: Path, mri_phantoms: Path, tmp_path_factory: pytest.TempPathFactory):
    """prune30 (fp32) of the tiny trained checkpoint to all three backends, 1 recovery epoch."""
    from edgekit.compress import compress
    from edgekit.prune import pruning_recipe

    recipe = pruning_recipe("prune30", **{"pruning.recovery.epochs": 1,
                                          "pruning.importance": "l2"})
    out = tmp_path_factory.mktemp("pruned") / "bundle"
    result = compress(trained, data=mri_phantoms, out=out, recipe=recipe,
                      verification_images=40, allow_accuracy_drop=True)
    return result


def test_pruned_bundle_records_the_pruning(pruned_bundle) -> None:
    m = pruned_bundle.manifest.to_json()
    p = m["pruning"]
    assert p["macs_after"] <= 0.7 * p["macs_before"]
    assert p["params_after"] < p["params_before"]
    assert p["widths_after"] and all(w % 8 == 0 for w in p["widths_after"].values())
    assert set(p["widths_after"]) <= set(p["widths_before"])
    assert p["recovery"] and p["recovery"][0]["metric"] == "accuracy"
    assert p["recovery_images"]["train"] > 0 and p["recovery_images"]["validation"] > 0
    # the pruned PyTorch model is scored against the unpruned one with the recipe's gate
    names = [c["check"] for c in p["verification"]["checks"]]
    assert "top-1 accuracy drop (points)" in names
    entry = p["checkpoint"]
    assert entry["path"] == "source/pruned.pt"
    assert entry in m["files"]
    assert "Structured pruning kept" in (pruned_bundle.bundle / "README.md").read_text()


def test_a_pruned_model_reuses_its_reference_only_on_the_same_images(
        pruned_bundle, trained: Path, mri_phantoms: Path, tmp_path: Path) -> None:
    """``PrunedModel.reference`` (the pruned model's outputs on the verification images) is
    reused by a later call only for the same prepared data (its ``reference_key``): planted
    zeros are reused, and fail the fp32 parity check, under the same key; under another key
    (other images of the same count) the outputs are computed again and the artifact passes."""
    import dataclasses

    from edgekit.compress import compress
    from edgekit.prune import pruning_recipe

    pruned = pruned_bundle.pruned
    assert pruned.reference_key == pruned_bundle.prepared.key
    planted = np.zeros_like(pruned.reference)
    common = {"data": mri_phantoms, "recipe": pruning_recipe("prune30"),
              "backends": ["onnxruntime"], "verification_images": 40,
              "allow_accuracy_drop": True}  # pruned is given: nothing is pruned again

    def parity(key: tuple, out: str) -> str:
        reuse = dataclasses.replace(pruned, reference=planted, reference_key=key)
        result = compress(trained, out=tmp_path / out, pruned=reuse,
                          prepared=pruned_bundle.prepared, **common)
        check = next(c for c in result.artifacts[0].verification.checks
                     if c.check.startswith("max |logit diff|"))
        return check.decision

    assert parity(pruned.reference_key, "same") == "fail"  # the planted outputs were used
    assert parity(("other images",), "other") == "pass"


def test_pruned_checkpoint_reloads_and_matches_the_fp32_artifacts(pruned_bundle,
                                                                   mri_phantoms: Path) -> None:
    from edgekit.backends import require_backend
    from edgekit.inspect import summarize
    from edgekit.sources import load_model, reference_outputs

    bundle = pruned_bundle.bundle
    pruned = load_model(bundle / "source" / "pruned.pt")
    assert summarize(pruned).macs == pruned_bundle.manifest.pruning["macs_after"]
    x = np.stack([pruned.spec.load(p) for p in sorted(mri_phantoms.rglob("*.jpg"))[:6]])
    ref = reference_outputs(pruned, x)
    assert {a.name for a in pruned_bundle.artifacts} == {
        "onnxruntime-fp32", "openvino-fp32", "litert-fp32"}
    for a in pruned_bundle.artifacts:
        v = a.verification.to_json()
        parity = [c for c in v["checks"] if c["check"] == "max |logit diff| vs the pruned model"]
        assert parity and parity[0]["passed"], a.name
        assert v["max_abs_logit_diff_vs_pruned"] <= 1e-4
        # fp32 artifacts of a pruned model are gated against the UNPRUNED source
        assert any(c["check"] == "top-1 accuracy drop (points)" for c in v["checks"])
        out = require_backend(a.artifact.backend).open(a.artifact.path).run(x)
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_verify_catches_a_tampered_pruned_checkpoint(pruned_bundle, tmp_path: Path) -> None:
    from edgekit.bundle import verify_bundle

    assert all(r["hashes"] == "ok" for r in verify_bundle(pruned_bundle.bundle, load=False))
    copy = tmp_path / "copy"
    shutil.copytree(pruned_bundle.bundle, copy)
    with open(copy / "source" / "pruned.pt", "ab") as f:
        f.write(b"\0")
    from edgekit.errors import VerificationFailed

    with pytest.raises(VerificationFailed, match="source/pruned.pt: sha256 mismatch"):
        verify_bundle(copy, load=False)


def test_bench_gates_pruned_fp32_artifacts_against_the_unpruned_source(
        pruned_bundle, mri_phantoms: Path, tmp_path: Path) -> None:
    from edgekit.bench import bench

    run = bench([pruned_bundle.bundle], data=mri_phantoms, threads=[1], quick=True,
                out=tmp_path / "runs", source=False, max_images=24)
    results = json.loads((run.run_dir / "results.json").read_text())
    arts = [a for a in results["artifacts"] if a["kind"] == "artifact"]
    assert arts
    for a in arts:
        checks = [c["check"] for c in a["accuracy"]["checks"]]
        assert "top-1 accuracy drop (points)" in checks
        assert not any(c.startswith("max |logit diff|") for c in checks)  # no parity vs unpruned


def test_prune_targets_need_a_prune_recipe(trained: Path, mri_phantoms: Path,
                                           tmp_path: Path) -> None:
    from edgekit.compress import compress
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="does not; use prune30"):
        compress(trained, data=mri_phantoms, out=tmp_path / "b", recipe="int8", target_macs=0.5)
    with pytest.raises(ConfigError, match="not both"):
        compress(trained, data=mri_phantoms, out=tmp_path / "b", recipe="prune30",
                 target_macs=0.5, target_latency_ms=3.0)
    assert not (tmp_path / "b").exists()


def test_onnx_sources_cannot_be_pruned(pruned_bundle, mri_phantoms: Path,
                                       tmp_path: Path) -> None:
    from edgekit.compress import compress
    from edgekit.errors import ConfigError

    onnx = next(a.artifact.path for a in pruned_bundle.artifacts if a.name == "onnxruntime-fp32")
    with pytest.raises(ConfigError, match="structured pruning needs a PyTorch model"):
        compress(onnx, data=mri_phantoms, out=tmp_path / "b", recipe="prune30",
                 backends=["onnxruntime"], verification_images=8)
    assert not (tmp_path / "b").exists()


def test_compare_gates_fp32_of_a_pruned_recipe() -> None:
    from edgekit.recipes import load_recipe
    from edgekit.verify import compare

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    ref = np.eye(4)[y] * 5 + rng.normal(0, 0.1, (100, 4))
    worse = ref.copy()
    worse[:10] = np.roll(worse[:10], 1, axis=1)  # 10 of 100 now wrong: a 10-point drop
    names = ("a", "b", "c", "d")
    from edgekit.evaluate import score

    sm = score(y, ref, task="multiclass", class_names=names, seed=0)
    plain = compare(ref, worse, y, task="multiclass", class_names=names, precision="fp32",
                    recipe=load_recipe("fp32"), source_metrics=sm).to_json()
    assert not plain["passed"]  # fp32 parity fails, accuracy is not gated
    assert all(c["passed"] for c in plain["checks"] if "drop" in c["check"])
    pruned = compare(ref, worse, y, task="multiclass", class_names=names, precision="fp32",
                     recipe=load_recipe("prune30"), source_metrics=sm, parity_ref=worse).to_json()
    drop = next(c for c in pruned["checks"] if c["check"] == "top-1 accuracy drop (points)")
    assert drop["value"] == pytest.approx(10.0) and not drop["passed"]
    parity = next(c for c in pruned["checks"] if c["check"].startswith("max |logit diff|"))
    assert parity["passed"]  # the artifact reproduces the pruned model exactly


# --- --target-latency-ms ------------------------------------------------------------------------
class _ScriptedTimer:
    """Stands in for LocalExecutor.time_file: the given p50s, one per candidate, in order."""

    def __init__(self, p50s: list[float]) -> None:
        self.p50s = list(p50s)
        self.calls: list[tuple[str, list[int], int | None]] = []

    def time_file(self, path, backend, shape, threads, protocol, options=None):
        assert Path(path).is_file()  # a real exported candidate
        self.calls.append((backend, list(shape), threads))
        return {"latency_ms": {"p50": self.p50s.pop(0)}}


def test_latency_search_stops_at_the_first_fast_enough_candidate(trained: Path) -> None:
    from edgekit.prune import latency_search
    from edgekit.recipes import load_recipe
    from edgekit.sources import load_model
    from edgekit.targets import load_target

    loaded = load_model(trained)
    timer = _ScriptedTimer([10.0, 8.0, 6.0, 4.0, 1.0])
    frac, rows = latency_search(loaded, load_recipe("prune30").pruning, 5.0,
                                load_target("x86-local"), threads=1, executor=timer)
    assert frac == 0.7 and [r["p50_ms"] for r in rows] == [10.0, 8.0, 6.0, 4.0]
    fractions = [r["macs_fraction"] for r in rows]
    assert fractions[0] == 1.0 and fractions == sorted(fractions, reverse=True)
    assert fractions[-1] <= 0.7
    assert all(c == ("openvino", [1, 3, 64, 64], 1) for c in timer.calls)  # x86-local: OV fp32


def test_latency_target_errors(trained: Path) -> None:
    from edgekit.bench.protocol import Protocol
    from edgekit.errors import ConfigError
    from edgekit.prune import for_latency, latency_search
    from edgekit.recipes import load_recipe
    from edgekit.sources import load_model
    from edgekit.targets import load_target

    loaded, rec = load_model(trained), load_recipe("prune30")
    # measured for real (OpenVINO, quick protocol): 1 ns is out of reach, the error lists steps
    with pytest.raises(ConfigError, match=r"not reachable.*measured: 100% → [\d.]+ ms, \d+% → "):
        latency_search(loaded, rec.pruning, 1e-6, load_target("x86-local"), threads=1,
                       protocol=Protocol.quick_protocol(), fractions=(0.5,))
    with pytest.raises(ConfigError, match="nothing to prune"):
        for_latency(loaded, rec, 1e6, "x86-local", threads=1)
    with pytest.raises(ConfigError, match="only local targets can be measured"):
        for_latency(loaded, rec, 5.0, "rpi4")
