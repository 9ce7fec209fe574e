"""Train a zoo model on the real Kaggle Brain Tumor MRI Training folder; report validation metrics.

    .venv/bin/python benchmarks/train_real.py --model dsconv_cbam_gap --input-size 128 --epochs 15

The split is edgekit's de-duplicated, seeded, stratified split; the checkpoint goes to
benchmarks/checkpoints/ (ignored by git) for later benchmarks (compress, prune).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import environment, real_data_dir, write_results
from edgekit.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="dsconv_cbam_gap")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    out = Path(__file__).resolve().parent / "checkpoints" / f"{args.model}_{args.input_size}.pt"
    res = train(TrainConfig(model=args.model, data=str(data), out=str(out), epochs=args.epochs,
                            input_size=args.input_size, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, patience=5))
    acc = res.metrics["accuracy"]
    name = f"train_real_{args.model}_{args.input_size}"
    md = [f"# {args.model} on the real Kaggle Training folder ({args.input_size}²)", "",
          f"- split: {res.split['train']} train / {res.split['val']} validation after removing "
          f"{res.split['duplicates_removed']} near-duplicates (seed {args.seed})",
          f"- best epoch {res.best_epoch} of {len(res.history)} run ({args.epochs} max)",
          f"- validation accuracy **{100 * acc['value']:.2f} %** "
          f"[95 % CI {100 * acc['ci95'][0]:.2f}, {100 * acc['ci95'][1]:.2f}]",
          f"- macro-F1 {res.metrics['macro_f1']['value']:.4f}, "
          f"kappa {res.metrics['kappa']['value']:.4f}",
          f"- wall time {res.seconds / 60:.1f} min on {environment()['cores']} cores", "",
          "| class | sensitivity | specificity |", "|---|---:|---:|"]
    for cls, m in res.metrics["per_class"].items():
        md.append(f"| {cls} | {100 * m['sensitivity']['value']:.1f} % | "
                  f"{100 * m['specificity']['value']:.1f} % |")
    payload = {"environment": environment(), "config": vars(args), "seconds": res.seconds,
               "best_epoch": res.best_epoch, "history": res.history, "metrics": res.metrics,
               "split": {k: v for k, v in res.split.items() if k != "val_files"},
               "checkpoint": str(out)}
    write_results(name, payload, "\n".join(md))


if __name__ == "__main__":
    main()
