"""Compress a model on the real MRI data and record accuracy, agreement, sizes, time and memory.

    # accuracy of INT8 vs fp32 on the checkpoint's held-out split (all of it)
    .venv/bin/python benchmarks/compress_bench.py benchmarks/checkpoints/dsconv_cbam_gap_128.pt
    # the speed/memory goal: prudensnet at 256², 300 calibration images, all three backends
    .venv/bin/python benchmarks/compress_bench.py prudensnet --input-size 256 \\
        --verification-images 200 --name compress_time_prudensnet_256
    # structured pruning (30 % of the MACs) + distillation recovery + INT8, bundle kept
    .venv/bin/python benchmarks/compress_bench.py benchmarks/checkpoints/dsconv_cbam_gap_128.pt \\
        --recipe prune30-int8 --keep /tmp/prune30-dsconv

For pruning recipes the gate and every delta are against the UNPRUNED source model; the pruned
PyTorch model's own accuracy, MACs and the recovery history are recorded too.

Peak memory is the process's maximum resident set size (ru_maxrss), which includes the
converters (NNCF, ORT calibration, litert-torch/TensorFlow) running in this process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import environment, real_data_dir, write_results
from edgekit.compress import compress
from edgekit.sources import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("source", help="checkpoint, ARCH:weights.pt or a zoo name (fresh weights)")
    ap.add_argument("--recipe", default="int8")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--calibration-images", type=int, default=None)
    ap.add_argument("--verification-images", type=int, default=100_000,
                    help="held-out images to verify on (default: all of them)")
    ap.add_argument("--calibration-method", default=None,
                    choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--backend", action="append", default=None, help="only these backends")
    ap.add_argument("--name", default=None, help="results file stem")
    ap.add_argument("--epochs", type=int, default=None, help="pruning recipes: recovery epochs")
    ap.add_argument("--keep", type=Path, default=None, help="write the bundle here (kept)")
    args = ap.parse_args()
    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    loaded = load_model(args.source, input_size=args.input_size)
    name = args.name or f"compress_real_{loaded.name}_{loaded.spec.height}_{args.recipe}" + (
        f"_{args.calibration_method}" if args.calibration_method else "")
    recipe = args.recipe
    if args.epochs is not None:
        from edgekit.prune import pruning_recipe

        recipe = pruning_recipe(args.recipe, **{"pruning.recovery.epochs": args.epochs})
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = compress(loaded, data=data, out=args.keep or Path(tmp) / "bundle", recipe=recipe,
                       calibration_images=args.calibration_images, backends=args.backend,
                       calibration_method=args.calibration_method,
                       verification_images=args.verification_images, allow_accuracy_drop=True)
        wall = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    src_acc = res.source_metrics["accuracy"]["value"]
    rows = []
    for a in res.artifacts:
        v = a.verification.to_json()
        rows.append({"artifact": a.name, "bytes": a.bytes, "export_seconds": a.export_seconds,
                     "accuracy": v["metrics"]["accuracy"]["value"],
                     "accuracy_delta_points": 100 * (v["metrics"]["accuracy"]["value"] - src_acc),
                     "accuracy_delta_ci95": [100 * x for x in v["accuracy_delta"]["ci95"]],
                     "top1_agreement": v["top1_agreement"],
                     "max_abs_logit_diff": v["max_abs_logit_diff"], "passed": a.passed,
                     "decision": v["decision"],
                     "failed_checks": [_check_text(c) for c in v["checks"]
                                       if c["decision"] != "pass"],
                     "rescue": (a.artifact.quantization or {}).get("rescue")})
    pruning = res.manifest.pruning
    md_pruning = []
    if pruning:
        pv = pruning["verification"]
        p_acc = pv["metrics"]["accuracy"]["value"]
        pruning_row = {"macs_before": pruning["macs_before"], "macs_after": pruning["macs_after"],
                       "macs_fraction": pruning["macs_fraction"],
                       "params_before": pruning["params_before"],
                       "params_after": pruning["params_after"],
                       "accuracy": p_acc, "accuracy_delta_points": 100 * (p_acc - src_acc),
                       "accuracy_delta_ci95": [100 * x for x in pv["accuracy_delta"]["ci95"]],
                       "top1_agreement": pv["top1_agreement"], "passed": pv["passed"],
                       "recovery": pruning["recovery"],
                       "recovery_images": pruning["recovery_images"],
                       "widths_after": pruning["widths_after"], "steps": pruning["steps"]}
        rec_rows = [f"epoch {h['epoch']}: val {h.get('val_accuracy', float('nan')):.4f}"
                    for r in pruning["recovery"] for h in r["history"]]
        md_pruning = [
            f"- pruned to **{100 * pruning['macs_fraction']:.1f} %** of the MACs "
            f"({pruning['macs_before'] / 1e6:.1f} M → {pruning['macs_after'] / 1e6:.1f} M), "
            f"parameters {pruning['params_before']:,} → {pruning['params_after']:,}",
            f"- pruned + recovered PyTorch fp32: **{100 * p_acc:.2f} %** "
            f"({100 * (p_acc - src_acc):+.2f} points vs the unpruned source, 95 % CI "
            f"[{100 * pv['accuracy_delta']['ci95'][0]:+.2f}, "
            f"{100 * pv['accuracy_delta']['ci95'][1]:+.2f}]), top-1 agreement "
            f"{pv['top1_agreement']:.4f}",
            f"- recovery on {pruning['recovery_images']['train']} images (validation "
            f"{pruning['recovery_images']['validation']}, never the verification images): "
            + ("; ".join(rec_rows) or "none")]
    md = [f"# compress {args.source} ({loaded.spec.height}², recipe {args.recipe}) on the real "
          "Kaggle MRI Training folder", "",
          f"- source: {'trained checkpoint' if loaded.pretrained else 'fresh zoo weights'}; "
          f"verification on {res.data['verification_images']} held-out images "
          f"({res.data['origin']}); {res.data['calibration_images']} calibration images",
          f"- source (PyTorch fp32) accuracy **{100 * src_acc:.2f} %**",
          f"- compress wall time **{wall:.0f} s** (all backends, incl. verification), "
          f"peak RSS **{peak_gb:.2f} GB**, {environment()['cores']} cores", *md_pruning, "",
          "| artifact | size | export | accuracy | Δ vs fp32 source [95 % CI] | top-1 agreement "
          "| max abs logit diff | gate |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        gate = {"pass": "pass", "fail": "FAIL"}.get(r["decision"], "inconclusive")
        md.append(f"| {r['artifact']} | {r['bytes'] / 1e6:.2f} MB | {r['export_seconds']:.0f} s | "
                  f"{100 * r['accuracy']:.2f} % | {r['accuracy_delta_points']:+.2f} "
                  f"[{r['accuracy_delta_ci95'][0]:+.2f}, {r['accuracy_delta_ci95'][1]:+.2f}] | "
                  f"{r['top1_agreement']:.4f} | {r['max_abs_logit_diff']:.2e} | "
                  + gate + ("" if r["decision"] == "pass" else
                            ": " + "; ".join(r["failed_checks"])) + " |")
    rescued = [(r["artifact"], r["rescue"]) for r in rows if r["rescue"]]
    if rescued:
        md += ["", "INT8 rescue (layers kept in float, chosen on tuning images only):", ""]
        md += [f"- {name}: first gate {res_['first_decision']}, tuning agreement "
               f"{res_['first_tuning_agreement']:.3f} on {res_['tuning_images']} images; "
               f"{len(res_['attempts'])} attempt(s) (stopped: {res_.get('stopped', '?')}); "
               f"{res_.get('outcome', '')}"
               + (f"; {res_['latency']}" if res_.get("latency") else "")
               for name, res_ in rescued]
    write_results(name, {"environment": environment(), "source": args.source,
                         "recipe": args.recipe, "input_size": loaded.spec.height,
                         "wall_seconds": wall, "peak_rss_gb": peak_gb,
                         "source_accuracy": src_acc, "data": res.data, "artifacts": rows,
                         "pruning": pruning_row if pruning else None},
                  "\n".join(md))


def _check_text(c: dict) -> str:
    """``sensitivity drop: glioma (points) +1.13 [−0.4, +2.9] inconclusive (≈1,200 images)``."""
    ci = c.get("ci95")
    text = f"{c['check']} {c['value']:+.2f}" if c.get("value") is not None else c["check"]
    if ci:
        text += f" [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    text += f" {c['decision']} vs {c['limit']}"
    if c.get("images_to_decide"):
        text += f" (≈{c['images_to_decide']:,} images would decide it)"
    return text


if __name__ == "__main__":
    main()
