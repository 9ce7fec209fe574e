"""Compress a model on the real MRI data and record accuracy, agreement, sizes, time and memory.

    # accuracy of INT8 vs fp32 on the checkpoint's held-out split (all of it)
    .venv/bin/python benchmarks/compress_bench.py benchmarks/checkpoints/dsconv_cbam_gap_128.pt
    # the speed/memory goal: prudensnet at 256², 300 calibration images, all three backends
    .venv/bin/python benchmarks/compress_bench.py prudensnet --input-size 256 \\
        --verification-images 200 --name compress_time_prudensnet_256

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
    args = ap.parse_args()
    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    loaded = load_model(args.source, input_size=args.input_size)
    name = args.name or f"compress_real_{loaded.name}_{loaded.spec.height}_{args.recipe}" + (
        f"_{args.calibration_method}" if args.calibration_method else "")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = compress(loaded, data=data, out=Path(tmp) / "bundle", recipe=args.recipe,
                       calibration_images=args.calibration_images, backends=args.backend,
                       calibration_method=args.calibration_method,
                       verification_images=args.verification_images, allow_accuracy_drop=True)
        wall = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    src_acc = res.source_metrics["accuracy"]["value"]
    rows = []
    for a in res.artifacts:
        v = a.verification
        rows.append({"artifact": a.name, "bytes": a.bytes, "export_seconds": a.export_seconds,
                     "accuracy": v["metrics"]["accuracy"]["value"],
                     "accuracy_delta_points": 100 * (v["metrics"]["accuracy"]["value"] - src_acc),
                     "accuracy_delta_ci95": [100 * x for x in v["accuracy_delta"]["ci95"]],
                     "top1_agreement": v["top1_agreement"],
                     "max_abs_logit_diff": v["max_abs_logit_diff"], "passed": a.passed,
                     "failed_checks": [f"{c['check']} {c['value']:+.2f} > {c['limit']}"
                                       for c in v["checks"] if not c["passed"]]})
    md = [f"# compress {args.source} ({loaded.spec.height}², recipe {args.recipe}) on the real "
          "Kaggle MRI Training folder", "",
          f"- source: {'trained checkpoint' if loaded.pretrained else 'fresh zoo weights'}; "
          f"verification on {res.data['verification_images']} held-out images "
          f"({res.data['origin']}); {res.data['calibration_images']} calibration images",
          f"- source (PyTorch fp32) accuracy **{100 * src_acc:.2f} %**",
          f"- compress wall time **{wall:.0f} s** (all backends, incl. verification), "
          f"peak RSS **{peak_gb:.2f} GB**, {environment()['cores']} cores", "",
          "| artifact | size | export | accuracy | Δ vs fp32 source [95 % CI] | top-1 agreement "
          "| max abs logit diff | gate |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['artifact']} | {r['bytes'] / 1e6:.2f} MB | {r['export_seconds']:.0f} s | "
                  f"{100 * r['accuracy']:.2f} % | {r['accuracy_delta_points']:+.2f} "
                  f"[{r['accuracy_delta_ci95'][0]:+.2f}, {r['accuracy_delta_ci95'][1]:+.2f}] | "
                  f"{r['top1_agreement']:.4f} | {r['max_abs_logit_diff']:.2e} | "
                  f"{'pass' if r['passed'] else 'FAIL: ' + '; '.join(r['failed_checks'])} |")
    write_results(name, {"environment": environment(), "source": args.source,
                         "recipe": args.recipe, "input_size": loaded.spec.height,
                         "wall_seconds": wall, "peak_rss_gb": peak_gb,
                         "source_accuracy": src_acc, "data": res.data, "artifacts": rows},
                  "\n".join(md))


if __name__ == "__main__":
    main()
