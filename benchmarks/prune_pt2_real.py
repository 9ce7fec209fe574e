"""Structured pruning of a ``torch.export`` program that is not a zoo model, on the real Kaggle
Brain Tumor MRI Training folder (issue 15 item 3).

    .venv/bin/python benchmarks/prune_pt2_real.py                  # 64², 8 epochs, prune30
    .venv/bin/python benchmarks/prune_pt2_real.py --limit 40 --epochs 1 --recovery-epochs 1

The model is what a third-party greyscale CNN looks like: 1 channel, 64×64, pixels normalised
with mean 0.5 / std 0.5, BatchNorm, a depthwise-separable residual block, global average
pooling, a Linear head; trained here in plain PyTorch and handed to edgekit as a ``.pt2``.

- split: edgekit's de-duplicated, seeded, stratified split (``split_dataset``); the model
  trains on the training side only, and ``edgekit prune`` is given a symlink view of the
  training side (its own verification images come from there), so the held-out images are
  never trained on by the model or by recovery;
- prune: ``python -m edgekit prune model.pt2 --data train_only --mean 0.5 --std 0.5 --out
  pruned.pt2 --recipe prune30`` (the user's command; Taylor importance, distillation recovery);
- scored: the source program and the pruned program (loaded back with ``load_model``, its
  spec from the program's record) on the held-out split, accuracy with 95 % CI, and MACs as
  ``edgekit inspect`` counts them.

Results: benchmarks/results/prune_pt2_real_<size>.{json,md} (``_smoke`` with --limit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import (
    environment,
    limit_per_class,
    real_data_dir,
    release_work_folder,
    symlink_folder,
    work_folder,
    write_results,
)
from edgekit.data.folder import scan, split_dataset
from edgekit.data.preprocess import PreprocessSpec
from edgekit.evaluate import load_arrays, score


def say(msg: str) -> None:
    print(f"[prune_pt2_real] {msg}", flush=True)


def build(width: int):
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.pw = nn.Conv2d(c, c, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))

    def cbr(i: int, o: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o),
                             nn.ReLU())

    class GreyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = width
            self.features = nn.Sequential(cbr(1, w, 1), cbr(w, w, 2), cbr(w, 2 * w, 1),
                                          cbr(2 * w, 2 * w, 2), Block(2 * w),
                                          cbr(2 * w, 4 * w, 2), Block(4 * w))
            self.head = nn.Linear(4 * w, 4)

        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.head(torch.flatten(x, 1))

    return GreyNet()


def train(x: np.ndarray, y: np.ndarray, args: argparse.Namespace):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(args.seed)
    model = build(args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(x) / 32))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, steps))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    history = []
    for epoch in range(args.epochs):
        model.train()
        total, n = 0.0, 0
        for idx in torch.randperm(len(xt)).split(32):
            xb = xt[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        history.append({"epoch": epoch + 1, "loss": round(total / n, 4)})
        say(f"epoch {epoch + 1}: loss {total / n:.4f}")
    return model.eval(), history






def edgekit(*args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgekit", *map(str, args)]
    say("$ edgekit " + " ".join(map(str, args)))
    return subprocess.run(cmd, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--recipe", default="prune30")
    ap.add_argument("--recovery-epochs", type=int, default=None)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="images per class (smoke run)")
    ap.add_argument("--model", type=Path, default=None,
                    help="a .pt2 this script trained before (same split and seed; kept with "
                         "--keep): skip training")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    data = real_data_dir()
    if data is None:
        say("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
        return 2
    import torch

    t_all = time.perf_counter()
    work = work_folder(args.workdir, "prune_pt2_real_")
    work.mkdir(parents=True, exist_ok=True)
    name = (f"prune_pt2_real_{args.size}" + ("_smoke" if args.limit else "")
            + ("" if args.recovery_epochs is None else f"_rec{args.recovery_epochs}"))
    dataset = scan(data)
    if args.limit:
        dataset = limit_per_class(dataset, args.limit)
    split = split_dataset(dataset, val_fraction=args.val_fraction, seed=args.seed)
    summary = split.summary()
    say(f"split: {summary['train']} train / {summary['val']} held-out")
    spec = PreprocessSpec(input_size=args.size, color="gray", mean=(0.5,), std=(0.5,))
    x_tr, y_tr = load_arrays(split.train, spec, description="Loading train")
    x_va, y_va = load_arrays(split.val, spec, description="Loading held-out")

    t0 = time.perf_counter()
    source = work / "greynet.pt2"
    if args.model is None:
        model, history = train(x_tr, y_tr, args)
        torch.export.save(torch.export.export(model, (torch.zeros(1, 1, args.size, args.size),)),
                          str(source))
    else:
        history, source = [], args.model.resolve()
        say(f"reusing {source} (not trained again)")
    train_seconds = time.perf_counter() - t0
    train_only = work / "train_only"
    if not train_only.is_dir():
        symlink_folder(split.train, train_only)

    pruned = work / f"{name}.pt2"
    extra = [] if args.recovery_epochs is None else ["--epochs", args.recovery_epochs]
    t0 = time.perf_counter()
    res = edgekit("prune", source, "--data", train_only, "--mean", "0.5", "--std", "0.5",
                  "--recipe", args.recipe, "--out", pruned, "--json", "--allow-accuracy-drop",
                  *extra)
    prune_seconds = time.perf_counter() - t0
    if res.returncode != 0:
        say(res.stderr[-3000:])
        return 1
    record = json.loads(res.stdout)
    macs = {}
    for key, path in (("source", source), ("pruned", pruned)):
        out = edgekit("inspect", path, "--json")  # MACs do not depend on the normalisation
        macs[key] = json.loads(out.stdout)["macs"]

    from edgekit.sources import load_model
    from edgekit.sources.declared import declared

    classes = split.train.classes
    src = load_model(source, preprocess=declared(mean=(0.5,), std=(0.5,))).with_classes(
        tuple(classes))
    prn = load_model(pruned)
    assert prn.spec == src.spec, (prn.spec, src.spec)
    rows = {}
    for key, loaded in (("source", src), ("pruned", prn)):
        m = score(y_va, loaded.predict(x_va), task="multiclass", class_names=tuple(classes),
                  seed=args.seed)
        acc = m["accuracy"]
        rows[key] = {"accuracy": acc["value"], "ci95": acc.get("ci95"), "macs": macs[key]}
        say(f"{key}: held-out accuracy {100 * acc['value']:.2f} %, MACs {macs[key]:,}")

    payload = {
        "environment": environment(), "args": {k: str(v) for k, v in vars(args).items()},
        "split": summary, "train_seconds": train_seconds, "train_history": history,
        "prune_seconds": prune_seconds, "held_out": rows,
        "macs_fraction": macs["pruned"] / macs["source"],
        "prune_record": {k: record.get(k) for k in (
            "macs_before", "macs_after", "macs_fraction", "params_before", "params_after",
            "widths_before", "widths_after", "blocked", "recovery", "verification",
            "source_metrics", "passed")},
        "seconds": time.perf_counter() - t_all,
    }
    r = {k: {**v, "ci": "[{:.1f}, {:.1f}]".format(*(100 * c for c in v["ci95"]))
             if v["ci95"] else "-"} for k, v in rows.items()}
    md = f"""# prune_pt2_real ({args.size}², {args.recipe})

