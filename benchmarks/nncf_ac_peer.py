"""The peer edgekit's INT8 rescue must beat: NNCF's ``quantize_with_accuracy_control``.

On the one backend NNCF serves (OpenVINO), NNCF's accuracy control quantizes, validates on
labelled images and reverts the quantizers that cost the most until the drop is within
``max_drop``. This script runs it as a user would on an ONNX classifier (same calibration
budget as edgekit's int8 recipe: 300 images; validation: 600 labelled images of the training
side, like edgekit's verification cap in ``byom_real.py``) and measures the result on held-out
images the way ``byom_real.py`` measures edgekit's artifacts: top-1 and every class's
sensitivity against the fp32 model, top-1 agreement, and the batch-1 p50 of the INT8 model
against the fp32 one (interleaved, same process).

Usage (the folders ``byom_real.py --keep`` leaves: the tf2onnx MobileNetV2, its preprocessing,
the training-side view and the held-out folder)::

    .venv/bin/python benchmarks/nncf_ac_peer.py WORK/mnv2_nhwc.onnx --preprocess WORK/mnv2.yaml \\
        --train WORK/train_view --heldout WORK/heldout --name nncf_ac_mnv2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_results  # noqa: E402
from edgekit.calibrate import stratified_sample  # noqa: E402
from edgekit.data.folder import scan  # noqa: E402
from edgekit.evaluate import load_arrays  # noqa: E402
from edgekit.sources import load_model  # noqa: E402


def say(msg: str) -> None:
    print(f"[nncf_ac_peer] {msg}", file=sys.stderr, flush=True)


def run(compiled, x: np.ndarray, batch: int = 1) -> np.ndarray:
    req = compiled.create_infer_request()
    return np.concatenate([req.infer({0: x[i:i + batch]})[0].copy()
                           for i in range(0, len(x), batch)])


def sensitivities(pred: np.ndarray, y: np.ndarray, k: int) -> list[float]:
    return [float(np.mean(pred[y == c] == c)) if np.any(y == c) else float("nan")
            for c in range(k)]


def p50s(models: dict, x1: np.ndarray, rounds: int = 5, runs: int = 40) -> dict[str, float]:
    """Interleaved: each round times every model ``runs`` times; the median of the round
    medians."""
    reqs = {k: m.create_infer_request() for k, m in models.items()}
    for r in reqs.values():
        for _ in range(10):
            r.infer({0: x1})
    out: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, r in reqs.items():
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                r.infer({0: x1})
                t.append(time.perf_counter() - t0)
            out[k].append(1e3 * statistics.median(t))
    return {k: statistics.median(v) for k, v in out.items()}


def f32_config(threads: int) -> dict:
    """f32 as edgekit's OpenVINO artifacts: on CPUs with AMX OpenVINO's default is bf16 (the
    plain fp32 IR then differs from the ONNX model by up to 0.13 in this model's outputs)."""
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}


