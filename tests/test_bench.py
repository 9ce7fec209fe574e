"""`edgekit bench`: the timing protocol, the runner's bench/logits modes, and whole runs on a
real 3-backend bundle (quick protocol, 64 px, real runtimes in real subprocesses)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_support import run_cli as _cli

from edgekit.bench.protocol import (
    Protocol,
    measure,
    options_from_args,
    protocol_from_args,
    time_session,
)
from edgekit.errors import ConfigError, VerificationFailed

pytest.importorskip("torch", reason="pip install 'edgekit[torch]'")

QUICK = Protocol.quick_protocol()




# --------------------------------------------------------------------------------- protocol
def test_measure_respects_iterations_seconds_and_trials() -> None:
    calls = []
    proto = Protocol(warmup_iters=5, warmup_seconds=0.05, iters=20, min_seconds=0.02, trials=3)
    t0 = time.perf_counter()
    timing = measure(lambda: calls.append(time.sleep(0.0005)), proto)
    assert time.perf_counter() - t0 >= 0.05 + 3 * 0.02
    assert len(timing.trials) == 3 and all(len(t) >= 20 for t in timing.trials)
    assert len(calls) >= 5 + 3 * 20
    s = timing.summary()
    lat = s["latency_ms"]
    assert lat["n"] == sum(len(t) for t in timing.trials)
    assert 0.4 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert s["spread"] == pytest.approx(max(s["trials_p50_ms"]) / min(s["trials_p50_ms"]))


def test_summary_percentiles_are_exact_on_known_samples() -> None:
    from edgekit.bench.protocol import Timing

    timing = Timing([np.arange(1, 101, dtype=np.int64) * 1_000_000,
                     np.arange(1, 101, dtype=np.int64) * 2_000_000])
    s = timing.summary()
    assert s["trials_p50_ms"] == [50.5, 101.0]
    assert s["spread"] == pytest.approx(2.0)
    assert s["latency_ms"]["n"] == 200 and s["latency_ms"]["max"] == 200.0


def test_interleaved_trials_merge_into_one_row() -> None:
    from edgekit.bench.protocol import merge_trials

    def row(v: float, load: float) -> dict:
        lat = {"p50": v, "p90": v + 1, "p99": v + 2, "mean": v, "std": 0.0, "min": v,
               "max": v + 2, "n": 2}
        return {"threads": 2, "latency_ms": lat, "load_ms": load, "peak_rss_mb": 10 * v,
                "runtime": {"name": "x"}, "error": None}

    m = merge_trials([row(1.0, 5.0), row(3.0, 7.0), row(2.0, 9.0)])
    lat = m["latency_ms"]
    assert (lat["p50"], lat["p90"], lat["p99"], lat["n"]) == (2.0, 3.0, 4.0, 6)
    assert lat["mean"] == pytest.approx(2.0) and lat["std"] == pytest.approx((4 / 5) ** 0.5)
    assert (lat["min"], lat["max"]) == (1.0, 5.0)
    assert m["trials_p50_ms"] == [1.0, 3.0, 2.0] and m["spread"] == pytest.approx(3.0)
    assert m["load_ms"] == 7.0 and m["peak_rss_mb"] == 30.0 and m["threads"] == 2


def test_protocol_round_trips_through_its_command_line() -> None:
    import argparse

    from edgekit.bench.protocol import add_protocol_args

    ap = argparse.ArgumentParser()
    add_protocol_args(ap)
    for proto in (Protocol(), QUICK, Protocol(iters=7, min_seconds=0.5, trials=5, pin=(0,))):
        assert protocol_from_args(ap.parse_args(proto.cli_args())) == proto
    with pytest.raises(ValueError, match="iters"):
        Protocol(iters=0)


def test_runtime_options_parse_json_values() -> None:
    assert options_from_args(["A=1", "B=f32", "C=true"]) == {"A": 1, "B": "f32", "C": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        options_from_args(["novalue"])


# ------------------------------------------------------------------ sessions: bind + options
@pytest.mark.parametrize("art", ["onnxruntime-int8", "openvino-int8", "litert-int8"])
def test_bound_call_runs_the_same_inference(bundle: Path, art: str) -> None:
    """The timed call (Session.bind) computes what run() computes, on the same input."""
    from edgekit.runner import Runner

    runner = Runner(bundle, art, threads=1)
    x = np.random.default_rng(0).standard_normal(runner.spec.input_shape(1)).astype(np.float32)
    expected = runner.session.run(x)
    call = runner.session.bind(x)
    call()
    result = time_session(runner.open, x.shape, backend=runner.entry.backend, threads=1,
                          protocol=QUICK)
    assert result["latency_ms"]["n"] >= 20 and result["load_ms"] > 0
    assert result["runtime"]["name"] == runner.entry.backend
    assert result["environment"]["cpu"]["logical_cores"] >= 1
    np.testing.assert_allclose(runner.session.run(x), expected)
    if art.startswith("openvino"):
        assert result["runtime"]["inference_precision"] == "f32"
        assert result["runtime"]["threads"] == 1


def test_runtime_options_reach_the_runtime(bundle: Path) -> None:
    from edgekit.backends import get_backend

    ov_file = bundle / "artifacts/openvino/model-int8.xml"
    session = get_backend("openvino").open(ov_file, 1, options={"PERFORMANCE_HINT": "THROUGHPUT"})
    assert str(session._compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    with pytest.raises(ConfigError, match="litert.*not supported.*FOO"):
        get_backend("litert").open(bundle / "artifacts/litert/model-int8.tflite", 1,
                                   options={"FOO": 1})
    with pytest.raises(ConfigError, match="onnxruntime.*graph_optimization_level"):
        get_backend("onnxruntime").open(bundle / "artifacts/onnxruntime/model-int8.onnx", 1,
                                        options={"graph_optimization_level": "FAST"})


# ------------------------------------------------------------------------------------ runner
def _runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit.runner", *map(str, args)],
                          capture_output=True, text=True, check=False)


def test_runner_bench_prints_one_json_result(bundle: Path) -> None:
    done = _runner(bundle, "--bench", "--artifact", "onnxruntime-int8", "--threads", "1",
                   "--quick")
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)
    assert row["artifact"] == "onnxruntime-int8" and row["threads"] == 1
    assert row["protocol"]["quick"] is True and row["latency_ms"]["p50"] > 0
    assert row["runtime"]["version"]
    # the runner's own peak memory, not this (bigger) test process's, inherited through fork
    import resource

    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 10 < row["peak_rss_mb"] < parent_mb


def test_runner_save_logits_matches_predictions(bundle: Path, mri_phantoms: Path,
                                                tmp_path: Path) -> None:
    from edgekit.runner import Runner

    images = sorted((mri_phantoms / "glioma").iterdir())[:5]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, images)))
    out = tmp_path / "logits.npy"
    done = _runner(bundle, "--artifact", "litert-int8", "--image-list", listing,
                   "--save-logits", out)
    assert done.returncode == 0, done.stderr
    runner = Runner(bundle, "litert-int8")
    expected = np.stack([runner.logits(runner.spec.load(p)[None])[0] for p in images])
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-5)
    # an unreadable image stops the run and is named
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    listing.write_text(f"{images[0]}\n{bad}\n")
    done = _runner(bundle, "--artifact", "litert-int8", "--image-list", listing,
                   "--save-logits", tmp_path / "x.npy")
    assert done.returncode == 1 and "broken.jpg" in done.stderr
    assert not (tmp_path / "x.npy").exists()


def test_runner_usage_errors_exit_2(bundle: Path) -> None:
    assert _runner(bundle).returncode == 2
    assert _runner(bundle, "--save-logits", "x.npy").returncode == 2
    assert _runner(bundle, "--bench", "--option", "nokey").returncode == 2


# ------------------------------------------------------------------------------- whole runs
def test_bench_run_with_data_writes_results_and_report(bundle: Path, fp32_bundle: Path,
                                                       mri_phantoms: Path,
                                                       tmp_path: Path) -> None:
    from edgekit.bench.run import bench
    from edgekit.report import FILES

    data = tmp_path / "eval"
    shutil.copytree(mri_phantoms, data)
    for cls in ("glioma", "meningioma", "notumor", "pituitary"):
        (data / cls / "corrupt.png").write_bytes(b"\x89PNG broken")
    run = bench([bundle, fp32_bundle], data=data, threads=[1], quick=True, out=tmp_path / "runs",
                max_images=1000)
    res = json.loads((run.run_dir / "results.json").read_text())
    assert res["schema"] == "edgekit.bench/1" and res["protocol"]["quick"] is True
    assert run.run_dir.parent == tmp_path / "runs"
    assert all((run.run_dir / f).is_file() for f in FILES)
    ids = [a["id"] for a in res["artifacts"]]
    # both bundles come from one checkpoint: its PyTorch model is timed once
    assert ids == ["model-int8/source", "model-int8/onnxruntime-int8", "model-int8/openvino-int8",
                   "model-int8/litert-int8", "model-fp32/onnxruntime-fp32"]
    assert [r["artifact"] for r in res["rows"]] == ids  # one thread count
    assert all(r["error"] is None and r["latency_ms"]["p50"] > 0 for r in res["rows"])
    assert any(r["runtime"]["name"] == "pytorch" for r in res["rows"])
    assert res["reference"]["artifact"] == "model-int8/source"
    assert res["data"]["n"] == 128
    assert sum("corrupt.png" in s for s in res["data"]["skipped"]) == 4
    for art in res["artifacts"]:
        assert art["accuracy_source"] == "bench" and art["accuracy"]["n"] == res["data"]["n"]
    fp32 = next(a for a in res["artifacts"] if a["id"] == "model-fp32/onnxruntime-fp32")
    assert fp32["accuracy"]["max_abs_logit_diff"] <= 1e-4 and fp32["accuracy"]["passed"]
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report["recommendation"]["artifact"] in ids[1:]
    # a second run never overwrites the first
    again = bench([fp32_bundle], threads=[1], quick=True, out=tmp_path / "runs", source=False)
    assert again.run_dir != run.run_dir and (run.run_dir / "results.json").is_file()
    res2 = json.loads((again.run_dir / "results.json").read_text())
    assert res2["data"] is None and res2["artifacts"][0]["accuracy_source"] == "bundle"
    assert not list((tmp_path / "runs").glob(".*.tmp"))


def test_held_out_split_of_the_source_checkpoint(bundle: Path, trained: Path,
                                                 tmp_path: Path) -> None:
    from edgekit.bench.run import bench
    from edgekit.sources import load_model

    val = load_model(trained).metadata["split"]["val_files"]
    run = bench([bundle], held_out=True, threads=[1], quick=True, out=tmp_path, source=False)
    data = run.results.to_dict()["data"]
    assert data["n"] == len(val) and data["split"].startswith("held-out")
    assert all(a["accuracy"]["n"] == len(val) for a in run.results.to_dict()["artifacts"])
    with pytest.raises(ConfigError, match="source checkpoint"):
        copy = tmp_path / "nosource"
        shutil.copytree(bundle, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["source"]["source"] = str(tmp_path / "gone.pt")
        (copy / "manifest.json").write_text(json.dumps(manifest))
        bench([copy], held_out=True, threads=[1], quick=True, out=tmp_path)


def test_a_failing_runtime_costs_its_rows_not_the_run(fp32_bundle: Path, bundle: Path,
                                                      tmp_path: Path) -> None:
    from edgekit.bench.run import bench

    target = tmp_path / "broken.yaml"
    target.write_text((Path(__file__).parents[1] / "targets" / "x86-local.yaml").read_text()
                      .replace("INFERENCE_PRECISION_HINT: f32", "INFERENCE_PRECISION_HINT: nope"))
    run = bench([bundle], target=target, threads=[1], quick=True, out=tmp_path, source=False)
    rows = {r["artifact"]: r for r in run.results.to_dict()["rows"]}
    assert rows["model-int8/openvino-int8"]["error"]
    assert "INFERENCE_PRECISION_HINT" in rows["model-int8/openvino-int8"]["error"]
    assert rows["model-int8/litert-int8"]["error"] is None
    assert (run.run_dir / "report.html").is_file()


def test_bench_refuses_modified_bundles_and_mixed_classes(bundle: Path, ct_phantoms: Path,
                                                          tmp_path: Path) -> None:
    from edgekit.bench.run import bench
    from edgekit.bundle import read_manifest

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    tflite = copy / "artifacts/litert/model-int8.tflite"
    tflite.write_bytes(tflite.read_bytes()[:-1] + b"\0")
    with pytest.raises(VerificationFailed, match="model-int8.tflite.*sha256"):
        bench([copy], threads=[1], quick=True)
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    manifest = read_manifest(other)
    manifest["class_names"] = ["a", "b", "c", "d"]
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="classes"):
        bench([bundle, other], threads=[1], quick=True)
    assert not (bundle / "bench").exists() or not list((bundle / "bench").glob(".*.tmp"))


def test_bench_cli(bundle: Path, tmp_path: Path) -> None:
    res = _cli("bench", bundle, "--threads", "1", "--quick", "--no-source", "--out", tmp_path,
               "--json")
    report = json.loads(res.stdout)
    assert report["recommendation"]["target"] == "x86-local"
    assert len(report["rows"]) == 3
    res = _cli("bench", bundle, "--threads", "1", "--quick", "--no-source", "--out", tmp_path)
    assert "ship" in res.stdout or "no artifact passes" in res.stdout
    res = _cli("bench", bundle, "--threads", "1", "--quick", "--no-source", "--out", tmp_path,
               "--pin", "0", "--json")
    assert json.loads(res.stdout)["protocol"]["pin"] == [0]
    assert "cannot pin to CPUs [999]" in _cli("bench", bundle, "--quick", "--pin", "999",
                                              code=2).stderr
    assert "--pin" in _cli("bench", bundle, "--pin", "a,b", code=2).stderr
    _cli("bench", code=2)
    assert "Error:" in _cli("bench", bundle, "--target", "nope", code=2).stderr
    # --runtime-option: merged into the target the run records, and handed to the runtime
    # (LiteRT refuses an option it does not know: its rows fail, the others are measured)
    out = tmp_path / "opts"
    _cli("bench", bundle, "--threads", "1", "--quick", "--no-source", "--out", out,
         "--runtime-option", "onnxruntime:session.intra_op.allow_spinning=0",
         "--runtime-option", "litert:FOO=1")
    (results,) = out.glob("*/results.json")
    recorded = json.loads(results.read_text())
    options = recorded["target"]["runtime_options"]
    assert options["onnxruntime"] == {"session.intra_op.allow_spinning": "0"}
    assert options["openvino"]["PERFORMANCE_HINT"] == "LATENCY"  # the target's own are kept
    report = (results.parent / "report.md").read_text()
    assert "onnxruntime: session.intra_op.allow_spinning=0" in report  # the reader sees it
    rows = {r["artifact"]: r for r in recorded["rows"]}
    assert "FOO" in rows["model-int8/litert-int8"]["error"]
    assert rows["model-int8/onnxruntime-int8"]["error"] is None
    for bad in ("onnxruntime-spin=0", "tensorrt:X=1", "openvino:=1"):
        assert "--runtime-option" in _cli("bench", bundle, "--runtime-option", bad,
                                          code=2).stderr
    assert "Error:" in _cli("bench", tmp_path / "missing", code=1).stderr


def test_without_the_source_an_fp32_bundle_of_the_same_source_is_the_reference(
        bundle: Path, fp32_bundle: Path, mri_phantoms: Path, tmp_path: Path) -> None:
    from edgekit.bench.run import bench

    copies = []
    for b in (bundle, fp32_bundle):
        copy = tmp_path / b.name
        shutil.copytree(b, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["source"]["source"] = str(tmp_path / "moved-away.pt")  # same sha256, gone
        (copy / "manifest.json").write_text(json.dumps(manifest))
        copies.append(copy)
    run = bench(copies, data=mri_phantoms, threads=[1], quick=True, out=tmp_path / "runs",
                max_images=24)
    arts = {a["id"]: a for a in run.results.to_dict()["artifacts"]}
    assert not any(a["kind"] == "source" for a in arts.values())
    int8 = arts["model-int8/litert-int8"]
    assert int8["accuracy_source"] == "bench"
    assert int8["reference"] == "model-fp32/onnxruntime-fp32"
    assert run.results.to_dict()["reference"]["artifact"] == "model-fp32/onnxruntime-fp32"


def test_measurements_survive_a_failing_report_and_non_finite_numbers(tmp_path: Path) -> None:
    from edgekit.bench.run import _finite, _write_run

    assert _finite({"a": [1.0, float("inf")], "b": float("nan"), "c": "x"}) == {
        "a": [1.0, None], "b": None, "c": "x"}

    def broken_report(run_dir, results):
        raise RuntimeError("matplotlib exploded")

    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match="results.json is kept"):
        written = _write_run(run_dir, {"spread": float("inf")}, broken_report)
    assert written == {}
    assert json.loads((run_dir / "results.json").read_text()) == {"spread": None}
    assert not list(tmp_path.glob(".*.tmp"))


def test_multilabel_gate_without_any_defined_auroc_fails() -> None:
    from edgekit.evaluate import score
    from edgekit.recipes import load_recipe
    from edgekit.verify import compare

    y = np.ones((6, 2), dtype=np.float32)  # every label always present: AUROC undefined
    logits = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
    names = ("a", "b")
    src = score(y, logits, task="multilabel", class_names=names)
    out = compare(logits, logits + 0.1, y, task="multilabel", class_names=names,
                  precision="int8", recipe=load_recipe("int8"), source_metrics=src).to_json()
    assert not out["passed"] and "undefined" in out["checks"][0]["check"]


def test_public_entry_point_survives_the_subpackage_import() -> None:
    import edgekit.bench.protocol  # noqa: F401  (what the device runner imports)
    from edgekit.bench import bench
    from edgekit.bench.run import bench as run_bench

    assert bench is run_bench and callable(bench)
