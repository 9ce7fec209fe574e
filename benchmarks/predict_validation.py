"""Validate the latency model (edgekit.bench.predict) on published Raspberry Pi 4 latencies.

Leave-one-out: every published RPi 4 point is predicted by its group's model fitted without it
(groups: board/runtime/precision/threads; ncnn at 1.8 GHz, XNNPACK at 1.5, TFLite at 1.95 —
the clock scales the compute peak, the bandwidth stays). Also checks transfer across boards
(RPi 4 ncnn coefficients on the RPi 5 and the Jetson Nano) and prints predicted latencies of the
edgekit zoo models. Writes benchmarks/results/predict_validation_rpi4.{md,json}.

    .venv/bin/python benchmarks/predict_validation.py [--yaml]
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import torch

from _common import environment, write_results
from edgekit.bench.predict import (
    BOARDS,
    Coeffs,
    fit_published,
    group_points,
    kernels,
    loo_errors,
    predict,
    published_points,
)
from edgekit.zoo import create_model

ZOO = (("prudensnet", 256), ("dsconv_cbam", 224), ("dsconv_cbam_gap", 224), ("ich_mrf", 256),
       ("mobilenetv2", 224))
# which fitted group stands for edgekit's runtimes: LiteRT runs on XNNPACK
ZOO_GROUPS = {"rpi4": {"fp32": "xnnpack/fp32/4", "int8": "xnnpack/int8/4"},
              "rpi5": {"fp16 (ncnn)": "ncnn/fp16/4"}}


def loo_table() -> tuple[list[dict], float]:
    rows = []
    for group, points in group_points(published_points("rpi4")).items():
        _, runtime, precision, threads = group.split("/")
        for p, (ms, err) in zip(points, loo_errors(points), strict=True):
            rows.append({"model": p.model, "runtime": runtime, "precision": precision,
                         "threads": int(threads), "clock_ghz": p.clock_ghz,
                         "published_ms": p.ms, "predicted_ms": round(ms, 1),
                         "error_pct": round(100 * err, 1), "source": p.source})
    return rows, float(np.median([abs(r["error_pct"]) for r in rows]))


def transfer_table(rpi4: dict[str, Coeffs]) -> list[dict]:
    """RPi 4 ncnn coefficients (same thread count) applied to other boards' hardware facts."""
    rows = []
    for board in ("rpi5", "jetson-nano"):
        for p in published_points(board):
            c = replace(rpi4[f"ncnn/fp32/{p.threads}"], precision=p.precision)
            ms = predict(p.kernels, c, p.hardware, clock_ghz=p.clock_ghz).ms
            rows.append({"board": board, "model": p.model, "precision": p.precision,
                         "threads": p.threads, "published_ms": p.ms, "predicted_ms": round(ms, 1),
                         "error_pct": round(100 * (ms / p.ms - 1), 1)})
    return rows


def zoo_predictions(fits: dict[str, dict[str, Coeffs]]) -> list[dict]:
    rows = []
    for name, size in ZOO:
        with torch.device("meta"):
            model = create_model(name, input_size=size)
        ks = kernels(model, (3, size, size))
        for board, groups in ZOO_GROUPS.items():
            for label, key in groups.items():
                pred = predict(ks, fits[board][key], BOARDS[board])
                rows.append({"model": name, "input": size, "board": board, "precision": label,
                             "group": key, "predicted_ms": round(pred.ms, 1),
                             "expected_error_pct": round(100 * pred.rel_err)})
    return rows


def _md(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    rows, median = loo_table()
    fits = {b: fit_published(b) for b in ("rpi4", "rpi5")}
    transfer = transfer_table(fits["rpi4"])
    zoo = zoo_predictions(fits)
    t_median = float(np.median([abs(r["error_pct"]) for r in transfer]))
    md = "\n\n".join([
        "# Latency model: leave-one-out on published Raspberry Pi 4 latencies",
        f"Median absolute LOO error: **{median:.1f} %** over {len(rows)} points "
        "(goal ≤ 25 %). Each point is predicted by its group's fit without it.",
        _md(rows, ["model", "runtime", "precision", "threads", "clock_ghz", "published_ms",
                   "predicted_ms", "error_pct"]),
        "## Transfer: RPi 4 ncnn coefficients on other boards' hardware facts",
        f"Median absolute error {t_median:.1f} % (RPi 5 runs ncnn in fp16; no refit).",
        _md(transfer, ["board", "model", "precision", "threads", "published_ms",
                       "predicted_ms", "error_pct"]),
        "## Predicted latencies of the edgekit zoo (predicted, not measured)",
        _md(zoo, ["model", "input", "board", "precision", "group", "predicted_ms",
                  "expected_error_pct"]),
        "## Fitted coefficients",
        "\n".join(f"- {b} {k}: {c.to_dict()}" for b, f in fits.items() for k, c in f.items()),
    ])
    payload = {"environment": environment(), "median_abs_loo_error_pct": median,
               "loo": rows, "transfer_median_abs_error_pct": t_median, "transfer": transfer,
               "zoo_predicted": zoo,
               "coefficients": {b: {k: c.to_dict() for k, c in f.items()}
                                for b, f in fits.items()}}
    write_results("predict_validation_rpi4", payload, md)
    if "--yaml" in sys.argv:
        import yaml

        for b, f in fits.items():
            print(f"# {b}\n" + yaml.safe_dump({"latency_model": {k: c.to_dict()
                                                                  for k, c in f.items()}},
                                                sort_keys=False, default_flow_style=None))


if __name__ == "__main__":
    main()
