"""Wall time of one small ``--recipe auto`` search (the cost of everything but the candidates'
own exports): OpenVINO + ONNX Runtime, pruning levels none + prune30, 1 recovery epoch, 100
calibration and 400 verification images, bench's quick protocol, 2 threads.

    .venv/bin/python benchmarks/auto_search_time.py MODEL DATA OUT

Run it from two checkouts (``PYTHONPATH=<checkout>``), interleaved, to compare code versions;
prints one JSON line: wall seconds, the recommendation and every candidate's gate, top-1 delta
and p50.
"""

from __future__ import annotations

import json
import sys
import time

from edgekit.auto import AutoOptions, search
from edgekit.compress import CompressOptions


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, data, out = sys.argv[1:4]
    t = time.perf_counter()
    r = search(src, data=data, out=out, options=AutoOptions(
        compress=CompressOptions(backends=["openvino", "onnxruntime"], calibration_images=100,
                                 verification_images=400, threads=2, overwrite=True),
        levels=("none", "prune30"), quick=True,
        recipe_overrides={"pruning.recovery.epochs": 1}))
    print(json.dumps({"wall_s": round(time.perf_counter() - t, 1),
                      "recommended": r.recommended and r.recommended.id,
                      "candidates": [(c.id, c.gate, c.top1_delta, c.p50_ms)
                                     for c in r.candidates]}))


if __name__ == "__main__":
    main()
