"""Issue 18, LiteRT: two exact forms of a depthwise conv wider than XNNPACK's 25-tap kernels.

``backends.litert.xnnpack_fit`` hands litert-torch each wider depthwise conv as a sum of pieces
XNNPACK runs fast. Two forms compute the same function:

* **bands**: consecutive rows (7×7: rows 0-2, 3-5, 6) read from the input padded once: one PAD
  and one SLICE per band in the graph;
* **sets** (edgekit's form for fp32/fp16 where it applies): rows symmetric about the centre
  (7×7: rows 2-4, rows 1 and 5 dilated 4, rows 0 and 6 dilated 6), each a same-padded conv: no
  PAD, no SLICE, but 2-row pieces of 14 taps run in the 25-tap kernel.

The same seeded PruDensNet (six 7×7 depthwise convs) is exported in both forms, fp32 and INT8
(32 phantom calibration images) — each precision in both forms, whatever the export would
choose — and timed in one process: 2 threads, batch 1, interleaved
rounds of 10 runs each; per round the ratio sets ÷ bands, and the median of those ratios.

    .venv/bin/python benchmarks/litert_wide_depthwise.py            # ~4 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import edgekit.backends.litert as litert  # noqa: E402
from _common import environment, write_results  # noqa: E402
from edgekit.backends import ExportRequest, QuantOptions, require_backend  # noqa: E402
from edgekit.calibrate import StreamedImages, stratified_sample  # noqa: E402
from edgekit.data.folder import scan  # noqa: E402
from edgekit.data.phantoms import generate_mri_dataset  # noqa: E402
from edgekit.quantize.rescue import p50_ms  # noqa: E402
from edgekit.sources import load_model  # noqa: E402
from edgekit.zoo import create_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    backend, sessions, exact = require_backend("litert"), {}, {}
    fit = litert.xnnpack_fit  # the export's choice (sets for float, bands for INT8) overridden
    with tempfile.TemporaryDirectory(prefix="litert-wide-") as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        weights = work / "prudensnet.pt"
        torch.save(create_model("prudensnet", input_size=args.size).state_dict(), weights)
        data = generate_mri_dataset(work / "mri", 8, size=args.size)
        calib = stratified_sample(scan(data).samples, 32, 0)
        try:
            for form in ("bands", "sets"):
                litert.xnnpack_fit = (lambda m, t, symmetric=False, _s=form == "sets":
                                      fit(m, t, symmetric=_s))
                for precision in ("fp32", "int8"):
                    loaded = load_model(f"prudensnet:{weights}", input_size=args.size)
                    art = backend.export(ExportRequest(
                        loaded, precision, work / f"{form}-{precision}", "m",
                        StreamedImages(calib, loaded.spec) if precision == "int8" else None,
                        QuantOptions()))
                    sessions[form, precision] = backend.open(art.path, threads=args.threads)
        finally:
            litert.xnnpack_fit = fit
        x = np.stack([c[0] for c in StreamedImages(calib[:8], loaded.spec)])
        with torch.no_grad():
            ref = loaded.module(torch.from_numpy(x)).numpy()
        for key, s in sessions.items():
            exact[key] = float(np.abs(s.run(x) - ref).max())
    times: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(x[:1])
    for _ in range(args.rounds):
        for key, s in sessions.items():
            times[key].append(p50_ms(lambda s=s: s.run(x[:1]), warmup=0, runs=10))
    env = environment()
    md = [f"# LiteRT, PruDensNet {args.size}²: a 7×7 depthwise conv as row sets vs row bands",
          "", f"`benchmarks/litert_wide_depthwise.py`: {env['cpu']}, {args.threads} threads, "
          f"batch 1, {args.rounds} interleaved rounds × 10 runs, {env['date']}; seeded weights "
          "(latency only).", "",
          "| precision | bands p50 ms | sets p50 ms | sets ÷ bands, median of rounds [range] | "
          "max |diff| vs PyTorch: bands / sets | round spread: bands / sets |",
          "|---|---:|---:|---|---|---|"]
    rows = {}
    for precision in ("fp32", "int8"):
        b, s = times["bands", precision], times["sets", precision]
        ratio = [a / c for a, c in zip(s, b, strict=True)]
        rows[precision] = {"bands_ms": b, "sets_ms": s, "ratio_median": statistics.median(ratio),
                           "max_abs_diff": [exact["bands", precision], exact["sets", precision]]}
        md.append(f"| {precision} | {statistics.median(b):.2f} | {statistics.median(s):.2f} | "
                  f"{statistics.median(ratio):.3f} [{min(ratio):.3f}, {max(ratio):.3f}] | "
                  f"{exact['bands', precision]:.2e} / {exact['sets', precision]:.2e} | "
                  f"{max(b) / min(b):.2f} / {max(s) / min(s):.2f} |")
    write_results(f"litert_wide_depthwise_{args.size}",
                  {"environment": env, "config": vars(args), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
