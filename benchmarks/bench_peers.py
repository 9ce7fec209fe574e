"""Issue 4's performance goals on x86-local: edgekit INT8 vs PyTorch eager fp32 and vs the peers'
default INT8 pipelines (NNCF ``quantize`` → OpenVINO, ORT ``quantize_static`` → ONNX Runtime).

    # the real measurement (quiet machine; ~10-15 min per model, mostly compress)
    .venv/bin/python benchmarks/bench_peers.py
    # smoke run: quick protocol, small input, writes results/bench_peers_quick.*
    .venv/bin/python benchmarks/bench_peers.py --quick --models dsconv_cbam_gap --size 64 \\
        --calibration-images 16

Exits non-zero when a trial spread exceeds the protocol's limit (noisy machine; the JSON is still
written, "valid": false) or, on a full run, when a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import onnx
import openvino as ov
import torch
from onnxruntime.quantization import CalibrationDataReader, quantize_static

from _common import environment, release_work_folder, work_folder, write_results
from edgekit.backends.openvino import disable_telemetry
from edgekit.bench.local import LocalExecutor, RunFailed
from edgekit.bench.protocol import SPREAD_LIMIT, Protocol, merge_trials
from edgekit.calibrate import StreamedImages, plan_data
from edgekit.compress import compress
from edgekit.data.phantoms import generate_ct_dataset, generate_mri_dataset
from edgekit.recipes import load_recipe
from edgekit.sources import load_model
from edgekit.targets import load_target
from edgekit.zoo import create_model, model_config

ROWS = {"eager": "PyTorch eager fp32", "onnxruntime-fp32": "edgekit ORT fp32",
        "onnxruntime-int8": "edgekit ORT int8",
        "openvino-int8": "edgekit OV int8", "litert-int8": "edgekit LiteRT int8",
        "nncf-default": "NNCF defaults→OV", "ort-default": "ORT quantize_static defaults"}
EDGEKIT = ("onnxruntime-int8", "openvino-int8", "litert-int8")
PEERS = {"nncf-default": "openvino", "ort-default": "onnxruntime"}
GOAL_SPEEDUP, GOAL_RATIO = 4.0, 1.0


def say(msg: str) -> None:
    print(f"[bench_peers] {msg}", file=sys.stderr, flush=True)


def make_data(task: str, size: int, n_calib: int, n_verify: int, root: Path) -> Path:
    """Phantoms enough for compress's 70/30 split to give n_calib + n_verify images."""
    total = max(math.ceil(n_calib / 0.65), math.ceil(n_verify / 0.25))
    if task == "multilabel":
        return generate_ct_dataset(root / f"ct{size}", total, size=size)
    return generate_mri_dataset(root / f"mri{size}", math.ceil(total / 4), size=size)


def peer_nncf(module: Any, shape: list[int], items: list[Any], out: Path) -> Path:
    import nncf  # here, not at the top: its logger must not bind to stdout (results go there)

    disable_telemetry()
    with torch.no_grad():  # static batch-1 input, exactly as edgekit converts
        ov_model = ov.convert_model(module, example_input=torch.zeros(shape), input=[shape])
    quantized = nncf.quantize(ov_model, nncf.Dataset(items))  # NNCF's defaults, nothing else
    xml = out / "nncf-default.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return xml


def peer_ort(module: Any, shape: list[int], items: list[Any], out: Path) -> Path:
    fp32, int8 = out / "ort-fp32.onnx", out / "ort-default.onnx"
    with torch.no_grad():
        torch.onnx.export(module, (torch.zeros(shape),), str(fp32), dynamo=True,
                          opset_version=18, external_data=False)
    name = onnx.load(str(fp32)).graph.input[0].name

    class Reader(CalibrationDataReader):  # the same images, one per call
        stream = iter(items)

        def get_next(self) -> dict[str, Any] | None:
            return next(({name: x} for x in self.stream), None)

    quantize_static(str(fp32), str(int8), Reader())  # QDQ, QInt8/QInt8, per-tensor, MinMax
    return int8


