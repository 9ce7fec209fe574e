"""Issue 18, LiteRT INT8 of PruDensNet: how much of its time do the GELUs cost?

The same seeded PruDensNet (256²) is exported with edgekit's LiteRT INT8 path four times: as it
is (exact GELU), and with every ``nn.GELU`` swapped for ReLU (the ceiling: an activation XNNPACK
fuses into the int8 convolution), the tanh GELU, and ``x·σ(1.702x)``. Each ``.tflite`` says which
ops run off XNNPACK (``fast_path``); all four are timed in one process, interleaved rounds,
2 threads, batch 1. Latency only (the swaps change the model: not an accuracy claim).

    .venv/bin/python benchmarks/litert_gelu_ceiling.py        # ~3 min
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
from edgekit.sources import load_model
from edgekit.zoo import create_model


class QuickGelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


VARIANTS = {"exact GELU (as is)": None, "ReLU (ceiling)": nn.ReLU,
            "tanh GELU": lambda: nn.GELU(approximate="tanh"), "x·σ(1.702x)": QuickGelu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
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
            loaded = load_model(f"prudensnet:{weights}", input_size=args.size)
            swapped = 0
            if make is not None:
                for parent in list(loaded.module.modules()):
                    for key, child in list(parent.named_children()):
                        if isinstance(child, nn.GELU):
                            setattr(parent, key, make())
                            swapped += 1
            t0 = time.perf_counter()
            art = backend.export(ExportRequest(
                model=loaded, precision="int8", out_dir=work / f"v{len(rows)}", stem="m",
                calibration=StreamedImages(calib, loaded.spec),
                options=QuantOptions(method="minmax", seed=0)))
            off: dict[str, int] = {}
            for op in backend.fast_path(art.path, "int8").ops:
                off[op.op] = off.get(op.op, 0) + 1
            rows[name] = {"gelus_swapped": swapped, "off_fast_path": off,
                          "export_s": round(time.perf_counter() - t0, 1), "round_p50_ms": []}
            sessions[name] = backend.open(art.path, threads=args.threads)
        x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
        for s in sessions.values():
            for _ in range(5):
                s.run(x)
        for _ in range(args.rounds):
            for name, s in sessions.items():
                ts = []
                for _ in range(args.iters):
                    t0 = time.perf_counter()
                    s.run(x)
                    ts.append(time.perf_counter() - t0)
                rows[name]["round_p50_ms"].append(round(statistics.median(ts) * 1e3, 3))
    finally:
        release_work_folder(work, args.workdir, args.keep, print)
    for r in rows.values():
        r["p50_ms"] = statistics.median(r["round_p50_ms"])
        r["spread"] = round(max(r["round_p50_ms"]) / min(r["round_p50_ms"]), 3)
    base = rows["exact GELU (as is)"]["p50_ms"]
    lines = [f"# LiteRT INT8 PruDensNet {args.size}²: the GELUs' share of the time", "",
             f"`benchmarks/litert_gelu_ceiling.py`: {environment().get('cpu', '?')}, "
             f"{args.threads} threads, batch 1, {args.rounds} interleaved rounds × {args.iters} "
             "runs, median of the rounds' medians. Seeded weights, 48 phantom calibration "
             "images; the swapped variants are different models (latency only).", "",
             "| variant | GELUs swapped | ops off XNNPACK | p50 ms | vs as is | round spread |",
             "|---|---:|---|---:|---:|---:|"]
    for name, r in rows.items():
        off = ", ".join(f"{k} ×{v}" for k, v in r["off_fast_path"].items()) or "none"
        lines.append(f"| {name} | {r['gelus_swapped']} | {off} | {r['p50_ms']:.2f} | "
                     f"{r['p50_ms'] / base:.2f}× | {r['spread']:.3f} |")
    write_results(f"litert_gelu_ceiling_{args.size}", {
        "environment": environment(), "threads": args.threads, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
