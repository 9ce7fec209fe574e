"""edgekit.report: recommendation rule and flags, Pareto front, report files, CLI."""

from __future__ import annotations

import copy
import csv
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import report
from edgekit.cli import main
from edgekit.errors import ConfigError

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
LABELS = ("hemorrhage", "epidural", "subdural")
BACKENDS = ("onnxruntime", "openvino", "litert")
SHORT = {"onnxruntime": "ort", "openvino": "ov", "litert": "litert"}
# p50 (ms) per (backend, precision, threads); the fastest overall is openvino int8 x2
P50 = {("onnxruntime", "fp32", 1): 8.0, ("onnxruntime", "fp32", 2): 4.4,
       ("onnxruntime", "int8", 1): 3.0, ("onnxruntime", "int8", 2): 1.7,
       ("openvino", "fp32", 1): 6.0, ("openvino", "fp32", 2): 3.3,
       ("openvino", "int8", 1): 2.2, ("openvino", "int8", 2): 1.2,
       ("litert", "fp32", 1): 9.0, ("litert", "fp32", 2): 5.0,
       ("litert", "int8", 1): 4.0, ("litert", "int8", 2): 2.3,
       ("pytorch", "fp32", 1): 20.0, ("pytorch", "fp32", 2): 11.0}


# ------------------------------------------------------------------------------ test helpers
def _logits(task: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if task == "multilabel":
        y = (rng.random((n, len(LABELS))) < 0.4).astype(int)
        return y, rng.normal(size=y.shape) + 2.0 * y
    y = rng.integers(0, len(CLASSES), n)
    ref = rng.normal(size=(n, len(CLASSES)))
    ref[np.arange(n), y] += 2.5
    return y, ref


@lru_cache(maxsize=64)
def _accuracy(task: str, n: int, precision: str, quality: str, flips: int = 0) -> str:
    """A real verify.compare() dict (as JSON text, cached): ``quality`` good | bad | source;
    ``flips`` good answers turned wrong (one per class, so the gate still passes)."""
    from edgekit.evaluate import score
    from edgekit.recipes import load_recipe
    from edgekit.verify import compare

    names = LABELS if task == "multilabel" else CLASSES
    y, ref = _logits(task, n)
    src = score(y, ref, task=task, class_names=names, seed=0)
    out = ref + (1e-6 if precision == "fp32" else 0.01)
    if quality == "bad":  # wrong answers on ~8 % of the images
        out = out.copy()
        if task == "multilabel":
            out[: n // 3] = -out[: n // 3]
        else:
            idx = np.arange(0, n, 12)
            out[idx, (y[idx] + 1) % len(names)] += 10.0
    if quality == "source":
        out = ref
    if flips and task != "multilabel":
        out = out.copy()
        for c in range(flips):
            i = int(np.flatnonzero((y == c) & (ref.argmax(1) == c))[0])
            out[i, (c + 1) % len(names)] += 10.0
    acc = compare(ref, out, y, task=task, class_names=names, precision=precision,
                  recipe=load_recipe("int8"), source_metrics=src, seed=0)
    return json.dumps(acc.to_json())


def _artifact(bundle: str, name: str, backend: str, precision: str, kind: str, quality: str,
              task: str, n: int, accuracy_source: str, with_accuracy: bool) -> dict[str, Any]:
    flips = {"onnxruntime": 1, "litert": 2}.get(backend, 0) if precision == "int8" else 0
    acc = json.loads(_accuracy(task, n, precision, quality, flips)) if with_accuracy else None
    status = "reference" if kind == "source" else ("failed-gate" if quality == "bad" else "passed")
    return {"id": f"{bundle}/{name}", "bundle": f"/abs/{bundle}", "bundle_name": bundle,
            "name": name, "backend": backend, "precision": precision, "kind": kind,
            "status": status, "recipe": "int8", "bytes": 123456, "notes": [],
            "accuracy": acc, "accuracy_source": accuracy_source}


def _row(artifact: str, threads: int, p50: float, spread: float = 1.02,
         inference_precision: str | None = "f32", error: str | None = None) -> dict[str, Any]:
    runtime = {"name": "x", "version": "1.0", "threads": threads,
               "inference_precision": inference_precision}
    if error:
        return {"artifact": artifact, "threads": threads, "latency_ms": None, "load_ms": None,
                "peak_rss_mb": None, "runtime": runtime, "error": error}
    lat = {"p50": p50, "p90": p50 * 1.08, "p99": p50 * 1.25, "mean": p50 * 1.02,
           "std": p50 * 0.03, "min": p50 * 0.95, "max": p50 * 1.4, "n": 300}
    return {"artifact": artifact, "threads": threads, "latency_ms": lat,
            "trials_p50_ms": [p50, p50 * spread, p50 * 1.0], "spread": spread,
            "load_ms": 150.0, "peak_rss_mb": 200.0, "runtime": runtime, "error": None}


def make_results(*, task: str = "multiclass", n: int = 800, p50: dict | None = None,
                 bad: tuple[str, ...] = (), no_accuracy: tuple[str, ...] = (),
                 accuracy_source: str = "bench", data: bool = True, quick: bool = False,
                 isa_notes: tuple[str, ...] = (), spread: dict | None = None,
                 inference_precision: dict | None = None, errors: dict | None = None,
                 backends: tuple[str, ...] = BACKENDS, threads: tuple[int, ...] = (1, 2),
                 precisions: tuple[str, ...] = ("fp32", "int8")) -> dict[str, Any]:
    """A valid ``edgekit.bench/1`` dict: backends × precisions × threads plus the source.

    ``bad``/``no_accuracy`` hold artifact names (e.g. ``"openvino-int8"``); ``p50``, ``spread``,
    ``inference_precision`` and ``errors`` are keyed by ``(name, threads)``.
    """
    lat = {**P50, **{k: v for k, v in (p50 or {}).items() if len(k) == 3}}
    bundle = "model-int8"
    arts = [_artifact(bundle, "source", "pytorch", "fp32", "source", "source", task, n,
                      accuracy_source, True)]
    for b in backends:
        for prec in precisions:
            name = f"{b}-{prec}"
            arts.append(_artifact(bundle, name, b, prec, "artifact",
                                  "bad" if name in bad else "good", task, n, accuracy_source,
                                  name not in no_accuracy))
    rows = []
    for a in arts:
        for t in threads:
            key = (a["name"], t)
            rows.append(_row(a["id"], t, (p50 or {}).get(key, lat[(a["backend"], a["precision"], t)]),
                             spread=(spread or {}).get(key, 1.02),
                             inference_precision=(inference_precision or {}).get(key, "f32"),
                             error=(errors or {}).get(key)))
    names = LABELS if task == "multilabel" else CLASSES
    return {
        "schema": "edgekit.bench/1", "created": "2026-11-22T09:30:00+00:00", "edgekit": "0.1.0",
        "target": {"name": "x86-local", "description": "this machine",
                   "access": {"kind": "local"}, "isa_notes": list(isa_notes)},
        "environment": {"cpu": {"model": "AMD EPYC 7B13", "arch": "x86_64", "logical_cores": 2,
                                "features": ["avx2", "avx512f", "avx512_vnni"],
                                "governor": None, "freq_mhz": {"current": 2450.0, "max": None}},
                        "os": "Linux-6.1", "python": "3.11.9",
                        "packages": {"numpy": "2.1", "onnxruntime": "1.31.0",
                                     "openvino": "2026.4.0"}},
        "protocol": {"quick": quick, "warmup_iters": 10, "warmup_seconds": 2.0, "iters": 100,
                     "min_seconds": 10.0, "trials": 3, "pin": None},
        "data": ({"path": "/data/Testing", "n": n, "task": task, "class_names": list(names)}
                 if data else None),
        "reference": {"artifact": f"{bundle}/source",
                      "description": "source model, PyTorch eager fp32"},
        "artifacts": arts, "rows": rows,
    }


def _write(tmp_path: Path, results: dict[str, Any]) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "results.json").write_text(json.dumps(results))
    return run


def _flags(results: dict[str, Any], word: str) -> list[str]:
    return [f for f in report.recommend(results)["flags"] if word in f]


# ---------------------------------------------------------------------------- recommendation
def test_recommends_the_fastest_passing_artifact():
    rec = report.recommend(make_results())
    assert (rec["artifact"], rec["threads"], rec["p50_ms"]) == ("model-int8/openvino-int8", 2, 1.2)
    assert rec["target"] == "x86-local"
    assert rec["text"].startswith("On x86-local ship `model-int8/openvino-int8` with 2 threads: "
                                  "p50 1.20 ms, top-1 ")
    assert "points vs the source, 95 % CI [" in rec["text"]
    assert "accuracy measured on 800 held-out images" in rec["text"]
    assert rec["candidates"][:2] == ["model-int8/openvino-int8", "model-int8/onnxruntime-int8"]
    assert "model-int8/source" not in rec["candidates"]
    assert rec["flags"] == []


def test_skips_a_faster_artifact_that_fails_the_gate_and_never_the_source():
    results = make_results(bad=("openvino-int8",),
                           p50={("source", 1): 0.5, ("source", 2): 0.4})
    rec = report.recommend(results)
    assert rec["artifact"] == "model-int8/onnxruntime-int8" and rec["threads"] == 2
    assert "model-int8/openvino-int8" not in rec["candidates"]


def test_gate_falls_back_to_bundle_status_when_accuracy_is_null():
    results = make_results(no_accuracy=("openvino-int8",))
    rec = report.recommend(results)
    assert rec["artifact"] == "model-int8/openvino-int8"
    assert "not measured" in rec["text"]
    art = next(a for a in results["artifacts"] if a["name"] == "openvino-int8")
    art["status"] = "failed-gate"
    assert report.recommend(results)["artifact"] == "model-int8/onnxruntime-int8"


def test_no_passing_artifact_names_the_failing_check():
    bad = tuple(f"{b}-{p}" for b in BACKENDS for p in ("fp32", "int8"))
    rec = report.recommend(make_results(bad=bad))
    assert rec["artifact"] is None and rec["threads"] is None and rec["candidates"] == []
    assert "no artifact passes the accuracy gate" in rec["text"]
    assert "`model-int8/openvino-int8` with 2 threads" in rec["text"]  # the fastest failing one
    assert "“top-1 accuracy drop (points)”" in rec["text"]


def test_all_rows_errored():
    errors = {(f"{b}-{p}", t): "RuntimeError: boom" for b in BACKENDS for p in ("fp32", "int8")
              for t in (1, 2)}
    rec = report.recommend(make_results(errors=errors))
    assert rec["artifact"] is None and "RuntimeError: boom" in rec["text"]


def test_error_rows_are_skipped():
    rec = report.recommend(make_results(errors={("openvino-int8", 2): "Segfault in plugin"}))
    assert (rec["artifact"], rec["threads"]) == ("model-int8/onnxruntime-int8", 2)


@pytest.mark.parametrize(("int8_ms", "flagged"), [(4.5, True), (4.3, False)])
def test_int8_slower_than_fp32_flag_exactly_when_true(int8_ms, flagged):
    results = make_results(p50={("onnxruntime-int8", 2): int8_ms})  # ort fp32 x2 is 4.4 ms
    flags = _flags(results, "is slower than")
    assert flags == ([f"`model-int8/onnxruntime-int8` ({int8_ms:.2f} ms, 2 threads) is slower "
                      f"than its fp32 sibling (4.40 ms). Its backend did not check which ops "
                      f"run off the fast path."] if flagged else [])


OFF = {"status": "off", "checked": "test", "ops": [
    {"op": "DEPTHWISE_CONV_2D", "node": "blocks.0.sep1.depthwise",
     "reason": "7×7 depthwise kernel: XNNPACK's depthwise kernels take at most 25 taps"}]}


def test_slow_artifact_flag_names_the_ops_off_the_fast_path(tmp_path):
    """An artifact slower than its fp32 sibling or than PyTorch eager (same threads) is flagged
    with the ops its backend found off the fast path; the report lists them; nothing else."""
    plain = make_results()
    assert _flags(plain, "is slower than") == []
    results = make_results(p50={("litert-int8", 2): 12.0})  # fp32 5.0, eager 11.0 ms
    for a in results["artifacts"]:
        if a["name"] == "litert-int8":
            a["fast_path"] = OFF
        elif a["name"] == "openvino-int8":
            a["fast_path"] = {"status": "clean", "ops": [], "checked": "test"}
    flags = _flags(results, "is slower than")
    assert flags == ["`model-int8/litert-int8` (12.0 ms, 2 threads) is slower than its fp32 "
                     "sibling (5.00 ms) and PyTorch eager (11.0 ms). Its backend found "
                     "1 op(s) off the fast path: DEPTHWISE_CONV_2D (7×7 depthwise kernel: "
                     "XNNPACK's depthwise kernels take at most 25 taps); first: "
                     "DEPTHWISE_CONV_2D `blocks.0.sep1.depthwise`."]
    results = make_results(p50={("openvino-int8", 1): 7.0})  # fp32 6.0 ms, 1 thread
    assert "did not check" in _flags(results, "is slower than")[0]
    md = report.render_markdown(report.build_report(make_results() | {"artifacts": [
        a | ({"fast_path": OFF} if a["name"] == "litert-int8" else {})
        for a in make_results()["artifacts"]]}))
    assert "## Off the fast path" in md and "`blocks.0.sep1.depthwise`" not in md
    assert "| DEPTHWISE_CONV_2D | blocks.0.sep1.depthwise |" in md
    assert "## Off the fast path" not in report.render_markdown(report.build_report(plain))
    page = report.render_html(report.build_report(make_results() | {"artifacts": [
        a | ({"fast_path": OFF} if a["name"] == "litert-int8" else {})
        for a in make_results()["artifacts"]]}), None)
    assert "<h2>Off the fast path</h2>" in page and "<td>blocks.0.sep1.depthwise</td>" in page


def test_reduced_precision_flag():
    assert _flags(make_results(), "computes in") == []
    flags = _flags(make_results(inference_precision={("openvino-fp32", 2): "bf16"}), "computes")
    assert len(flags) == 1
    assert "This runtime computes in bf16 on this target" in flags[0]
    assert "`model-int8/openvino-fp32`" in flags[0]


def test_spread_flag():
    assert _flags(make_results(spread={("litert-fp32", 1): 1.19}), "Noisy") == []
    flags = _flags(make_results(spread={("litert-fp32", 1): 1.35}), "Noisy")
    assert len(flags) == 1 and "1.35×" in flags[0] and "litert-fp32" in flags[0]
    flags = _flags(make_results(spread={("openvino-int8", 2): 1.5}), "Noisy")
    assert "the recommended row" in flags[0]


def test_quick_isa_and_few_images_flags():
    results = make_results(quick=True, isa_notes=("x86 numbers do not transfer to ARM",), n=120)
    flags = report.recommend(results)["flags"]
    assert any(f.startswith("--quick timings") for f in flags)
    assert any("x86 numbers do not transfer to ARM" in f for f in flags)
    assert any("Only 120 evaluation images: wide confidence intervals" in f for f in flags)


def test_bundle_accuracy_flag():
    assert _flags(make_results(), "--data") == []
    results = make_results(accuracy_source="bundle", data=False)
    assert _flags(results, "pass --data") == [
        "Accuracy is the bundle's compress-time verification, not measured on your data — "
        "pass --data."]
    assert "compress-time verification on 800 images" in report.recommend(results)["text"]


def test_delta_ci_flag():
    results = make_results()
    art = next(a for a in results["artifacts"] if a["name"] == "openvino-int8")
    art["accuracy"]["accuracy_delta"] = {"value": -0.004, "ci95": [-0.016, 0.006]}
    flags = _flags(results, "CI of")
    assert len(flags) == 1 and "−1.6 points" in flags[0] and "−1-point gate" in flags[0]


def test_tie_flag():
    assert _flags(make_results(), "tie") == []
    flags = _flags(make_results(p50={("onnxruntime-int8", 2): 1.25}), "tie")
    assert flags == ["Effectively a tie with `model-int8/onnxruntime-int8` with 2 threads: "
                     "1.25 vs 1.20 ms (within 5 %); choose on memory, load time or accuracy."]


def test_multilabel_recommendation():
    rec = report.recommend(make_results(task="multilabel", bad=("openvino-int8",)))
    assert rec["artifact"] == "model-int8/onnxruntime-int8"
    assert "mean AUROC 0." in rec["text"] and "vs the source" in rec["text"]


# ------------------------------------------------------------------------------------ pareto
@pytest.mark.parametrize(("points", "front"), [
    ([], []),
    ([(1.0, 0.9)], [0]),
    ([(1.0, 0.9), (2.0, 0.95), (3.0, 0.93)], [0, 1]),      # slower and worse: dominated
    ([(1.0, 0.9), (1.0, 0.9)], [0, 1]),                    # identical points both stay
    ([(1.0, 0.9), (1.0, 0.92)], [1]),                      # same latency: the more accurate
    ([(1.0, 0.9), (2.0, 0.9)], [0]),                       # same accuracy: the faster
    ([(3.0, 0.99), (2.0, 0.95), (1.0, 0.90)], [0, 1, 2]),  # a clean trade-off
    ([(2.0, 0.8), (1.0, 0.9), (0.5, 0.85)], [1, 2]),
])
def test_pareto_front(points, front):
    assert report.pareto_front(points) == front


# ----------------------------------------------------------------------------------- loading
def test_load_results_errors(tmp_path):
    with pytest.raises(ConfigError, match="results.json: not found"):
        report.load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON file"):
        report.load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"schema": "edgekit.bench/2"}))
    with pytest.raises(ConfigError, match="schema 'edgekit.bench/2' is not 'edgekit.bench/1'"):
        report.load_results(tmp_path)
    results = make_results()
    results["rows"][0]["artifact"] = "nope/nothing"
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match="'nope/nothing'"):
        report.load_results(tmp_path)