def build(model: str, size: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Weights, phantoms, the edgekit INT8 bundle and both peer artifacts for one model."""
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = work / f"{model}_{size}.pt"
    torch.save(create_model(model, input_size=size).state_dict(), weights)
    source = f"{model}:{weights}"
    loaded = load_model(source, input_size=size)
    shape = list(loaded.spec.input_shape(1))
    data = make_data(model_config(model).task, size, args.calibration_images,
                     args.verification_images, work)
    say(f"{model}: edgekit compress (int8, all backends)")
    # rescue off: the plain INT8 graph of each backend, the one that ships when the gate passes
    # (on seeded weights the rescue's trigger is noise, and its float layers are not the peers')
    res = compress(loaded, data=data, out=work / f"{model}_{size}_int8", recipe="int8",
                   calibration_images=args.calibration_images, rescue=False,
                   verification_images=args.verification_images, allow_accuracy_drop=True)
    fp32 = compress(loaded, data=data, out=work / f"{model}_{size}_fp32", recipe="fp32",
                    backends=["onnxruntime"], verification_images=args.verification_images,
                    allow_accuracy_drop=True)
    plan = plan_data(loaded, data, calibration_images=args.calibration_images,
                     verification_images=args.verification_images, seed=load_recipe("int8").seed)
    items = list(StreamedImages(plan.calibration, loaded.spec))  # the images compress used
    same = plan.describe()["calibration_files_sha256"] == res.data["calibration_files_sha256"]
    if not same:
        say(f"WARNING: {model}: the peers' calibration images differ from edgekit's")
    built: dict[str, Any] = {"source": source, "shape": shape, "bundle": res.bundle,
                             "bundle_fp32": fp32.bundle,
                             "peers": {}, "peer_errors": {},
                             "calibration_images": len(items), "same_calibration_images": same}
    for key, fn in (("nncf-default", peer_nncf), ("ort-default", peer_ort)):
        say(f"{model}: peer pipeline {ROWS[key]}")
        try:
            with contextlib.redirect_stdout(sys.stderr):  # converters print progress on stdout
                built["peers"][key] = fn(loaded.module.eval(), shape, items, work)
        except Exception as exc:  # a peer failing is a result, not a crash
            msg = built["peer_errors"][key] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            say(f"{model}: {key} FAILED: {msg}")
    return built


def summarize(raw: dict[str, Any], opts: dict[str, Any] | None) -> dict[str, Any]:
    if raw.get("error"):
        return {"error": raw["error"], "runtime_options": opts}
    p50s, keep = raw["trials_p50_ms"], ("latency_ms", "runtime", "load_ms", "environment")
    return {"p50_ms": statistics.median(p50s), "p90_ms": raw["latency_ms"]["p90"],
            "spread": raw["spread"], "trials_p50_ms": p50s, "runtime_options": opts,
            **{k: raw.get(k) for k in keep}}


def time_model(model: str, b: dict[str, Any], ex: LocalExecutor, proto: Protocol, threads: int,
               options: dict[str, Any], step: list[int]) -> dict[str, dict[str, Any]]:
    """Every row in ``proto.trials`` interleaved rounds (one trial per fresh process per round,
    as ``edgekit bench`` does), so drift of the shared machine hits all rows alike."""
    single = Protocol.from_dict({**proto.to_dict(), "trials": 1})
    trials: dict[str, list[dict[str, Any]]] = {k: [] for k in ROWS}
    errors: dict[str, str] = {}
    opts_of: dict[str, Any] = {}
    for r in range(proto.trials):
        for key, label in ROWS.items():
            step[0] += 1
            if key in errors:
                continue
            say(f"[{step[0]}/{step[1]}] {model}: timing {label} ({threads} threads, "
                f"round {r + 1}/{proto.trials})")
            backend = PEERS.get(key, key.split("-")[0])
            opts = options.get(backend)
            if key == "nncf-default":  # edgekit's OpenVINO session compiles its INT8 IRs with
                opts = {**(opts or {}), "SNIPPETS_MODE": "DISABLE"}  # this; same for the peer
            try:
                if key == "eager":
                    opts, raw = None, ex.time_source(b["source"], b["shape"], threads, single)
                elif key in EDGEKIT:
                    raw = ex.time_artifact(b["bundle"], key, threads, single, opts)
                elif key == "onnxruntime-fp32":
                    raw = ex.time_artifact(b["bundle_fp32"], key, threads, single, opts)
                elif key in b["peer_errors"]:
                    raise RunFailed(f"peer pipeline failed: {b['peer_errors'][key]}")
                else:
                    raw = ex.time_file(b["peers"][key], backend, b["shape"], threads, single,
                                       opts)
                trials[key].append(raw)
                say(f"    p50 {raw['latency_ms']['p50']:.3f} ms")
            except RunFailed as exc:
                errors[key] = str(exc)
                say(f"    error: {exc}")
            opts_of[key] = opts
    rows: dict[str, dict[str, Any]] = {}
    for key in ROWS:
        raw = {"error": errors[key]} if key in errors else merge_trials(trials[key])
        r = rows[key] = summarize(raw, opts_of.get(key))
        if "error" not in r:
            say(f"{model}: {ROWS[key]}: p50 {r['p50_ms']:.3f} ms (median of {proto.trials} "
                f"interleaved trials), spread {r['spread']:.3f}")
    return rows


def judge(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ok = {k: r for k, r in rows.items() if "error" not in r}
    ek = [k for k in EDGEKIT if k in ok]
    fastest = min(ek, key=lambda k: ok[k]["p50_ms"]) if ek else None
    peers = [k for k in PEERS if k in ok]
    best_peer = min(peers, key=lambda k: ok[k]["p50_ms"]) if peers else None
    speedup = ok["eager"]["p50_ms"] / ok[fastest]["p50_ms"] if fastest and "eager" in ok else None
    ratio = ok[fastest]["p50_ms"] / ok[best_peer]["p50_ms"] if fastest and best_peer else None
    misses = [f"{goal} (got {'no timing' if v is None else f'{v:.3f}'})" for goal, v, bad in (
        (f"speed-up vs PyTorch eager fp32 ≥ {GOAL_SPEEDUP:g}×", speedup,
         speedup is None or speedup < GOAL_SPEEDUP),
        (f"no slower than the best peer default, ratio ≤ {GOAL_RATIO:g}", ratio,
         ratio is None or ratio > GOAL_RATIO)) if bad]
    def over(a: str, b: str) -> float | None:
        return ok[a]["p50_ms"] / ok[b]["p50_ms"] if a in ok and b in ok else None

    return {"fastest_edgekit": fastest, "speedup_vs_eager": speedup, "best_peer": best_peer,
            "ratio_vs_best_peer": ratio, "goal_misses": misses,
            # issue 18's ORT goals: INT8 faster than its fp32, within 1.5x of OpenVINO INT8
            "ort_int8_over_fp32": over("onnxruntime-int8", "onnxruntime-fp32"),
            "ort_int8_over_openvino_int8": over("onnxruntime-int8", "openvino-int8"),
            "max_spread": max((r["spread"] for r in ok.values()), default=None)}


def markdown(res: dict[str, Any], noisy: list[str]) -> str:
    env, quick = res["environment"], res["quick"]
    title = "QUICK SMOKE RUN (quick protocol: not a measurement): " if quick else ""
    md = [f"# {title}edgekit INT8 vs PyTorch eager fp32 and the peers' default INT8 pipelines",
          "", f"- {env['cpu']}, {env['cores']} cores, load average {res['loadavg_at_start']} at "
          f"start, {env['date']}; target x86-local, {res['threads']} threads, every row in a "
          f"fresh subprocess; protocol {json.dumps(res['protocol'])}",
          "- cells: p50 / p90 in ms; the rows of a model are timed in interleaved rounds (each "
          "round: every row once, one trial, fresh process); p50 = median of the trials' p50 "
          "(median of medians), p90 = median of the trials' p90; spread = max/min of the "
          "trials' p50",
          "- fresh seeded zoo weights (latency only); calibrated on synthetic phantoms (MRI; CT "
          "for multi-label), the same images for edgekit and both peers",
          "- runtime settings are identical for edgekit's and the peers' artifacts (same session "
          "code, threads and x86-local options: OpenVINO LATENCY hint, f32 precision hint, INT8 "
          "IRs with SNIPPETS_MODE=DISABLE); only the quantization pipeline differs. NNCF: "
          "`nncf.quantize(ov_model, dataset)` defaults on the static-shape IR edgekit also "
          "converts; ORT: `quantize_static(fp32, out, reader)` defaults (QDQ, QInt8 "
          "activations, per-tensor weights, MinMax) on the dynamo opset-18 export",
          "- edgekit's INT8 rows are each backend's plain INT8 graph (`rescue=False`: on seeded "
          "weights the rescue's trigger is noise, and its float layers are not what the peers "
          "time); ORT fp32 is edgekit's fp32 export",
          "", "| model | " + " | ".join(ROWS.values()) + " | fastest edgekit | ×eager | "
          "÷best peer | ORT int8 ÷ ORT fp32 | ORT int8 ÷ OV int8 | max spread |",
          "|---" * (len(ROWS) + 7) + "|"]
    fmt = {"speedup_vs_eager": "{:.2f}×", "ratio_vs_best_peer": "{:.3f}",
           "ort_int8_over_fp32": "{:.2f}", "ort_int8_over_openvino_int8": "{:.2f}",
           "max_spread": "{:.3f}"}
    for name, m in res["models"].items():
        j, rows = m["summary"], m["rows"]
        md.append(f"| {name} ({m['input_size']}²) | " + " | ".join(
            "error" if "error" in rows[k] else f"{rows[k]['p50_ms']:.2f} / {rows[k]['p90_ms']:.2f}"
            for k in ROWS) + f" | {j['fastest_edgekit'] or '-'} | " + " | ".join(
            "-" if j.get(k) is None else f.format(j[k]) for k, f in fmt.items()) + " |")
    md.append("")
    for name, m in res["models"].items():
        md.append(f"- {name}: " + ("; ".join(m["summary"]["goal_misses"]) or "goals met")
                  + (" (quick run: not judged)" if quick else ""))
        md += [f"  - {ROWS[k]}: {r['error']}" for k, r in m["rows"].items() if "error" in r]
    if noisy:
        md.append(f"- NOISY (spread > {SPREAD_LIMIT}×, ignored in a quick run): {', '.join(noisy)}")
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["prudensnet", "dsconv_cbam", "ich_mrf"])
    ap.add_argument("--size", type=int, default=None,
                    help="input size for every model (default: each model's published size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="quick protocol (smoke run)")
    ap.add_argument("--calibration-images", type=int, default=300)
    ap.add_argument("--verification-images", type=int, default=50)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--name", default=None, help="results file stem (default: bench_peers, "
                    "bench_peers_quick with --quick); name a run of fewer models so it does not "
                    "replace the three-model table")
    args = ap.parse_args()
    proto = Protocol.quick_protocol() if args.quick else Protocol()
    options = dict(load_target("x86-local").runtime_options)
    work = work_folder(args.workdir, "bench-peers-")
    ex, t0 = LocalExecutor(), time.perf_counter()
    step = [0, len(ROWS) * len(args.models) * proto.trials]
    load = [round(x, 2) for x in os.getloadavg()]
    if load[0] > 0.5:  # a steadily busy core slows every trial alike: spread cannot see it
        say(f"WARNING: load average {load} at start: the machine is not quiet")
    res: dict[str, Any] = {"environment": environment(), "loadavg_at_start": load,
                           "protocol": proto.to_dict(), "threads": args.threads,
                           "target": "x86-local", "runtime_options": options,
                           "quick": args.quick, "rescue": False, "models": {}}
    try:
        for model in args.models:
            size = args.size or model_config(model).input_size
            b = build(model, size, args, work / model)
            rows = time_model(model, b, ex, proto, args.threads, options, step)
            for r in rows.values():
                env = r.pop("environment", None)
                res["runtime_environment"] = res.get("runtime_environment") or env
            res["models"][model] = {"input_size": size, "rows": rows, "summary": judge(rows),
                                    **{k: b[k] for k in ("calibration_images",
                                                         "same_calibration_images")}}
    finally:
        release_work_folder(work, args.workdir, args.keep, say)
    noisy = [f"{m}/{ROWS[k]} ({r['spread']:.3f})" for m, v in res["models"].items()
             for k, r in v["rows"].items() if "spread" in r and r["spread"] > SPREAD_LIMIT]
    res.update(seconds=round(time.perf_counter() - t0, 1), valid=not noisy, noisy_rows=noisy)
    name = args.name or ("bench_peers_quick" if args.quick else "bench_peers")
    if noisy and not args.quick:
        write_results(name, res, f"# bench_peers: INVALID run (noisy machine)\n\nTrial p50 "
                      f"spread above {SPREAD_LIMIT}× in: {', '.join(noisy)}. No table is "
                      "reported: re-run on a quiet machine. Raw numbers are in the JSON.")
        sys.exit(f"bench_peers: INVALID — trial p50 spread > {SPREAD_LIMIT}× (machine too "
                 f"noisy) in: {', '.join(noisy)}")
    write_results(name, res, markdown(res, noisy))
    misses = [f"{m}: {x}" for m, v in res["models"].items() for x in v["summary"]["goal_misses"]]
    if misses and not args.quick:
        sys.exit("bench_peers: goals MISSED —\n  " + "\n  ".join(misses))
    if misses:
        say("quick run, goals not judged; would miss: " + "; ".join(misses))


if __name__ == "__main__":
    main()
