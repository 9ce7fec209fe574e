"""Issue 18 item 3: which ONNX Runtime INT8 options make ORT INT8 fast on this CPU.

For each seed model (seeded weights at the published input size) the fp32 ONNX export is
quantized with ``quantize_static`` under several option sets (QDQ vs QOperator, U8S8 vs S8S8,
per-channel vs per-tensor, which op types are quantized, reduce_range) plus the edgekit
backend's own INT8 export (whatever its defaults are now), and every artifact is timed in ONE
process, 2 intra-op threads, in interleaved rounds (each round visits every row once, in a
rotated order, so drift of the shared machine hits all rows alike). Reported per row: p50 of
each round, the median over rounds, the round spread (max/min), the speed-up over ORT fp32,
agreement with ORT fp32 on phantom images (top-1 for multiclass, per-label thresholded for
multilabel; relative L2 error of the logits), and how many ops ORT left unfused
(``edgekit.backends.onnxruntime.unfused_ops``).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ort_int8_options.py            # ~15-25 min
    PYTHONPATH=$PWD .venv/bin/python benchmarks/ort_int8_options.py --quick \\
        --models dsconv_cbam --size 64                                        # smoke run

Writes ``benchmarks/results/ort_int8_options{,_quick}.{json,md}``. The machine this ran on is
shared: repeat the run and compare before trusting a small difference.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from _common import environment, release_work_folder, work_folder, write_results
from edgekit.backends import get_backend
from edgekit.backends.base import ExportRequest, QuantOptions
from edgekit.backends.onnxruntime import (
    BACKEND,
    StreamingCalibrationReader,
    _pre_process,
    unfused_ops,
)
from edgekit.calibrate import StreamedImages, plan_data
from edgekit.data.phantoms import generate_ct_dataset, generate_mri_dataset
from edgekit.sources import load_model
from edgekit.targets import load_target
from edgekit.zoo import create_model, model_config

CONV = ["Conv", "MatMul", "Gemm"]
# (label, quantize_static keyword arguments); QuantType names
VARIANTS: dict[str, dict[str, Any]] = {
    "qdq-u8s8-pc-all": {"fmt": "QDQ", "act": "QUInt8", "w": "QInt8", "pc": True, "ops": None},
    "qdq-u8s8-pc-conv": {"fmt": "QDQ", "act": "QUInt8", "w": "QInt8", "pc": True, "ops": CONV},
    "qdq-u8s8-pt-conv": {"fmt": "QDQ", "act": "QUInt8", "w": "QInt8", "pc": False, "ops": CONV},
    "qdq-u8s8-pt-all": {"fmt": "QDQ", "act": "QUInt8", "w": "QInt8", "pc": False, "ops": None},
    "qdq-s8s8-pc-all": {"fmt": "QDQ", "act": "QInt8", "w": "QInt8", "pc": True, "ops": None},
    "qdq-s8s8-pc-conv": {"fmt": "QDQ", "act": "QInt8", "w": "QInt8", "pc": True, "ops": CONV},
    "qop-u8s8-pc-all": {"fmt": "QOperator", "act": "QUInt8", "w": "QInt8", "pc": True,
                        "ops": None},
    "qop-u8s8-pc-conv": {"fmt": "QOperator", "act": "QUInt8", "w": "QInt8", "pc": True,
                         "ops": CONV},
    "qdq-u8s8-pc-all-rr": {"fmt": "QDQ", "act": "QUInt8", "w": "QInt8", "pc": True, "ops": None,
                           "rr": True},
}
QUICK_VARIANTS = ("qdq-u8s8-pc-all", "qdq-u8s8-pc-conv", "qop-u8s8-pc-all")
# session settings tried on fp32, the edgekit artifact and the first two variants
SESSIONS = {"all": {}, "extended": {"level": "ORT_ENABLE_EXTENDED"},
            "all-nospin": {"session.intra_op.allow_spinning": "0"}}


def say(msg: str) -> None:
    print(f"[ort_int8_options] {msg}", file=sys.stderr, flush=True)


def make_data(task: str, size: int, n: int, root: Path) -> Path:
    if task == "multilabel":
        return generate_ct_dataset(root / f"ct{size}", n, size=size)
    return generate_mri_dataset(root / f"mri{size}", math.ceil(n / 4), size=size)


def quantize(pre: Path, out: Path, v: dict[str, Any], calib: Any, name: str) -> None:
    reader = StreamingCalibrationReader(calib, name)
    extra: dict[str, Any] = {}
    count = len(calib)
    if count > 16 and count % 16 == 0:
        extra["CalibStridedMinMax"] = 16
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(pre), str(out), reader,
                        quant_format=getattr(QuantFormat, v["fmt"]),
                        activation_type=getattr(QuantType, v["act"]),
                        weight_type=getattr(QuantType, v["w"]), per_channel=v["pc"],
                        reduce_range=bool(v.get("rr")), op_types_to_quantize=v["ops"],
                        calibrate_method=CalibrationMethod.MinMax, extra_options=extra)


def session(path: Path, threads: int, settings: dict[str, str]) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.log_severity_level = 3
    for k, val in settings.items():
        if k == "level":
            o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, val)
        else:
            o.add_session_config_entry(k, val)
    return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])


def outputs(sess: ort.InferenceSession, images: list[np.ndarray]) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x})[0] for x in images])


def agreement(task: str, ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    if task == "multilabel":
        agree = float(np.mean((ref > 0) == (got > 0)))
    else:
        agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
    rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-12))
    return {"agreement": round(agree, 4), "rel_l2": round(rel, 4)}


def build(model: str, size: int, args: argparse.Namespace, work: Path
          ) -> tuple[dict[str, Path], list[np.ndarray], str, Path | None]:
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = work / f"{model}_{size}.pt"
    torch.save(create_model(model, input_size=size).state_dict(), weights)
    loaded = load_model(f"{model}:{weights}", input_size=size)
    task = model_config(model).task
    data = make_data(task, size, args.calibration_images * 2 + args.verification_images * 2,
                     work)
    plan = plan_data(loaded, data, calibration_images=args.calibration_images,
                     verification_images=args.verification_images, seed=0)
    calib = StreamedImages(plan.calibration, loaded.spec)
    verify = list(StreamedImages(plan.verification, loaded.spec))
    paths: dict[str, Path] = {}
    fp32 = BACKEND.export(ExportRequest(model=loaded, precision="fp32", out_dir=work,
                                        stem="fp32"))
    paths["fp32"] = fp32.path
    say(f"{model}: edgekit backend int8 export")
    art = BACKEND.export(ExportRequest(model=loaded, precision="int8", out_dir=work,
                                       stem="edgekit-int8", calibration=calib,
                                       options=QuantOptions()))
    paths["edgekit"] = art.path
    if args.depthwise_float:  # the same export with every depthwise convolution left in float
        pre_dw = work / "dw.pre.onnx"
        _pre_process(fp32.path, pre_dw, [])
        g = onnx.load(str(pre_dw)).graph
        dims = {i.name: list(i.dims) for i in g.initializer}
        dw = tuple(n.name for n in g.node if n.op_type == "Conv" and next(
            (a.i for a in n.attribute if a.name == "group"), 1) > 1 and
            (dims.get(n.input[1]) or [0, 0])[1] == 1)
        say(f"{model}: edgekit int8 export with {len(dw)} depthwise convolutions in float")
        variant = dataclasses.replace(BACKEND, exclude_nodes=dw)
        paths["edgekit-dwfloat"] = variant.export(ExportRequest(
            model=loaded, precision="int8", out_dir=work, stem="edgekit-int8-dwfloat",
            calibration=calib, options=QuantOptions())).path
    ov_path = None
    if args.openvino:  # the reference: edgekit's OpenVINO INT8 (NNCF), same calibration images
        say(f"{model}: edgekit OpenVINO int8 export")
        with contextlib.redirect_stdout(sys.stderr):
            ov_path = get_backend("openvino").export(ExportRequest(
                model=loaded, precision="int8", out_dir=work, stem="ov-int8", calibration=calib,
                options=QuantOptions())).path
    pre = work / "model.pre.onnx"
    _pre_process(fp32.path, pre, [])
    name = fp32.input_name
    for label in args.variants:
        say(f"{model}: quantize {label}")
        out = work / f"{label}.onnx"
        try:
            quantize(pre, out, VARIANTS[label], calib, name)
            paths[label] = out
        except Exception as exc:  # a variant failing is a result
            say(f"{model}: {label} FAILED: {type(exc).__name__}: {exc}")
    return paths, verify, task, ov_path


def time_rows(rows: dict[str, Callable[[], Any]], rounds: int,
              seconds: float) -> dict[str, list[float]]:
    names = list(rows)
    p50s: dict[str, list[float]] = {k: [] for k in names}
    runs: dict[str, int] = {}
    for k in names:  # warm up, and size each row's batch of timed calls
        call = rows[k]
        for _ in range(3):
            call()
        t0 = time.perf_counter()
        call()
        runs[k] = max(10, min(200, int(seconds / max(time.perf_counter() - t0, 1e-5))))
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            call = rows[k]
            times = []
            for _ in range(runs[k]):
                t0 = time.perf_counter()
                call()
                times.append((time.perf_counter() - t0) * 1e3)
            p50s[k].append(statistics.median(times))
        say(f"  round {r + 1}/{rounds} done")
    return p50s


def measure(model: str, size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    paths, verify, task, ov_path = build(model, size, args, work / model)
    sessions: dict[str, ort.InferenceSession] = {}
    meta: dict[str, dict[str, Any]] = {}
    for art, path in paths.items():
        tried = SESSIONS if art in ("fp32", "edgekit", *args.variants[:2]) else {"all": {}}
        if args.sessions_all_only:
            tried = {"all": {}}
        for sname, settings in tried.items():
            key = f"{art}@{sname}"
            sessions[key] = session(path, args.threads, settings)
            meta[key] = {"artifact": art, "session": sname}
    ref = outputs(sessions["fp32@all"], verify)
    for key, m in meta.items():
        if m["artifact"] != "fp32" and m["session"] == "all":
            m.update(agreement(task, ref, outputs(sessions[key], verify)))
            level = "ORT_ENABLE_ALL"
            m["unfused"] = [f"{r['op']}:{r['node']}" for r in unfused_ops(paths[m["artifact"]],
                                                                          level)]
    x = verify[0]
    calls: dict[str, Callable[[], Any]] = {
        k: (lambda s=s, f={s.get_inputs()[0].name: x}: s.run(None, f))
        for k, s in sessions.items()}
    if ov_path is not None:
        ov = get_backend("openvino").open(
            ov_path, threads=args.threads,
            options=dict(load_target("x86-local").runtime_options.get("openvino", {})))
        calls["openvino-int8@x86-local"] = ov.bind(x)
        meta["openvino-int8@x86-local"] = {"artifact": "openvino-int8", "session": "x86-local"}
    say(f"{model}: timing {len(calls)} rows, {args.rounds} interleaved rounds")
    p50s = time_rows(calls, args.rounds, args.seconds)
    base = statistics.median(p50s["fp32@all"])
    for key, m in meta.items():
        med = statistics.median(p50s[key])
        m.update(p50_ms=round(med, 3), rounds_p50_ms=[round(v, 3) for v in p50s[key]],
                 spread=round(max(p50s[key]) / min(p50s[key]), 3),
                 speedup_vs_fp32=round(base / med, 3))
    return {"input_size": size, "task": task, "rows": meta,
            "edgekit_quantization": edgekit_record(paths["edgekit"])}


def edgekit_record(path: Path) -> dict[str, Any]:
    import onnx

    ops: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"op_counts": ops}


def markdown(res: dict[str, Any]) -> str:
    lines = ["# ORT INT8 options on this CPU (issue 18 item 3)", "",
             f"{res['environment']['cpu']}, {res['threads']} intra-op threads, one process, "
             f"{res['rounds']} interleaved rounds (rotated order), p50 per round, median over "
             "rounds. The machine was SHARED with other jobs (load average at start "
             f"{res['loadavg_at_start']}): small differences (< 10 %) are noise; compare "
             "repeated runs. Agreement: with ORT fp32 on phantoms (top-1, or per-label for "
             "multilabel), rel L2 = ‖int8 − fp32‖/‖fp32‖ of the logits; unfused = ops ORT "
             "left in float inside the quantized graph (unfused_ops at ORT_ENABLE_ALL). "
             "Session: all = ORT_ENABLE_ALL (the default), extended = ORT_ENABLE_EXTENDED, "
             "nospin = session.intra_op.allow_spinning=0.", ""]
    for model, m in res["models"].items():
        lines += [f"## {model} {m['input_size']}²", "",
                  "| artifact | session | p50 ms | spread | × fp32 | agreement | rel L2 | "
                  "unfused |", "|---|---|---:|---:|---:|---:|---:|---|"]
        rows = sorted(m["rows"].values(), key=lambda r: r["p50_ms"])
        for r in rows:
            unf = r.get("unfused")
            shown = "" if unf is None else (f"{len(unf)}" + (
                f" ({', '.join(sorted({u.split(':')[0] for u in unf}))})" if unf else ""))
            lines.append(f"| {r['artifact']} | {r['session']} | {r['p50_ms']:.3f} | "
                         f"{r['spread']:.2f} | {r['speedup_vs_fp32']:.2f} | "
                         f"{r.get('agreement', '')} | {r.get('rel_l2', '')} | {shown} |")
        ov = m["rows"].get("openvino-int8@x86-local")
        if ov:
            ratios = ", ".join(
                f"{s} {m['rows'][f'edgekit@{s}']['p50_ms'] / ov['p50_ms']:.2f}×"
                for s in SESSIONS if f"edgekit@{s}" in m["rows"])
            lines += ["", f"edgekit ORT INT8 / edgekit OpenVINO INT8 ({ov['p50_ms']:.3f} ms, "
                      f"x86-local session options): {ratios}"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["prudensnet", "dsconv_cbam", "ich_mrf"])
    ap.add_argument("--size", type=int, default=None, help="default: each model's published size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per row per round")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--calibration-images", type=int, default=32)
    ap.add_argument("--verification-images", type=int, default=32)
    ap.add_argument("--openvino", action="store_true",
                    help="also time edgekit's OpenVINO INT8 (the 1.5x goal's reference)")
    ap.add_argument("--depthwise-float", action="store_true",
                    help="also edgekit's INT8 export with every depthwise convolution in float")
    ap.add_argument("--sessions-all-only", action="store_true",
                    help="time every artifact with ORT_ENABLE_ALL (the default) only")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default=None, help="results file stem")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 0.3
        args.variants = [v for v in args.variants if v in QUICK_VARIANTS] or args.variants
        args.calibration_images, args.verification_images = 16, 8
    work = work_folder(args.workdir, "ort-int8-options-")
    load = [round(v, 2) for v in os.getloadavg()]
    res: dict[str, Any] = {"environment": environment(), "loadavg_at_start": load,
                           "threads": args.threads, "rounds": args.rounds,
                           "onnxruntime": ort.__version__, "variants": {
                               k: VARIANTS[k] for k in args.variants},
                           "sessions": SESSIONS, "models": {}}
    t0 = time.perf_counter()
    try:
        for model in args.models:
            size = args.size or model_config(model).input_size
            res["models"][model] = measure(model, size, args, work)
    finally:
        release_work_folder(work, args.workdir, args.keep, say)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write_results(args.name or ("ort_int8_options_quick" if args.quick else "ort_int8_options"),
                  res, markdown(res))


if __name__ == "__main__":
    main()