def accuracy_control(fp32_model, x_cal: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     max_drop: float):
    """NNCF ``quantize_with_accuracy_control`` as a user calls it: the calibration images, the
    labelled validation images with a top-1 ``validation_fn``, an absolute ``max_drop``.
    Returns the quantized OpenVINO model and the seconds it took."""
    import nncf

    def validate(compiled, data) -> float:
        xs, ys = zip(*data, strict=True)
        logits = run(compiled, np.stack(xs), batch=32)
        return float(np.mean(logits.argmax(1) == np.array(ys)))

    t0 = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        fp32_model,
        calibration_dataset=nncf.Dataset(list(x_cal), lambda a: a[None]),
        validation_dataset=nncf.Dataset(list(zip(x_val, y_val, strict=True)),
                                        lambda item: item),
        validation_fn=validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(x_cal))
    return quantized, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", type=Path, help="ONNX classifier")
    ap.add_argument("--preprocess", type=Path, required=True, help="its preprocessing YAML")
    ap.add_argument("--train", type=Path, required=True, help="labelled training-side folder")
    ap.add_argument("--heldout", type=Path, required=True, help="held-out folder (never used "
                    "by calibration or validation)")
    ap.add_argument("--calibration-images", type=int, default=300)
    ap.add_argument("--validation-images", type=int, default=600)
    ap.add_argument("--max-drop", type=float, default=0.01, help="NNCF max_drop (absolute)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="nncf_ac_peer", help="results file stem")
    args = ap.parse_args()

    import nncf
    import openvino as ov

    src = load_model(args.model, preprocess=args.preprocess)
    train, held = scan(args.train), scan(args.heldout)
    calib = stratified_sample(train.samples, args.calibration_images, args.seed)
    used = {s.path for s in calib}
    rest = [s for s in train.samples if s.path not in used]
    val = stratified_sample(rest, args.validation_images, args.seed + 1)
    x_cal, _ = load_arrays(train.subset(calib), src.spec, description="calibration images")
    x_val, y_val = load_arrays(train.subset(val), src.spec, description="validation images")
    x_ho, y_ho = load_arrays(held, src.spec, description="held-out images")
    k = len(held.classes)

    core = ov.Core()
    cfg = f32_config(args.threads)
    fp32_model = ov.convert_model(str(args.model))
    fp32 = core.compile_model(fp32_model, "CPU", cfg)
    quantized, seconds = accuracy_control(fp32_model, x_cal, x_val, y_val, args.max_drop)
    say(f"quantize_with_accuracy_control: {seconds:.0f} s")
    int8 = core.compile_model(quantized, "CPU", cfg)

    ref = run(fp32, x_ho, batch=32).argmax(1)
    got = run(int8, x_ho, batch=32).argmax(1)
    s_ref, s_got = sensitivities(ref, y_ho, k), sensitivities(got, y_ho, k)
    drops = {c: round(100 * (a - b), 2) for c, a, b in zip(held.classes, s_ref, s_got,
                                                             strict=True)}
    lat = p50s({"fp32": fp32, "int8": int8}, x_ho[:1])
    row = {"top1_fp32": float(np.mean(ref == y_ho)), "top1_int8": float(np.mean(got == y_ho)),
           "delta_points": round(100 * (np.mean(got == y_ho) - np.mean(ref == y_ho)), 2),
           "agreement": float(np.mean(ref == got)), "sensitivity_drop_points": drops,
           "worst_class": max(drops, key=drops.get), "p50_ms": lat,
           "seconds": round(seconds, 1), "n_heldout": int(len(y_ho)),
           "n_validation": int(len(y_val)), "n_calibration": int(len(x_cal))}
    env = environment()
    md = [f"# NNCF quantize_with_accuracy_control (OpenVINO) on `{args.model.name}`", "",
          f"- machine: {env['cpu']}, {env['cores']} cores, {env['date']}; nncf "
          f"{nncf.__version__}, openvino {ov.__version__}",
          f"- calibration {row['n_calibration']} images, validation {row['n_validation']} "
          f"labelled images (training side), max_drop {args.max_drop} absolute; measured on "
          f"{row['n_heldout']} held-out images", "",
          "| top-1 fp32 | top-1 INT8 | Δ (pt) | worst class Δ (pt) | agreement | p50 fp32 ms | "
          "p50 INT8 ms | quantize s |", "|---:|---:|---:|---|---:|---:|---:|---:|",
          f"| {100 * row['top1_fp32']:.2f} % | {100 * row['top1_int8']:.2f} % | "
          f"{row['delta_points']:+.2f} | {row['worst_class']} {-drops[row['worst_class']]:+.2f} | "
          f"{row['agreement']:.4f} | {lat['fp32']:.3f} | {lat['int8']:.3f} | {seconds:.0f} |", "",
          "Per-class sensitivity drops (points, fp32 − INT8): "
          + ", ".join(f"{c} {v:+.2f}" for c, v in drops.items())]
    write_results(args.name, {"environment": env, "config": {k: str(v) for k, v in
                                                             vars(args).items()},
                              "result": row}, "\n".join(md))


if __name__ == "__main__":
    main()
