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
from edgekit.calibrate import StreamedImages, stratified_sample
from edgekit.data.folder import scan
from edgekit.evaluate import load_arrays
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
    ap.add_argument("--heldout", type=Path, default=None,
                    help="labelled folder to compare on instead (then DATA only calibrates, "
                         "with --calibration-images stratified images, and the labels give "
                         "the top-1 and worst-class-sensitivity change)")
    ap.add_argument("--calibration-images", type=int, default=300)
    ap.add_argument("--only", nargs="+", default=None, help="variants whose label has one of "
                    "these words (e.g. openvino)")
    args = ap.parse_args()
    source = load_model(args.model, preprocess=declared(args.preprocess, resize=args.resize))
    samples = scan(args.data).samples
    y = None
    if args.heldout is None:
        calibration = StreamedImages(samples[::2], source.spec)
        x = np.stack([source.spec.load(s.path) for s in samples[1::2]]).astype(np.float32)
    else:
        calibration = StreamedImages(stratified_sample(samples, args.calibration_images, 0),
                                     source.spec)
        x, y = load_arrays(scan(args.heldout), source.spec)
    ref = source.predict(x)
    print(f"{args.model}: {len(calibration)} calibration images, {len(x)} compared")
    with tempfile.TemporaryDirectory(prefix="int8-remedies-") as tmp:
        for i, (label, name, fields, options) in enumerate(VARIANTS):
            if args.only and not any(w in label for w in args.only):
                continue
            backend = get_backend(name)
            if fields:
                backend = dataclasses.replace(backend, **fields)
            t0 = time.perf_counter()
            art = backend.export(ExportRequest(source, "int8", Path(tmp) / str(i), "m",
                                               calibration, QuantOptions(**options)))
            out = backend.open(art.path).run(x)
            labelled = "" if y is None else "  " + _vs_labels(out.argmax(1), ref.argmax(1), y)
            print(f"{label:48s} agreement {np.mean(out.argmax(1) == ref.argmax(1)):.3f}  "
                  f"mean |diff| {np.abs(out - ref).mean():.4f}  quantized ops "
                  f"{art.quantization.get('quantized_ops')}{labelled}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


def _vs_labels(got: np.ndarray, ref: np.ndarray, y: np.ndarray) -> str:
    """Top-1 change and the largest drop of one class's sensitivity, in points."""
    top1 = 100 * (np.mean(got == y) - np.mean(ref == y))
    drops = [100 * (np.mean(ref[y == c] == c) - np.mean(got[y == c] == c)) for c in np.unique(y)]
    return f"top-1 {top1:+.2f} pt  worst class -{max(drops):.2f} pt  (n={len(y)})"


if __name__ == "__main__":
    main()