def test_results_round_trip_key_for_key_and_types_are_strict(tmp_path):
    results = arm_results("rpi4", measured=True, preds={"litert-int8": 23.1},
                          parity={"litert-fp32": "failed"})
    results["rows"][0] = {"threads": 4, **results["rows"][0], "from_a_newer_writer": [1]}
    run = _write(tmp_path, results)
    assert json.dumps(report.load_results(run).to_dict()) == (run / "results.json").read_text()
    results["rows"][0]["threads"] = "4"
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match=r"rows\.0\.threads: Input should be a valid integer"):
        report.load_results(run)


# ----------------------------------------------------------------------------------- writing
def _check_files(paths: dict[str, Path], results: dict[str, Any], rec_text: str) -> None:
    assert set(paths) == set(report.FILES)
    assert all(p.is_file() for p in paths.values())
    assert not list(paths["report.json"].parent.glob(".*tmp"))  # no temporary leftovers
    rep = json.loads(paths["report.json"].read_text())
    assert rep["report_schema"] == "edgekit.report/1" and rep["schema"] == "edgekit.bench/1"
    assert rep["recommendation"]["text"] == rec_text
    with paths["report.csv"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(report.table_entries(results))
    if not report.has_arm_results(results):  # one line per measured row
        assert len(rows) == len(results["rows"])
    assert list(rows[0]) == list(report.CSV_COLUMNS)
    png = paths["pareto.png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    img = imread(paths["pareto.png"])
    assert img.ndim == 3 and img.shape[0] >= 600 and img.shape[1] >= 900
    page = paths["report.html"].read_text()
    assert rec_text.replace("`", "").split(":")[0] in page.replace("<code>", "").replace(
        "</code>", "")
    assert 'src="http' not in page and "src='http" not in page and "<script" not in page
    assert "data:image/png;base64," in page
    md = paths["report.md"].read_text()
    assert rec_text in md and "](pareto.png)" in md


def test_write_report_all_files(tmp_path):
    results = make_results(bad=("litert-int8",), errors={("litert-fp32", 2): "load failed"})
    run = _write(tmp_path, results)
    paths = report.write_report(run)
    rec = report.recommend(results)
    _check_files(paths, results, rec["text"])
    page = paths["report.html"].read_text()
    assert "Confusion matrix" in page and "meningioma" in page and "load failed" in page
    rows = list(csv.DictReader(paths["report.csv"].open(newline="")))
    err = next(r for r in rows if r["error"])
    assert err["artifact"] == "model-int8/litert-fp32" and err["p50_ms"] == ""
    assert {r["passed"] for r in rows if r["artifact"].endswith("litert-int8")} == {"False"}


def test_write_report_multilabel_no_data_one_row(tmp_path):
    results = make_results(task="multilabel", data=False, accuracy_source="bundle",
                           backends=("openvino",), precisions=("int8",), threads=(2,))
    results["artifacts"] = results["artifacts"][1:]  # only the int8 artifact: one row
    results["rows"] = results["rows"][1:]
    results["reference"] = None
    paths = report.write_report(_write(tmp_path, results))
    _check_files(paths, results, report.recommend(results)["text"])
    page = paths["report.html"].read_text()
    assert "mean AUROC" in page and "epidural" in page
    assert len(list(csv.DictReader(paths["report.csv"].open(newline="")))) == 1


def test_write_report_null_accuracy_and_html_escaping(tmp_path):
    results = make_results(no_accuracy=("openvino-int8",),
                           errors={("onnxruntime-int8", 1): "<script>alert(1)</script>"})
    paths = report.write_report(_write(tmp_path, results), results)
    page = paths["report.html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "accuracy not measured" in page


def test_write_report_without_matplotlib(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.warns(UserWarning, match=r"pip install 'edgekit\[report\]'"):
        paths = report.write_report(_write(tmp_path, make_results()))
    assert "pareto.png" not in paths and not (tmp_path / "run" / "pareto.png").exists()
    assert {"report.json", "report.csv", "report.md", "report.html"} <= set(paths)
    assert "data:image/png" not in paths["report.html"].read_text()


def test_results_are_not_modified(tmp_path):
    results = make_results()
    before = copy.deepcopy(results)
    report.write_report(_write(tmp_path, results), results)
    assert results == before


# ---------------------------------------------------------------------------------------- CLI
def test_cli_report(tmp_path):
    run = _write(tmp_path, make_results())
    res = CliRunner().invoke(main, ["report", str(run)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "ship `model-int8/openvino-int8`" in res.stdout
    assert all((run / name).is_file() for name in report.FILES)
    assert str(run / "report.html") in res.stdout

    res = CliRunner().invoke(main, ["report", str(run), "--json"], catch_exceptions=False)
    assert res.exit_code == 0
    rec = json.loads(res.stdout)
    assert rec["artifact"] == "model-int8/openvino-int8" and rec["threads"] == 2


def test_cli_report_missing_results_exits_2(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2
    assert f"Error: {tmp_path / 'results.json'}: not found" in res.stderr


def test_print_summary(capsys):
    from edgekit.cli.report import print_summary

    print_summary(report.build_report(make_results(bad=("openvino-int8",))))
    text = capsys.readouterr().out
    assert "onnxruntime-int8" in text and "FAIL" in text and "ship" in text


def test_cli_report_help():
    res = CliRunner().invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "Example:" in res.stdout and "--json" in res.stdout


# ------------------------------------------------- ARM targets: measured, predicted, emulated
ARM_P50 = {(b, p, 4): 30.0 for b in (*BACKENDS, "pytorch") for p in ("fp32", "fp16", "int8")}


def _target(name: str) -> dict[str, Any]:
    from edgekit.targets import load_target

    return {**load_target(name).model_dump(mode="json"), "isa_notes": []}


def _pred(artifact: str, p50: float, rel: float, threads: int = 4,
          group: str = "xnnpack/int8/4") -> dict[str, Any]:
    name = artifact.split("/")[-1]
    backend, precision = name.split("-")
    return {"artifact": artifact, "backend": backend, "precision": precision,
            "threads": threads, "p50_ms": p50, "low_ms": p50 * (1 - rel),
            "high_ms": p50 * (1 + rel), "rel_err": rel, "group": group,
            "basis": f"fitted on published latencies ({group})", "label": "predicted"}


def arm_results(target: str = "rpi4", *, measured: bool = False,
                preds: dict[str, float | tuple[float, float]] | None = None,
                parity: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    """A run on an ARM target profile at 4 threads: ``measured`` over SSH (else no row and
    ``measured_by`` None); ``preds``: artifact name → predicted p50 (±35 %) or (p50, rel_err),
    every other artifact gets a no-prediction row; ``parity``: artifact name → emulated
    status (the others pass)."""
    kw.setdefault("p50", ARM_P50)
    results = make_results(threads=(4,), data=False, accuracy_source="bundle", **kw)
    results["target"] = _target(target)
    results["measured_by"] = "ssh" if measured else None
    if not measured:
        results["rows"] = []
    arts = [a for a in results["artifacts"] if a["kind"] == "artifact"]
    rows = []
    for a in arts:
        if a["name"] in (preds or {}):
            v = preds[a["name"]]
            p50, rel = v if isinstance(v, tuple) else (v, 0.35)
            rows.append(_pred(a["id"], p50, rel, group=f"xnnpack/{a['precision']}/4"))
        else:
            rows.append({"artifact": a["id"], "threads": 4,
                         "error": f"no latency-model group for {a['backend']}"})
    results["predicted"] = {"label": "predicted", "notes": ["xnnpack stands for LiteRT"],
                            "rows": rows}
    if parity is not None:
        results["emulated"] = {
            "qemu_cpu": "cortex-a76" if target == "rpi5" else "cortex-a72", "images": 8,
            "note": "output parity under QEMU user-mode emulation; emulated timings are never "
                    "reported", "environment": {"python": "3.11.2"},
            "rows": [{"artifact": a["id"], "status": parity.get(a["name"], "passed"),
                      "max_abs_diff": 0.5 if parity.get(a["name"]) == "failed" else 1e-5,
                      "max_rel_diff": 1e-4, "top1_agreement": 1.0,
                      "reason": "runtime crashed" if parity.get(a["name"]) == "error" else None}
                     for a in arts]}
    return results


def _all_text(rec: dict[str, Any]) -> list[str]:
    return [rec["text"], *rec["flags"]]


def test_predicted_only_recommendation_and_files(tmp_path):
    results = arm_results(preds={"litert-int8": 23.1, "litert-fp32": (60.0, 0.1),
                                 "onnxruntime-int8": (40.0, 0.1)})
    rec = report.recommend(results)
    assert (rec["artifact"], rec["threads"], rec["basis"]) == ("model-int8/litert-int8", 4,
                                                               "predicted")
    assert rec["p50_ms"] == 23.1 and rec["rel_err"] == 0.35
    assert rec["low_ms"] == pytest.approx(15.015) and rec["high_ms"] == pytest.approx(31.185)
    assert rec["text"].startswith("On rpi4 ship `model-int8/litert-int8` with 4 threads: "
                                  "predicted p50 23.1 ms ±35 % (15.0–31.2 ms; no board was "
                                  "measured)")
    assert rec["candidates"] == ["model-int8/litert-int8", "model-int8/onnxruntime-int8",
                                 "model-int8/litert-fp32"]
    assert any(f.startswith("No board was measured: every latency here is predicted") and
               "±10–35 %" in f for f in rec["flags"])
    assert not any(f.startswith("Measured here") for f in rec["flags"])

    paths = report.write_report(_write(tmp_path, results))
    _check_files(paths, results, rec["text"])
    md, page = paths["report.md"].read_text(), paths["report.html"].read_text()
    for text in (md, page):
        assert "23.1 ms ±35 % (predicted)" in text and "Predicted latency basis" in text
        assert "xnnpack/int8/4" in text and "no latency-model group for openvino" in text
    assert "| model-int8/litert-int8 ★ | 4 | — | — | 23.1 ms ±35 % (predicted) |" in md
    # every predicted number in the table says so, with its error
    import re

    table = "\n".join(line for line in md.split("## Predicted latency basis")[0].splitlines()
                      if line.startswith("|"))
    numbers = re.findall(r"\d+\.?\d* ms ±\d+ %[^|]*", table)
    assert len(numbers) == 3 and all("(predicted)" in n for n in numbers)
    rows = list(csv.DictReader(paths["report.csv"].open(newline="")))
    assert len(rows) == 6 and {r["latency_basis"] for r in rows} == {"predicted"}
    lite = next(r for r in rows if r["artifact"] == "model-int8/litert-int8")
    assert (lite["p50_ms"], lite["predicted_p50_ms"], lite["predicted_rel_err"],
            lite["predicted_group"]) == ("", "23.1", "0.35", "xnnpack/int8/4")
    assert json.loads(paths["report.json"].read_text())["recommendation"]["basis"] == "predicted"


def test_prediction_of_an_artifact_off_the_fast_path_is_flagged_as_a_lower_bound():
    results = arm_results(preds={"litert-int8": 23.1, "litert-fp32": (60.0, 0.1)})
    assert not any("lower bound" in f for f in report.recommend(results)["flags"])
    marked = "model-int8/litert-int8"
    next(r for r in results["predicted"]["rows"] if r["artifact"] == marked)["off_fast_path"] = 2
    flags = [f for f in report.recommend(results)["flags"] if "lower bound" in f]
    assert flags == [f"The latency model costs every kernel at its fast rate: `{marked}` has "
                     "ops off the fast path (see “Off the fast path”), so its prediction is a "
                     "lower bound."]


def test_predicted_skips_gate_failures_and_says_predicted_when_none_passes():
    results = arm_results(preds={"litert-int8": 23.1, "litert-fp32": (60.0, 0.1)},
                          bad=("litert-int8",))
    rec = report.recommend(results)
    assert rec["artifact"] == "model-int8/litert-fp32" and rec["basis"] == "predicted"
    results = arm_results(preds={"litert-int8": 23.1}, bad=("litert-int8",))
    rec = report.recommend(results)
    assert rec["artifact"] is None and rec["basis"] == "predicted"
    assert "no artifact passes the accuracy gate: the fastest predicted" in rec["text"]
    assert "23.1 ms ±35 % (predicted)" in rec["text"]


def test_nothing_measured_nothing_predicted(tmp_path):
    results = arm_results(preds={})
    rec = report.recommend(results)
    assert rec["artifact"] is None
    assert rec["text"].startswith("On rpi4 nothing was measured (no board reachable) and no "
                                  "latency could be predicted; e.g. no prediction for `")
    paths = report.write_report(_write(tmp_path, results))
    assert "pareto.png" in paths and "Predicted latency basis" in paths["report.md"].read_text()


def _no_sdot_claim(text: str) -> bool:
    import re

    return re.search(r"(?<!no )sdot", text.lower().replace("no sdot instruction", "")) is None


def test_a72_int8_note_without_sdot_claims():
    rec = report.recommend(arm_results("rpi4", preds={"litert-int8": 23.1}))
    notes = [f for f in rec["flags"] if "no dotprod" in f]
    assert len(notes) == 1
    assert "INT8 arithmetic is no faster than fp32" in notes[0]
    assert "only from moving fewer bytes" in notes[0]
    assert "The recommended `model-int8/litert-int8` is INT8" in notes[0]
    assert all(_no_sdot_claim(t) for t in _all_text(rec))
    assert not any("native fp16" in f for f in rec["flags"])
    # the same run on the A76 board: no such note
    rec5 = report.recommend(arm_results("rpi5", preds={"litert-int8": 23.1}))
    assert not any("no dotprod" in f or "no faster than fp32" in f for f in rec5["flags"])
    # and none at all on a non-ARM target
    assert not any("dotprod" in f for f in report.recommend(make_results())["flags"])


def test_fp16_notes_follow_the_target_isa():
    kw = {"precisions": ("fp32", "fp16"), "preds": {"litert-fp16": 30.0}}
    rec5 = report.recommend(arm_results("rpi5", **kw))
    note = [f for f in rec5["flags"] if f.startswith("rpi5 has fp16 arithmetic")]
    assert len(note) == 1
    assert "`model-int8/litert-fp16`" in note[0] and "native fp16 arithmetic" in note[0]
    assert "worth considering" in note[0] and "INFERENCE_PRECISION_HINT=f32" in note[0]
    rec4 = report.recommend(arm_results("rpi4", **kw))
    assert not any("native fp16" in f for f in rec4["flags"])
    note = [f for f in rec4["flags"] if f.startswith("rpi4 has no fp16 arithmetic")]
    assert len(note) == 1 and "compute in fp32 there and only halve the file" in note[0]


def test_fp16_artifact_ranked_last_on_a_cpu_without_fp16_when_predictions_tie():
    preds = {"litert-fp16": (25.0, 0.3), "onnxruntime-fp32": (27.0, 0.3)}
    kw = {"precisions": ("fp32", "fp16"), "preds": preds}
    assert report.recommend(arm_results("rpi4", **kw))["artifact"] == \
        "model-int8/onnxruntime-fp32"
    assert report.recommend(arm_results("rpi5", **kw))["artifact"] == "model-int8/litert-fp16"


def test_predicted_tie_is_resolved_by_the_targets_preferred_runtimes():
    # openvino-int8 is predicted fastest, but every interval overlaps: rpi4 prefers litert,
    # then onnxruntime, for int8 (and OpenVINO runs INT8 as fp16 on ARM)
    preds = {"openvino-int8": 20.0, "onnxruntime-int8": 21.0, "litert-int8": 23.0}
    rec = report.recommend(arm_results("rpi4", preds=preds))
    assert rec["artifact"] == "model-int8/litert-int8"
    assert rec["candidates"] == ["model-int8/litert-int8", "model-int8/onnxruntime-int8",
                                 "model-int8/openvino-int8"]
    tie = [f for f in rec["flags"] if f.startswith("Within the prediction error")]
    assert len(tie) == 1 and "overlap, so they tie" in tie[0]
    assert "preferred runtimes (int8: litert, onnxruntime)" in tie[0]
    assert "`model-int8/openvino-int8` ×4 (predicted 20.0 ms ±35 %)" in tie[0]
    ov = [f for f in rec["flags"] if f.startswith("OpenVINO runs INT8 models as fp16 on ARM")]
    assert len(ov) == 1 and "ranked after rpi4's preferred INT8 runtimes (litert, " \
        "onnxruntime) when predicted latencies tie" in ov[0]
    # intervals apart: the fastest prediction wins and there is no tie
    preds = {"openvino-int8": (10.0, 0.1), "litert-int8": (23.0, 0.1)}
    rec = report.recommend(arm_results("rpi4", preds=preds))
    assert rec["artifact"] == "model-int8/openvino-int8"
    assert not any(f.startswith("Within the prediction error") for f in rec["flags"])


def test_emulated_parity_failure_excludes_the_artifact(tmp_path):
    results = arm_results("rpi4", preds={"litert-int8": 23.1, "onnxruntime-int8": (40.0, 0.1)},
                          parity={"litert-int8": "failed", "litert-fp32": "error"})
    rec = report.recommend(results)
    assert rec["artifact"] == "model-int8/onnxruntime-int8" and rec["basis"] == "predicted"
    assert "model-int8/litert-int8" not in rec["candidates"]
    flags = [f for f in rec["flags"] if "parity under QEMU cortex-a72" in f]
    assert len(flags) == 2
    failed = next(f for f in flags if f.startswith("`model-int8/litert-int8` failed output "
                                                   "parity"))
    assert "max abs diff 0.5" in failed and "excluded from the recommendation for rpi4" in failed
    errored = next(f for f in flags if f.startswith("`model-int8/litert-fp32`"))
    assert "could not be checked (runtime crashed)" in errored
    assert {e["artifact"] for e in rec["excluded"]} == {"model-int8/litert-int8",
                                                        "model-int8/litert-fp32"}
    paths = report.write_report(_write(tmp_path, results))
    for name in ("report.md", "report.html"):
        text = paths[name].read_text()
        assert "Emulated parity (QEMU cortex-a72)" in text and "timings are not reported" in text
        assert "FAIL (max diff 0.5)" in text
    rows = list(csv.DictReader(paths["report.csv"].open(newline="")))
    assert {r["artifact"]: r["emulated_parity"] for r in rows}["model-int8/litert-int8"] == \
        "failed"

    # measured runs too: the fastest measured artifact fails parity
    results = make_results()
    results["emulated"] = {"qemu_cpu": "cortex-a72", "images": 8, "rows": [
        {"artifact": "model-int8/openvino-int8", "status": "failed", "max_abs_diff": 0.3,
         "max_rel_diff": 0.1, "top1_agreement": 0.75, "reason": None}]}
    rec = report.recommend(results)
    assert rec["basis"] == "measured"
    assert (rec["artifact"], rec["threads"]) == ("model-int8/onnxruntime-int8", 2)
    assert any("top-1 agreement 75.0 %" in f for f in rec["flags"])


def test_throttled_rows_are_excluded_with_a_flag():
    results = make_results()
    row = next(r for r in results["rows"]
               if (r["artifact"], r["threads"]) == ("model-int8/openvino-int8", 2))
    row.update(valid=False, invalid_reason="throttled during timing (0x50005)")
    rec = report.recommend(results)
    assert (rec["artifact"], rec["threads"]) == ("model-int8/onnxruntime-int8", 2)
    assert rec["flags"][0] == ("1 run was throttled and is excluded: `model-int8/openvino-int8` "
                               "with 2 threads (throttled during timing (0x50005)). Cool the "
                               "board (heatsink, fan) and rerun it.")
    assert rec["excluded"] == [{"artifact": "model-int8/openvino-int8", "threads": 2,
                                "reason": "throttled during timing (0x50005)"}]
    _, rows = report.main_table(results, rec)
    assert next(r for r in rows if r[0] == "model-int8/openvino-int8" and r[1] == "2")[2] == \
        "1.20 (invalid)"
    assert {r["valid"] for r in report.csv_rows(results)} == {None, False}
    results["rows"][3]["valid"] = False
    assert _flags(results, "runs were throttled")[0].startswith("2 runs were throttled and are "
                                                                "excluded: ")
    # every artifact row throttled, nothing predicted: no recommendation
    for r in results["rows"]:
        r["valid"] = False
    rec = report.recommend(results)
    assert rec["artifact"] is None and "every timed run was invalid (throttled)" in rec["text"]


def test_measured_run_keeps_measured_basis_and_shows_predictions_beside_it():
    results = arm_results("rpi4", measured=True, preds={"litert-int8": (10.0, 0.1)},
                          parity={})
    for r in results["rows"]:
        r["thermal"] = {"temp_c_min": 51.0, "temp_c_max": 63.5, "freq_mhz_min": 1500,
                        "freq_mhz_max": 1500, "samples": 12, "throttled_before": "0x0",
                        "throttled_after": "0x0"}
    rec = report.recommend(results)
    assert rec["basis"] == "measured" and rec["rel_err"] is None
    assert "predicted" not in rec["text"]
    assert any(f.startswith("A measured row falls outside the predicted range (worst: "
                            "`model-int8/litert-int8`") for f in rec["flags"])
    head, rows = report.main_table(results, rec)
    assert head[8:10] == ["predicted p50", "emulated parity (QEMU cortex-a72)"]
    lite = next(r for r in rows if r[0].startswith("model-int8/litert-int8"))
    assert lite[2] == "30.0" and lite[8] == "10.0 ms ±10 % (predicted)" and \
        lite[9].startswith("passed")
    csv_lite = next(r for r in report.csv_rows(results) if r["artifact"].endswith("litert-int8"))
    assert csv_lite["latency_basis"] == "measured" and csv_lite["predicted_p50_ms"] == 10.0
    env = dict(report.environment_lines(results))
    assert env["measured"] == "on the board, over SSH"
    assert env["thermal while timing"].startswith("51–63.5 °C, 1500–1500 MHz")


def test_old_runs_render_without_the_new_columns():
    results = make_results()
    rec = report.recommend(results)
    assert rec["basis"] == "measured" and rec["excluded"] == []
    head, _ = report.main_table(results, rec)
    assert head == ["artifact", "threads", "p50 ms", "p90 ms", "p99 ms", "spread", "load ms",
                    "RSS MB", "top-1 [95 % CI]", "Δ vs source [95 % CI]", "gate"]
    md = report.render_markdown(report.build_report(results))
    assert "predicted" not in md.lower() and "Emulated" not in md and "measured**" not in md
    assert {r["latency_basis"] for r in report.csv_rows(results)} == {"measured"}


def test_print_summary_arm_run(capsys):
    from edgekit.cli.report import print_summary

    results = arm_results("rpi4", preds={"litert-int8": 23.1}, parity={"litert-fp32": "failed"})
    print_summary(report.build_report(results))
    text = " ".join(capsys.readouterr().out.split())
    assert "litert-int8 ×4 23.1 ±35 % (predicted) passed" in text and "FAIL" in text
    assert "ship `model-int8/litert-int8` with 4 threads: predicted p50 23.1 ms ±35 %" in text


def test_cli_report_json_basis(tmp_path):
    run = _write(tmp_path, arm_results("rpi4", preds={"litert-int8": 23.1}))
    res = CliRunner().invoke(main, ["report", str(run), "--json"], catch_exceptions=False)
    assert res.exit_code == 0
    rec = json.loads(res.stdout)
    assert rec["basis"] == "predicted" and rec["artifact"] == "model-int8/litert-int8"
