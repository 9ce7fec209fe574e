"""Which INT8 remedy helps a model: each backend's quantizer options side by side, judged by
top-1 agreement and mean |output diff| against the source on images calibration did not use
(issue 14: the remedies the rescue could try besides keeping layers in float).

    edgekit phantoms byom-data/ -n 60 --size 96
    python examples/byom.py byom-data/ byom/ --keras
    .venv/bin/python benchmarks/int8_remedies.py byom/mnv2_nhwc.onnx byom-data/ --resize lanczos

Every other image of DATA calibrates, the rest are compared. Prints one row per variant; nothing
is written except temporary artifacts.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.backends import ExportRequest, QuantOptions, get_backend
from edgekit.calibrate import StreamedImages
from edgekit.data.folder import scan
from edgekit.sources import load_model
from edgekit.sources.declared import declared

# (label, backend, backend field overrides, QuantOptions overrides)
VARIANTS = (
    ("openvino: NNCF defaults (fast bias correction)", "openvino", {}, {}),
    ("openvino: full bias correction", "openvino", {}, {"fast_bias_correction": False}),
    ("openvino: mixed preset", "openvino", {"preset": "mixed"}, {}),
    ("openvino: per-tensor weights", "openvino", {}, {"per_channel": False}),
    ("openvino: percentile ranges", "openvino", {}, {"method": "percentile"}),
    ("onnxruntime: edgekit defaults", "onnxruntime", {}, {}),
    ("onnxruntime: percentile ranges", "onnxruntime", {}, {"method": "percentile"}),
    ("litert: edgekit defaults", "litert", {}, {}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model", type=Path, help="a model source edgekit loads")
    ap.add_argument("data", type=Path, help="labelled class folders (labels are not used)")
    ap.add_argument("--resize", default=None, help="the model's resize filter")
    ap.add_argument("--preprocess", type=Path, default=None, help="its --preprocess YAML")
    args = ap.parse_args()
    source = load_model(args.model, preprocess=declared(args.preprocess, resize=args.resize))
    samples = scan(args.data).samples
    calibration = StreamedImages(samples[::2], source.spec)
    x = np.stack([source.spec.load(s.path) for s in samples[1::2]]).astype(np.float32)
    ref = source.predict(x)
    print(f"{args.model}: {len(samples[::2])} calibration images, {len(x)} compared")
    with tempfile.TemporaryDirectory(prefix="int8-remedies-") as tmp:
        for i, (label, name, fields, options) in enumerate(VARIANTS):
            backend = get_backend(name)
            if fields:
                backend = dataclasses.replace(backend, **fields)
            t0 = time.perf_counter()
            art = backend.export(ExportRequest(source, "int8", Path(tmp) / str(i), "m",
                                               calibration, QuantOptions(**options)))
            out = backend.open(art.path).run(x)
            print(f"{label:48s} agreement {np.mean(out.argmax(1) == ref.argmax(1)):.3f}  "
                  f"mean |diff| {np.abs(out - ref).mean():.4f}  quantized ops "
                  f"{art.quantization.get('quantized_ops')}  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
