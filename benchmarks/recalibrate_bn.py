"""Re-estimate a checkpoint's BatchNorm statistics on clean training images; write a new one.

    .venv/bin/python benchmarks/recalibrate_bn.py benchmarks/checkpoints/prudensnet_64.pt \\
        benchmarks/checkpoints/prudensnet_64_bnrecal.pt

PruDensNet trains with GaussianNoise(0.1) on its input, so the running statistics of its
BatchNorm layers describe noisy inputs. This re-estimates them (``edgekit.train.
recalibrate_batchnorm``) on up to 2000 of the checkpoint's own training images (never its
held-out split) and prints the held-out accuracy before and after. Weights are unchanged.
"""

from __future__ import annotations

import argparse
import sys

from _common import real_data_dir
from edgekit.calibrate import plan_data
from edgekit.checkpoint import save_checkpoint
from edgekit.evaluate import load_arrays
from edgekit.sources import load_model
from edgekit.sources.torch import predict_module as predict
from edgekit.train import recalibrate_batchnorm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=2000)
    args = ap.parse_args()
    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    m = load_model(args.source)
    plan = plan_data(m, data, calibration_images=args.images, verification_images=100_000, seed=0)
    x_train, _ = load_arrays(plan.dataset.subset(plan.calibration), m.spec)
    x_val, y_val = load_arrays(plan.dataset.subset(plan.verification), m.spec)
    before = float((predict(m.module, x_val).argmax(1) == y_val).mean())
    n = recalibrate_batchnorm(m.module, x_train, images=args.images)
    after = float((predict(m.module, x_val).argmax(1) == y_val).mean())
    print(f"held-out accuracy ({len(y_val)} images, {plan.origin}): {100 * before:.2f} % -> "
          f"{100 * after:.2f} % after re-estimating BatchNorm on {n} training images")
    meta = dict(m.metadata)
    meta["bn_recalibrated"] = {"images": n, "held_out_accuracy_before": before,
                               "held_out_accuracy_after": after}
    save_checkpoint(args.out, m.module.state_dict(), meta)


if __name__ == "__main__":
    main()
