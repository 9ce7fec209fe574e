"""Issue 14/18, OpenVINO: what NNCF's "mixed" preset (asymmetric activations) costs in latency.

The mixed preset gave the MobileNetV2-0.35 case a better INT8 top-1 over 12 calibration draws
(``results/int8_draws_mnv2_presets12.md``); before it can be edgekit's default its latency must
be known. Each model is exported to OpenVINO INT8 twice, with the ``performance`` preset
(symmetric activations) and the ``mixed`` one, from the same calibration images, plus fp32, and
the three are timed in one process: 2 threads, batch 1, interleaved rounds of 10 runs each; per
round the ratio mixed ÷ performance, and the median of those ratios.

    # the seed models at their published sizes (seeded weights, phantom calibration)
    .venv/bin/python benchmarks/openvino_preset_latency.py
    # plus a model of your own, calibrated on its images
    .venv/bin/python benchmarks/openvino_preset_latency.py --models \\
        --source WORK/mnv2_nhwc.onnx --preprocess WORK/mnv2.yaml --calibration-data WORK/train_view

Latency only. Results: benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import make_data  # noqa: E402

from _common import environment, write_results  # noqa: E402
from edgekit.backends import ExportRequest, QuantOptions, require_backend  # noqa: E402
from edgekit.calibrate import StreamedImages, stratified_sample  # noqa: E402
from edgekit.data.folder import scan  # noqa: E402
from edgekit.sources import load_model  # noqa: E402
from edgekit.zoo import create_model, model_config  # noqa: E402

SIZES = {"prudensnet": 256, "dsconv_cbam": 224, "ich_mrf": 256, "mobilenetv2": 224}
FORMS = ("fp32", "performance", "mixed")


def say(msg: str) -> None:
    print(f"[ov_presets] {msg}", file=sys.stderr, flush=True)


def sessions_for(loaded, calib, work: Path, threads: int) -> dict:
    base = require_backend("openvino")
    out = {}
    for form in FORMS:
        backend = base if form == "fp32" else dataclasses.replace(base, preset=form)
        precision = "fp32" if form == "fp32" else "int8"
        art = backend.export(ExportRequest(
            loaded, precision, work / form, "m",
            StreamedImages(calib, loaded.spec) if precision == "int8" else None, QuantOptions()))
        out[form] = backend.open(art.path, threads=threads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(SIZES), choices=list(SIZES),
                    help="zoo seeds at their published sizes (none: only --source)")
    ap.add_argument("--source", type=Path, default=None, help="a model file edgekit loads")
    ap.add_argument("--preprocess", type=Path, default=None, help="its preprocessing YAML")
    ap.add_argument("--calibration-data", type=Path, default=None,
                    help="class folders to calibrate --source on")
    ap.add_argument("--calibration-images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="openvino_preset_latency", help="results file stem")
    args = ap.parse_args()
    if args.source is not None and args.calibration_data is None:
        ap.error("--source needs --calibration-data")
    if not args.models and args.source is None:
        ap.error("nothing to time: name --models or a --source")
    cases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ov-presets-") as tmp:
        work = Path(tmp)
        for model in args.models:
            size = SIZES[model]
            say(f"exporting {model} {size}²")
            torch.manual_seed(0)
            weights = work / f"{model}.pt"
            torch.save(create_model(model, input_size=size).state_dict(), weights)
            data = make_data(model_config(model).task, size, args.calibration_images, 0, work)
            loaded = load_model(f"{model}:{weights}", input_size=size)
            calib = stratified_sample(scan(data, task=loaded.task).samples,
                                      args.calibration_images, 0)
            cases[f"{model} {size}²"] = {"loaded": loaded, "calib": calib,
                                         "sessions": sessions_for(loaded, calib, work / model,
                                                                  args.threads)}
        if args.source is not None:
            say(f"exporting {args.source.name}")
            loaded = load_model(args.source, preprocess=args.preprocess)
            calib = stratified_sample(scan(args.calibration_data).samples,
                                      args.calibration_images, 0)
            cases[args.source.name] = {"loaded": loaded, "calib": calib,
                                       "sessions": sessions_for(loaded, calib, work / "source",
                                                                args.threads)}
        from edgekit.quantize.rescue import p50_ms

        rows = {}
        for name, case in cases.items():
            x = np.stack([c[0] for c in StreamedImages(case["calib"][:1], case["loaded"].spec)])
            sessions = case["sessions"]
            for s in sessions.values():
                for _ in range(5):
                    s.run(x)
            times: dict[str, list[float]] = {f: [] for f in FORMS}
            say(f"timing {name}: {args.rounds} interleaved rounds")
            for r in range(args.rounds):
                order = FORMS[r % 3:] + FORMS[:r % 3]  # rotate who goes first
                for form in order:
                    times[form].append(p50_ms(lambda s=sessions[form], x=x: s.run(x), warmup=1,
                                              runs=10))
            ratio = [m / p for m, p in zip(times["mixed"], times["performance"], strict=True)]
            rows[name] = {"p50_ms": {f: statistics.median(v) for f, v in times.items()},
                          "spread": {f: max(v) / min(v) for f, v in times.items()},
                          "mixed_over_performance": statistics.median(ratio),
                          "ratio_range": [min(ratio), max(ratio)], "rounds_ms": times}
    env = environment()
    md = [f"# OpenVINO INT8: NNCF's mixed preset vs performance preset, latency ({env['cpu']})",
          "", f"`benchmarks/openvino_preset_latency.py`: {args.threads} threads, batch 1, "
          f"{args.rounds} interleaved rounds × 10 runs (order rotated), {env['date']}; "
          f"{args.calibration_images} calibration images; zoo rows have seeded weights.", "",
          "| model | fp32 p50 ms | INT8 performance | INT8 mixed | mixed ÷ performance, median "
          "of rounds [range] | round spread fp32 / perf / mixed |",
          "|---|---:|---:|---:|---|---|"]
    for name, r in rows.items():
        p, s = r["p50_ms"], r["spread"]
        md.append(f"| {name} | {p['fp32']:.3f} | {p['performance']:.3f} | {p['mixed']:.3f} | "
                  f"{r['mixed_over_performance']:.3f} [{r['ratio_range'][0]:.3f}, "
                  f"{r['ratio_range'][1]:.3f}] | {s['fp32']:.2f} / {s['performance']:.2f} / "
                  f"{s['mixed']:.2f} |")
    write_results(args.name, {"environment": env, "config": {k: str(v) for k, v in
                                                             vars(args).items()},
                              "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
