"""Issue 14: how much of an INT8 artifact's accuracy change is the draw of its calibration images?

One result on 965 held-out images says little about an INT8 export when another draw of the same
number of calibration images moves it by half a point. This script exports the same source to
INT8 with edgekit's defaults (each backend's ``export``, 300 calibration images) for several
seeded draws of the calibration images from the training side, and — as the peer to beat — NNCF
``quantize_with_accuracy_control`` (OpenVINO) on the same draws (its labelled validation images are
another seeded draw from the rest of the training side). Every artifact is measured on the
held-out folder, which no draw and no validation touches: top-1 change against the source, the
largest drop of one class's sensitivity, agreement, and the paired 95 % CI of the top-1 change
(Tango, ``edgekit.verify.paired_drop_ci``). The summary gives, per row, the mean, standard
deviation and range over the draws.

    .venv/bin/python benchmarks/byom_real.py --cases keras_nhwc --keep --workdir WORK
    .venv/bin/python benchmarks/int8_calibration_draws.py WORK/mnv2_nhwc.onnx \\
        --preprocess WORK/mnv2.yaml --train WORK/train_view --heldout WORK/heldout \\
        --draws 5 --name int8_draws_mnv2

Accuracy only (no timing). Results: benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nncf_ac_peer import accuracy_control, f32_config, run  # noqa: E402

from _common import environment, paired, write_results  # noqa: E402
from edgekit.backends import ExportRequest, QuantOptions, get_backend  # noqa: E402
from edgekit.backends.base import ACTIVATION_RANGES  # noqa: E402
from edgekit.calibrate import StreamedImages, stratified_sample  # noqa: E402
from edgekit.data.folder import scan  # noqa: E402
from edgekit.evaluate import load_arrays  # noqa: E402
from edgekit.sources import load_model  # noqa: E402

PEER = "NNCF accuracy control → openvino (peer)"


def say(msg: str) -> None:
    print(f"[int8_draws] {msg}", file=sys.stderr, flush=True)


def scored(pred: np.ndarray, ref: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """Top-1 change (points) with its paired CI, worst class drop, agreement."""
    top1 = paired(ref == y, pred == y)
    drops = {c: 100 * (np.mean(ref[y == k] == k) - np.mean(pred[y == k] == k))
             for k, c in enumerate(classes) if np.any(y == k)}
    worst = max(drops, key=drops.get)
    return {"delta_points": round(top1["delta_points"], 2),
            "ci95_points": [round(v, 2) for v in top1["ci95_points"]],
            "worst_class": worst, "worst_class_drop_points": round(float(drops[worst]), 2),
            "agreement": round(float(np.mean(pred == ref)), 4),
            "discordant": [top1["a_right_b_wrong"], top1["b_right_a_wrong"]]}


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (f"{statistics.mean(values):+.2f} ± {sd:.2f} "
            f"[{min(values):+.2f}, {max(values):+.2f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="the source (any file edgekit loads)")
    ap.add_argument("--preprocess", type=Path, default=None, help="its preprocessing YAML")
    ap.add_argument("--train", type=Path, required=True,
                    help="labelled training-side folder (calibration and validation draws)")
    ap.add_argument("--heldout", type=Path, required=True,
                    help="labelled held-out folder (measurement only)")
    ap.add_argument("--draws", type=int, default=5, help="calibration draws (seeds 0..N-1)")
    ap.add_argument("--calibration-images", type=int, default=300)
    ap.add_argument("--validation-images", type=int, default=600,
                    help="the peer's labelled validation images")
    ap.add_argument("--max-drop", type=float, default=0.01, help="the peer's max_drop")
    ap.add_argument("--backends", nargs="+", default=["onnxruntime", "openvino", "litert"])
    ap.add_argument("--openvino-presets", nargs="+", default=["mixed"],
                    choices=["performance", "mixed"],
                    help="NNCF presets for edgekit's openvino rows (mixed, edgekit's default: "
                         "asymmetric activations; performance: symmetric)")
    ap.add_argument("--openvino-full-bias-correction", action="store_true",
                    help="add an OpenVINO row with NNCF's full bias correction "
                         "(fast_bias_correction=False; a rescue remedy in edgekit)")
    ap.add_argument("--ranges", nargs="+", default=None, choices=list(ACTIVATION_RANGES),
                    help="a row per backend and activation_ranges value (global: min/max over "
                         "all calibration images; mean: mean of each image's min/max); "
                         "default: one row with each backend's own default")
    ap.add_argument("--no-peer", action="store_true",
                    help="skip NNCF accuracy control (which needs an .onnx MODEL)")
    ap.add_argument("--name", default="int8_calibration_draws", help="results file stem")
    args = ap.parse_args()
    if not args.no_peer and args.model.suffix != ".onnx":
        ap.error("the NNCF peer converts an .onnx MODEL with OpenVINO: pass --no-peer")

    source = load_model(args.model, preprocess=args.preprocess)
    train, held = scan(args.train), scan(args.heldout)
    x_ho, y_ho = load_arrays(held, source.spec, description="held-out images")
    ref = source.predict(x_ho).argmax(1)
    classes = list(held.classes)
    say(f"source top-1 {100 * np.mean(ref == y_ho):.2f} % on {len(y_ho)} held-out images")
    peer_fp32 = None
    if not args.no_peer:
        import openvino as ov

        core = ov.Core()
        peer_fp32 = ov.convert_model(str(args.model))
    variants = []
    ranges = args.ranges or [None]
    for name in args.backends:
        base = get_backend(name)
        presets = args.openvino_presets if name == "openvino" else [None]
        for preset, r in itertools.product(presets, ranges):
            backend = base if preset is None else dataclasses.replace(base, preset=preset)
            what = [f"{preset} preset"] if preset else []
            what += [f"{r} ranges"] if r else []
            label = f"edgekit {name}" + (f" ({', '.join(what)})" if what else "")
            variants.append((label, backend, {"activation_ranges": r}))
        if name == "openvino" and args.openvino_full_bias_correction:
            variants.append((f"edgekit openvino ({base.preset} preset, full bias correction)",
                             base, {"fast_bias_correction": False}))
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="int8-draws-") as tmp:
        for seed in range(args.draws):
            calib = stratified_sample(train.samples, args.calibration_images, seed)
            for label, backend, overrides in variants:
                t0 = time.perf_counter()
                art = backend.export(ExportRequest(
                    source, "int8", Path(tmp) / f"{len(rows)}-{seed}", "m",
                    StreamedImages(calib, source.spec), QuantOptions(seed=seed, **overrides)))
                pred = backend.open(art.path).run(x_ho).argmax(1)
                row = {"seed": seed, **scored(pred, ref, y_ho, classes),
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.setdefault(label, []).append(row)
                say(f"draw {seed} {label}: {row}")
            if peer_fp32 is not None:
                used = {s.path for s in calib}
                val = stratified_sample([s for s in train.samples if s.path not in used],
                                        args.validation_images, seed + 1)
                x_cal, _ = load_arrays(train.subset(calib), source.spec,
                                       description="calibration images")
                x_val, y_val = load_arrays(train.subset(val), source.spec,
                                           description="validation images")
                quantized, seconds = accuracy_control(peer_fp32, x_cal, x_val, y_val,
                                                      args.max_drop)
                int8 = core.compile_model(quantized, "CPU", f32_config(2))
                pred = run(int8, x_ho, batch=32).argmax(1)
                row = {"seed": seed, **scored(pred, ref, y_ho, classes),
                       "seconds": round(seconds, 1)}
                rows.setdefault(PEER, []).append(row)
                say(f"draw {seed} peer: {row}")

    env = environment()
    md = [f"# INT8 accuracy over {args.draws} calibration draws: `{args.model.name}`", "",
          f"- machine: {env['cpu']}, {env['cores']} cores, {env['date']}",
          f"- source top-1 {100 * np.mean(ref == y_ho):.2f} % on {len(y_ho)} held-out images "
          f"(`{args.heldout}`), never used for calibration or validation",
          f"- each draw: {args.calibration_images} stratified calibration images from "
          f"`{args.train}` (seed = draw); the peer also gets {args.validation_images} labelled "
          f"validation images (seed + 1) from the rest, max_drop {args.max_drop}",
          "- Δ: artifact − source top-1 on the held-out images (points); worst class: the "
          "largest drop of one class's sensitivity (points); summary: mean ± sd [min, max] "
          "over the draws", "",
          "| row | Δ top-1 | worst class drop | agreement | within 0.5 pt top-1 and 2 pt "
          "per class |", "|---|---|---|---|---:|"]
    for label, rs in rows.items():
        ok = sum(r["delta_points"] >= -0.5 and r["worst_class_drop_points"] <= 2.0 for r in rs)
        md.append(f"| {label} | {summary([r['delta_points'] for r in rs])} | "
                  f"{summary([r['worst_class_drop_points'] for r in rs])} | "
                  f"{statistics.mean(r['agreement'] for r in rs):.4f} | {ok} of {len(rs)} |")
    md += ["", "Per draw (Δ top-1 [95 % CI] · worst class drop):", "",
           "| row | " + " | ".join(f"draw {s}" for s in range(args.draws)) + " |",
           "|---|" + "---|" * args.draws]
    for label, rs in rows.items():
        md.append(f"| {label} | " + " | ".join(
            f"{r['delta_points']:+.2f} [{r['ci95_points'][0]:+.2f}, {r['ci95_points'][1]:+.2f}]"
            f" · {r['worst_class']} {r['worst_class_drop_points']:.2f}" for r in rs) + " |")
    write_results(args.name, {"environment": env, "config": {k: str(v) for k, v in
                                                             vars(args).items()},
                              "n_heldout": int(len(y_ho)), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
