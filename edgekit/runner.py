"""The device runner: classify images with a bundle artifact using numpy, Pillow and ONE runtime.

    python -m edgekit.runner BUNDLE IMAGE [IMAGE ...] [--artifact NAME] [--threads N] [--json]
    python -m edgekit.runner BUNDLE --bench [--artifact NAME] [--threads N] [--quick]
    python -m edgekit.runner BUNDLE --image-list FILES.txt --save-logits OUT.npy

``--bench`` times the artifact with edgekit's protocol (``edgekit.bench.protocol``) and prints
one JSON object; ``--save-logits`` writes the raw outputs for every listed image (one path per
line) so metrics are computed from exactly what the device computes.

Never imports torch: it runs on a Raspberry Pi with only ``pip install 'edgekit[litert]'`` (or
``[onnxruntime]`` / ``[openvino]``). It reads the manifest strictly (``edgekit.manifest``, no
pydantic), refuses an artifact file outside the bundle or whose sha256 differs from the
manifest, applies the manifest's preprocessing spec exactly as training did, and prints
predictions.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends import get_backend
from edgekit.bench.protocol import (
    add_protocol_args,
    one_line,
    options_from_args,
    protocol_from_args,
    time_session,
)
from edgekit.bundle import bundle_file, load_manifest, sha256_file
from edgekit.data.preprocess import PreprocessSpec, small_images_warning
from edgekit.errors import BackendUnavailable, ConfigError, DataError, EdgekitError
from edgekit.manifest import ArtifactEntry, Head, Manifest

_PREFERENCE = {"int8": 0, "fp16": 1, "fp32": 2}
# a passing artifact first, then one its gate could not decide; a failed one only as a last resort
_STATUS_RANK = {"passed": 0, "inconclusive-gate": 1}


def choose_artifact(manifest: Manifest, name: str | None = None) -> ArtifactEntry:
    """The named artifact, or the best installed one: passing, then inconclusive, then failed;
    within each, INT8 first, then fp16, fp32."""
    arts = manifest.artifacts
    if not arts:  # load_manifest refuses such a file; a Manifest built in code may still be one
        raise DataError("this bundle has no artifacts (manifest.json lists none): "
                        "compress the model again")
    if name is not None:
        found = manifest.artifact(name)
        if found is not None:
            return found
        raise ConfigError(f"No artifact {name!r} in the bundle; it has: "
                          f"{', '.join(a.name for a in arts)}")
    usable = [a for a in arts if get_backend(a.backend).available() is None]
    if not usable:
        hints = {a.backend: get_backend(a.backend).available() for a in arts}
        raise BackendUnavailable("No runtime for any artifact in this bundle is installed: "
                                 + "; ".join(f"{b}: {h}" for b, h in hints.items()))
    return min(usable, key=lambda a: (_STATUS_RANK.get(a.status, 2),
                                      _PREFERENCE.get(a.precision, 9)))


class Runner:
    """An opened bundle artifact plus the bundle's preprocessing: ``predict(paths)``."""

    def __init__(self, bundle: str | Path, artifact: str | None = None,
                 threads: int | None = None, options: dict[str, Any] | None = None,
                 *, open_session: bool = True) -> None:
        self.bundle = Path(bundle)
        self.manifest = load_manifest(self.bundle)
        self.entry = choose_artifact(self.manifest, artifact)
        for f in self.entry.files:
            path = bundle_file(self.bundle, f.path)  # refuses a symlink out of the bundle
            if not path.is_file() or sha256_file(path) != f.sha256:
                raise DataError(f"{path}: missing or modified (sha256 differs from manifest.json)")
        self.spec = self.manifest.preprocess
        self.classes = list(self.manifest.class_names)
        self.task = self.manifest.task
        # bundles before heads were recorded: logits, threshold 0.5
        self.head = (self.manifest.head or Head()).to_json()
        self.backend = get_backend(self.entry.backend)
        hint = self.backend.available()
        if hint:
            raise BackendUnavailable(f"{self.entry.backend} is not installed: {hint}")
        self.threads, self.options = threads, options
        self.session = self.open() if open_session else None

    def open(self) -> Any:
        return self.backend.open(self.bundle / self.entry.files[0].path, self.threads,
                                 options=self.options)

    def bench(self, protocol: Any) -> dict[str, Any]:
        """Time this artifact (load included) with the timing protocol: one result row."""
        row = time_session(self.open, self.spec.input_shape(1), backend=self.entry.backend,
                           threads=self.threads, protocol=protocol)
        return {"artifact": self.entry.name, **row}

    def save_logits(self, paths: list[str], out: str | Path) -> list[str]:
        """Raw outputs for every image into ``out`` (.npy, rows in ``paths`` order)."""
        arr = self.outputs(paths)
        tmp = Path(f"{out}.tmp.npy")
        np.save(tmp, arr)
        tmp.replace(out)
        return paths

    def outputs(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Raw outputs for every image (float32, rows in ``paths`` order): what
        ``--save-logits`` writes, and what a cluster shard returns (``edgekit.bench.cluster``).

        An unreadable image stops the run with a DataError naming it: metrics over a silently
        shortened list would not line up with the caller's labels.
        """
        rows = []
        small: list[Path] = []
        for p in paths:
            row = self.logits(self.spec.load(p, small)[None])[0]
            if not np.all(np.isfinite(row)):
                raise DataError(f"{p}: {self.entry.name} returned non-finite outputs "
                                "(NaN/inf) for this image")
            rows.append(row)
        _warn_small(small, len(paths), self.spec)
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The artifact's raw outputs for a batch; a DataError when their width does not fit
        the class names (a manifest that names fewer or more classes than the model has)."""
        out = self.session.run(x)
        problem = self.manifest.width_problem(int(np.asarray(out).reshape(len(out), -1).shape[1]))
        if problem:
            raise DataError(f"{self.entry.name}: {problem}")
        return out

    def predict_one(self, path: str | Path, threshold: float | None = None,
                    small: list[Path] | None = None) -> dict[str, Any]:
        """One image's prediction. Sigmoid heads (multi-label, or one output unit for two
        classes) are thresholded at ``threshold`` [default: the bundle's, 0.5]. An image far
        below the input size is appended to ``small`` (``PreprocessSpec.load``)."""
        outputs = self.logits(self.spec.load(path, small)[None])[0].astype(np.float64)
        probs_out = self.head.get("scores_are") == "probs"
        t = float(self.head.get("threshold", 0.5) if threshold is None else threshold)
        if self.task == "multilabel" or outputs.shape[0] == 1:
            probs = np.clip(outputs, 0, 1) if probs_out else 1.0 / (1.0 + np.exp(-outputs))
            if self.task == "multilabel":
                return {"image": str(path), "labels": {c: float(p) for c, p in zip(
                    self.classes, probs, strict=True)}, "threshold": t,
                    "positive": [c for c, p in zip(self.classes, probs, strict=True) if p >= t]}
            p1 = float(probs[0])  # binary head: P(second class), the data's second folder
            top = int(p1 >= t)
            return {"image": str(path), "prediction": self.classes[top],
                    "probability": p1 if top else 1.0 - p1, "threshold": t,
                    "probabilities": {self.classes[0]: 1.0 - p1, self.classes[1]: p1}}
        if probs_out:
            probs = np.clip(outputs, 0, None)
            probs = probs / probs.sum() if probs.sum() > 0 else np.full_like(probs, 1 / len(probs))
        else:
            e = np.exp(outputs - outputs.max())
            probs = e / e.sum()
        top = int(probs.argmax())
        return {"image": str(path), "prediction": self.classes[top],
                "probability": float(probs[top]),
                "probabilities": {c: float(p) for c, p in zip(self.classes, probs, strict=True)}}


def _warn_small(small: list[Path], total: int, spec: PreprocessSpec) -> None:
    """One warning line on stderr for the images of a run that were far below the input size."""
    note = small_images_warning(small, total, spec)
    if note:
        print(f"Warning: {note}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m edgekit.runner", description=__doc__.split("\n")[0])
    ap.add_argument("bundle", help="bundle folder written by `edgekit compress`")
    ap.add_argument("images", nargs="*", help="image files (or CT DICOM slices)")
    ap.add_argument("--artifact", help="artifact name from the manifest [default: best installed]")
    ap.add_argument("--json", action="store_true", help="print JSON lines")
    ap.add_argument("--threshold", type=float, default=None,
                    help="decision threshold of a sigmoid head (binary or multi-label) "
                         "[default: the bundle's, 0.5]")
    ap.add_argument("--bench", action="store_true", help="time the artifact; print one JSON object")
    ap.add_argument("--image-list", type=Path, help="file with one image path per line")
    ap.add_argument("--save-logits", type=Path, help="write the raw outputs to this .npy file")
    add_protocol_args(ap)
    return ap


def _special(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int | None:
    """--bench and --save-logits modes; None when neither was asked for."""
    if not (args.bench or args.save_logits):
        return None
    try:
        protocol = protocol_from_args(args)
        options = options_from_args(args.option)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        runner = Runner(args.bundle, args.artifact, args.threads, options, open_session=False)
        if args.bench:
            print(json.dumps(runner.bench(protocol)))
            return 0
        if args.image_list is None:
            ap.error("--save-logits needs --image-list")
        runner.session = runner.open()
        paths = [ln.strip() for ln in args.image_list.read_text().splitlines() if ln.strip()]
        runner.save_logits(paths, args.save_logits)
        return 0
    except EdgekitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, ValueError, RuntimeError) as exc:  # runtime failures: one clear line
        print(f"Error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_intermixed_args(argv)  # options may come after the bundle or the images
    special = _special(args, ap)
    if special is not None:
        return special
    if not args.images:
        ap.error("give image files to classify (or --bench / --image-list with --save-logits)")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        ap.error(f"--threshold must be a probability in [0, 1], got {args.threshold}")
    try:
        runner = Runner(args.bundle, args.artifact, args.threads)
    except EdgekitError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{runner.entry.name} ({runner.entry.status})", file=sys.stderr)
    failed = 0
    small: list[Path] = []
    for path in args.images:
        try:
            res = runner.predict_one(path, args.threshold, small)
        except DataError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(res))
        elif "prediction" in res:
            print(f"{path}\t{res['prediction']}\t{res['probability']:.3f}")
        else:
            print(f"{path}\t{','.join(res['positive']) or 'none'}")
    _warn_small(small, len(args.images) - failed, runner.spec)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
