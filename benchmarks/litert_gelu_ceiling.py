"""Issue 18, LiteRT INT8 of PruDensNet: what its parts cost (the GELUs, the 7×7 depthwise convs).

The same seeded PruDensNet (256²) is exported with edgekit's LiteRT INT8 path as it is (exact
GELU; each 7×7 depthwise conv as three pieces summed, see ``backends.litert.xnnpack_fit``) and
with one part swapped: every ``nn.GELU`` for ReLU (the ceiling: an activation XNNPACK fuses into
the int8 convolution), the tanh GELU, ``x·σ(1.702x)``; every 7×7 depthwise conv for a 5×5 or a
3×3 one (what a depthwise conv XNNPACK runs in one kernel costs). Each ``.tflite`` says which
ops run off XNNPACK (``fast_path``); all are timed in one process, interleaved rounds, 2 threads,
batch 1. Latency only (the swaps change the model: not an accuracy claim).

    .venv/bin/python benchmarks/litert_gelu_ceiling.py        # ~4 min
    .venv/bin/python benchmarks/litert_gelu_ceiling.py --variants "ReLU (ceiling)"
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import environment, release_work_folder, work_folder, write_results
from edgekit.backends import ExportRequest, QuantOptions, require_backend
from edgekit.calibrate import StreamedImages, stratified_sample
from edgekit.data.folder import scan
from edgekit.data.phantoms import generate_mri_dataset
from edgekit.quantize.rescue import p50_ms
from edgekit.sources import load_model
from edgekit.zoo import create_model


class QuickGelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def depthwise(kernel: int):
    """Every 7×7 depthwise conv replaced by a ``kernel``² one (fresh weights: a latency proxy
    for what a depthwise conv XNNPACK runs in one kernel would cost instead of the row bands)."""
    def swap(module: nn.Module) -> int:
        n = 0
        for parent in list(module.modules()):
            for key, child in list(parent.named_children()):
                if (isinstance(child, nn.Conv2d) and child.groups == child.in_channels > 1
                        and child.kernel_size == (7, 7)):
                    setattr(parent, key, nn.Conv2d(child.in_channels, child.out_channels,
                                                   kernel, padding=kernel // 2,
                                                   groups=child.groups, bias=False))
                    n += 1
        return n
    return swap


def gelus(make):
    def swap(module: nn.Module) -> int:
        n = 0
        for parent in list(module.modules()):
            for key, child in list(parent.named_children()):
                if isinstance(child, nn.GELU):
                    setattr(parent, key, make())
                    n += 1
        return n
    return swap


VARIANTS = {"exact GELU (as is)": None, "ReLU (ceiling)": gelus(nn.ReLU),
            "tanh GELU": gelus(lambda: nn.GELU(approximate="tanh")),
            "x·σ(1.702x)": gelus(QuickGelu),
            "depthwise 5×5 (proxy)": depthwise(5), "depthwise 3×3 (proxy)": depthwise(3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--variants", nargs="+", default=None,
                    help=f"a subset of: {', '.join(VARIANTS)} [all]")
    ap.add_argument("--name", default=None, help="results file stem [litert_gelu_ceiling_SIZE]")
    args = ap.parse_args()
    work = work_folder(args.workdir, "litert-gelu-")
    backend = require_backend("litert")
    rows: dict[str, dict] = {}
    try:
        torch.manual_seed(0)
        weights = work / "prudensnet.pt"
        torch.save(create_model("prudensnet", input_size=args.size).state_dict(), weights)
        data = generate_mri_dataset(work / "mri", 16, size=args.size)
        calib = stratified_sample(scan(data).samples, 48, 0)
        sessions = {}
        for name, make in VARIANTS.items():
            if args.variants and name not in args.variants and name != "exact GELU (as is)":
                continue
            loaded = load_model(f"prudensnet:{weights}", input_size=args.size)
            swapped = 0 if make is None else make(loaded.module)
            t0 = time.perf_counter()
            art = backend.export(ExportRequest(
                model=loaded, precision="int8", out_dir=work / f"v{len(rows)}", stem="m",
                calibration=StreamedImages(calib, loaded.spec),
                options=QuantOptions(method="minmax", seed=0)))
            off: dict[str, int] = {}
            for op in backend.fast_path(art.path, "int8").ops:
                off[op.op] = off.get(op.op, 0) + 1
            rows[name] = {"layers_swapped": swapped, "off_fast_path": off,
                          "export_s": round(time.perf_counter() - t0, 1), "round_p50_ms": []}
            sessions[name] = backend.open(art.path, threads=args.threads)
        x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
        for s in sessions.values():
            for _ in range(5):
                s.run(x)
        for _ in range(args.rounds):
            for name, s in sessions.items():
                rows[name]["round_p50_ms"].append(
                    round(p50_ms(lambda s=s: s.run(x), warmup=0, runs=args.iters), 3))
    finally:
        release_work_folder(work, args.workdir, args.keep, print)
    for r in rows.values():
        r["p50_ms"] = statistics.median(r["round_p50_ms"])
        r["spread"] = round(max(r["round_p50_ms"]) / min(r["round_p50_ms"]), 3)
    base = rows["exact GELU (as is)"]["p50_ms"]
    lines = [f"# LiteRT INT8 PruDensNet {args.size}²: what the GELUs and the 7×7 depthwise "
             "convs cost", "",
             f"`benchmarks/litert_gelu_ceiling.py`: {environment().get('cpu', '?')}, "
             f"{args.threads} threads, batch 1, {args.rounds} interleaved rounds × {args.iters} "
             "runs, median of the rounds' medians. Seeded weights, 48 phantom calibration "
             "images; the swapped variants are different models (latency only).", "",
             "| variant | layers swapped | ops off XNNPACK | p50 ms | vs as is | round spread |",
             "|---|---:|---|---:|---:|---:|"]
    for name, r in rows.items():
        off = ", ".join(f"{k} ×{v}" for k, v in r["off_fast_path"].items()) or "none"
        lines.append(f"| {name} | {r['layers_swapped']} | {off} | {r['p50_ms']:.2f} | "
                     f"{r['p50_ms'] / base:.2f}× | {r['spread']:.3f} |")
    write_results(args.name or f"litert_gelu_ceiling_{args.size}", {
        "environment": environment(), "threads": args.threads, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