A non-zoo greyscale CNN (mean/std 0.5, BN, depthwise residual blocks, GAP, Linear head) trained
{'(reused with --model) ' if args.model else f'{args.epochs} epochs '}on the training side of edgekit's de-duplicated split of the real MRI
Training folder, exported with torch.export, pruned with `edgekit prune model.pt2 --recipe
{args.recipe}` (recovery by distillation on the training side only), both programs scored on the
{summary['val']} held-out images.

| model | MACs | accuracy (held-out) | 95 % CI |
|---|---:|---:|---|
| source .pt2 | {r['source']['macs']:,} | {100 * r['source']['accuracy']:.2f} % | {r['source']['ci']} |
| pruned .pt2 | {r['pruned']['macs']:,} | {100 * r['pruned']['accuracy']:.2f} % | {r['pruned']['ci']} |

Recovery epochs: {args.recovery_epochs or 'the recipe default (8, early-stopped)'}.
MACs kept: {100 * payload['macs_fraction']:.1f} %; parameters {record['params_before']:,} →
{record['params_after']:,}; prune wall time {prune_seconds:.0f} s, training {train_seconds:.0f} s{' (reused model)' if args.model else ''}
({payload['environment']['cpu']}, {payload['environment']['torch_threads']} torch threads).
Gate of `edgekit prune` on its own verification images (training side): passed = {record['passed']}.
"""
    write_results(name, payload, md)
    release_work_folder(work, args.workdir, args.keep, say)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
