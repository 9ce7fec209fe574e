"""`edgekit bench` on the real MRI data: a trained checkpoint's INT8 and fp32 bundles on
x86-local, full timing protocol, accuracy on the checkpoint's held-out split (never trained on).

    .venv/bin/python benchmarks/bench_real.py benchmarks/checkpoints/dsconv_cbam_gap_128.pt

Writes the run folder (results.json, report.{json,csv,md,html}, pareto.png) to
benchmarks/results/bench_real_<arch>_<size>/ — the example report of the bench issue. Needs the
checkpoint (train it with benchmarks/train_real.py) and ../shared/data (or EDGEKIT_DATA_DIR).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, real_data_dir
from edgekit.bench.run import bench
from edgekit.compress import compress
from edgekit.sources import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--threads", type=int, action="append", default=None,
                    help="thread counts [default: the target's, 1 and all cores]")
    ap.add_argument("--quick", action="store_true", help="quick protocol (smoke run)")
    args = ap.parse_args()
    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    if not args.checkpoint.is_file():
        sys.exit(f"{args.checkpoint}: no such checkpoint (benchmarks/train_real.py writes it)")
    loaded = load_model(args.checkpoint)
    name = f"bench_real_{loaded.name}_{loaded.spec.height}" + ("_quick" if args.quick else "")
    with tempfile.TemporaryDirectory() as tmp:
        bundles = []
        for recipe in ("int8", "fp32"):
            out = Path(tmp) / f"{loaded.name}-{recipe}"
            compress(args.checkpoint, data=data, out=out, recipe=recipe,
                     allow_accuracy_drop=True)
            bundles.append(out)
        run = bench(bundles, target="x86-local", held_out=True, data=data,
                    threads=args.threads, quick=args.quick, out=Path(tmp) / "runs")
        dest = RESULTS / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run.run_dir, dest)
    print((dest / "report.md").read_text())
    print(f"report: {dest / 'report.html'}")


if __name__ == "__main__":
    main()
