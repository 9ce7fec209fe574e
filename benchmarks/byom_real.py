"""Bring your own model, measured: third-party-style classifiers built from public parts, trained
briefly on the real Kaggle Training folder with THEIR OWN preprocessing, then handed to edgekit
as a deploy engineer would get them (issue 15's acceptance).

    .venv/bin/python benchmarks/byom_real.py                    # both cases, full split
    .venv/bin/python benchmarks/byom_real.py --limit 40 --epochs 1 --cases gray   # smoke run

Cases (each trained once and cached in benchmarks/checkpoints/, ignored by git):

- ``gray``: a small PyTorch CNN (not an edgekit zoo model) that takes **1-channel greyscale
  64×64** input normalised with mean 0.5 / std 0.5, images read with Pillow's default
  ``Image.resize`` filter (bicubic). Handed over as ONNX (opset 17), ``torch.export`` ``.pt2``
  and TorchScript.
- ``keras_nhwc``: Keras ``MobileNetV2(alpha=0.35)`` at 128 px (include_top=False, random init:
  no download) → GlobalAveragePooling → Dense(64, relu) → Dense(4, softmax), inputs RGB / 255,
  images read with ``keras.utils.load_img(..., interpolation="lanczos")``; exported with tf2onnx
  (**NHWC** input, softmax inside the graph).

For every file the script reports, on the held-out split (edgekit's de-duplicated seeded split;
the models never trained on it, compress never sees it):

1. the accuracy with the model's own preprocessing and own runtime;
2. ``edgekit evaluate FILE --data HELDOUT --preprocess FILE.yaml --json`` (the declared
   preprocessing) and the same without ``--preprocess`` (edgekit's defaults: the mistake a user
   makes when they declare nothing) — the criterion is (2) within 0.2 points of (1);
3. ``edgekit compress FILE --recipe fp32|int8 --backend B`` for each backend, on a symlink view of
   the training side only; every fp32 artifact's outputs vs the source's on the held-out images
   (criterion: max |diff| ≤ 1e-4) and every artifact's held-out top-1.

Results: benchmarks/results/byom_real.{json,md} (``_smoke`` with --limit). Exits 1 when a
criterion is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from _common import (  # noqa: E402
    REPO,
    environment,
    limit_per_class,
    real_data_dir,
    release_work_folder,
    symlink_folder,
    work_folder,
    write_results,
)
from edgekit.data.folder import Dataset, scan, split_dataset  # noqa: E402
from edgekit.quantize.rescue import p50_ms  # noqa: E402

sys.path.insert(0, str(REPO / "examples"))
from byom import (  # noqa: E402  (the third-party-style models of the README's example)
    GRAY_PREPROCESS,
    KERAS_PREPROCESS,
    export_gray,
    export_keras,
    gray_cnn,
    gray_own,
    keras_own,
    keras_predict,
    torch_predict,
    train_gray,
    train_keras,
    write_yaml,
)

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
BACKENDS = ("onnxruntime", "openvino", "litert")
RECIPES = ("fp32", "int8")
MAX_SOURCE_GAP_POINTS = 0.2
MAX_FP32_DIFF = 1e-4
EDGEKIT = [sys.executable, "-m", "edgekit"]


def say(msg: str) -> None:
    print(f"[byom_real] {msg}", flush=True)


def load_own(ds: Dataset, reader) -> tuple[np.ndarray, np.ndarray]:
    return (np.stack([reader(s.path) for s in ds.samples]),
            np.array([s.target for s in ds.samples], dtype=np.int64))


def ort_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 128]})[0]
                           for i in range(0, len(x), 128)])


# --------------------------------------------------------------------------- edgekit, as a user
def run(cmd: list[str], log: Path) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    log.write_text(f"$ {' '.join(cmd)}\n\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, time.perf_counter() - t0, proc.stdout


def edgekit_accuracy(model: Path, heldout: Path, preprocess: Path | None, log: Path) -> dict:
    cmd = [*EDGEKIT, "evaluate", str(model), "--data", str(heldout), "--json"]
    if preprocess is not None:
        cmd += ["--preprocess", str(preprocess)]
    rc, seconds, out = run(cmd, log)
    if rc != 0:
        return {"error": f"exit {rc}: see {log.name}"}
    result = json.loads(out[out.index("{"):])
    return {"accuracy": result["metrics"]["accuracy"]["value"], "n": result["n"],
            "seconds": round(seconds, 1)}


def artifact_rows(bundle: Path, source_file: Path, preprocess: Path, heldout: Dataset,
                  y: np.ndarray) -> list[dict]:
    """Every artifact of ``bundle`` on the held-out images, next to the source's own outputs."""
    from edgekit.backends import get_backend
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.evaluate import load_arrays
    from edgekit.sources import load_model

    manifest = json.loads((bundle / "manifest.json").read_text())
    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    x, _ = load_arrays(heldout, spec, description="held-out (bundle preprocessing)")
    src = load_model(source_file, preprocess=preprocess)
    ref = src.predict(x)
    rows = []
    for a in manifest["artifacts"]:
        session = get_backend(a["backend"]).open(bundle / a["files"][0]["path"])
        out = np.concatenate([session.run(x[i:i + 64]) for i in range(0, len(x), 64)])
        pred = out.argmax(1)
        p50 = p50_ms(session.bind(x[:1]), warmup=10, runs=200)  # batch 1, this process
        q = a.get("quantization") or {}
        rescue = q.get("rescue") or {}
        rows.append({
            "backend": a["backend"], "precision": a["precision"], "status": a.get("status"),
            "held_out_accuracy": round(float((pred == y).mean()), 4),
            "source_accuracy": round(float((ref.argmax(1) == y).mean()), 4),
            "top1_agreement": round(float((pred == ref.argmax(1)).mean()), 4),
            "max_abs_diff": float(np.abs(out - ref).max()),
            "worst_class_drop_points": round(100 * max(
                float((ref.argmax(1)[y == c] == c).mean() - (pred[y == c] == c).mean())
                for c in np.unique(y)), 2),
            "p50_ms": round(p50, 4),
            "rescue": {"keep_float": rescue.get("keep_float"),
                       "first_decision": rescue.get("first_decision"),
                       "outcome": rescue.get("outcome")} if rescue else None,
            "quantized_ops": q.get("quantized_ops"),
            "input": a["input"], "n": int(len(y))})
    return rows


def compress_rows(file: Path, fmt: str, preprocess: Path, trainview: Path, heldout: Dataset,
                  y: np.ndarray, work: Path, backends: tuple[str, ...],
                  verification_images: int) -> list[dict]:
    rows = []
    for recipe in RECIPES:
        for backend in backends:
            out = work / f"bundle_{file.stem}_{fmt}_{recipe}_{backend}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [*EDGEKIT, "compress", str(file), "--data", str(trainview), "--recipe",
                   recipe, "--backend", backend, "--preprocess", str(preprocess), "--out",
                   str(out), "--verification-images", str(verification_images)]
            rc, seconds, _ = run(cmd, work / f"{out.name}.log")
            say(f"  compress {fmt} {recipe} {backend}: exit {rc} ({seconds:.0f} s)")
            base = {"format": fmt, "recipe": recipe, "backend": backend, "exit": rc,
                    "compress_seconds": round(seconds, 1)}
            if not (out / "manifest.json").is_file():
                log = (work / f"{out.name}.log").read_text().strip().splitlines()
                rows.append({**base, "error": next((ln for ln in reversed(log) if ln.strip()),
                                                   "no output")[:300]})
                continue
            rows += [{**base, **r} for r in artifact_rows(out, file, preprocess, heldout, y)]
    return rows


# --------------------------------------------------------------------------- report
def rescued(row: dict) -> str:
    r = row.get("rescue")
    if not r:
        return "–"
    kept = r.get("keep_float") or []
    return (f"{len(kept)} layer(s) float (was {r.get('first_decision')})" if kept
            else f"tried, none kept (was {r.get('first_decision')})")


def markdown(p: dict) -> str:
    env = p["environment"]
    md = ["# Bring your own model: third-party-style classifiers through edgekit (real data)", "",
          f"- data: `{p['data']}`" + (f" (limited to {p['config']['limit']} per class: SMOKE RUN)"
                                      if p["config"]["limit"] else ""),
          f"- split: {p['split']['train']} train / {p['split']['val']} held-out (edgekit's "
          "de-duplicated seeded split); compress sees a symlink view of the training side only",
          f"- machine: {env['cpu']}, {env['cores']} cores, {env['date']}", "",
          "## Source accuracy: the model's own preprocessing vs edgekit's", "",
          f"Criterion: edgekit with the declared preprocessing within {MAX_SOURCE_GAP_POINTS} "
          "points of the model's own pipeline, on the same held-out images.", "",
          "| case | file | own pipeline | edgekit, declared | gap (pt) | edgekit, nothing declared |",
          "|---|---|---:|---:|---:|---:|"]
    for c in p["cases"]:
        for f in c["files"]:
            d, u = f["edgekit_declared"], f["edgekit_undeclared"]
            gap = f.get("gap_points")
            md.append(f"| {c['name']} | {f['format']} | {100 * c['own_accuracy']:.2f} % | "
                      + (f"{100 * d['accuracy']:.2f} %" if "accuracy" in d else d["error"])
                      + f" | {'' if gap is None else f'{gap:+.2f}'} | "
                      + (f"{100 * u['accuracy']:.2f} %" if "accuracy" in u else u["error"]) + " |")
    md += ["", f"## Artifacts (held-out; fp32 criterion max |diff| ≤ {MAX_FP32_DIFF:g} vs the source)",
           "", "Δ columns are artifact minus source on the held-out images (a worst-class Δ is the "
           "largest drop of one class's sensitivity); p50 is batch-1 latency measured here, one "
           "process, after each other (compare rows of one case only); rescue: the layers the "
           "INT8 rescue kept in float.", "",
           "| case | file | recipe | backend | exit | status | held-out top-1 | Δ vs source (pt) "
           "| worst class Δ (pt) | top-1 agreement | max abs diff | p50 ms | rescue | compress s |",
           "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for c in p["cases"]:
        for r in c["artifacts"]:
            if "error" in r:
                md.append(f"| {c['name']} | {r['format']} | {r['recipe']} | {r['backend']} | "
                          f"{r['exit']} | **no bundle**: {r['error']} | | | | | | | | "
                          f"{r['compress_seconds']:.0f} |")
                continue
            delta = 100 * (r["held_out_accuracy"] - r["source_accuracy"])
            md.append(f"| {c['name']} | {r['format']} | {r['recipe']} | {r['backend']} | "
                      f"{r['exit']} | {r['status']} | {100 * r['held_out_accuracy']:.2f} % | "
                      f"{delta:+.2f} | {r['worst_class_drop_points']:+.2f} | "
                      f"{r['top1_agreement']:.4f} | {r['max_abs_diff']:.2e} | "
                      f"{r['p50_ms']:.3f} | {rescued(r)} | {r['compress_seconds']:.0f} |")
    md += ["", f"**{'PASS' if p['passed'] else 'FAIL'}**" + ("" if p["passed"] else ": "
           + "; ".join(p["failures"]))]
    return "\n".join(md)


# --------------------------------------------------------------------------- main




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["gray", "keras_nhwc"],
                    choices=["gray", "keras_nhwc"])
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs [gray 10, keras_nhwc 6]")
    ap.add_argument("--limit", type=int, default=None,
                    help="at most this many images per class (smoke run; results get _smoke)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--formats", nargs="+", default=["onnx", "pt2", "torchscript"],
                    help="grey case: which files to hand to edgekit [all three]")
    ap.add_argument("--verification-images", type=int, default=600,
                    help="compress's verification cap [600]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--name", default=None,
                    help="results file stem [byom_real; byom_real_smoke with --limit]")
    args = ap.parse_args()

    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    work = work_folder(args.workdir, "byom_real_")
    work.mkdir(parents=True, exist_ok=True)
    name = args.name or "byom_real" + ("_smoke" if args.limit else "")
    dataset = scan(data)
    if args.limit:
        dataset = limit_per_class(dataset, args.limit)
    split = split_dataset(dataset, val_fraction=0.2, seed=args.seed)
    summary = split.summary()
    say(f"split: {summary['train']} train / {summary['val']} held-out")
    trainview = symlink_folder(split.train, work / "train_view")
    heldout_dir = symlink_folder(split.val, work / "heldout")
    heldout = scan(heldout_dir)  # the folder edgekit evaluate reads, in its own order
    y_heldout = np.array([s.target for s in heldout.samples], dtype=np.int64)
    classes = split.train.classes
    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    cases = []
    for case in args.cases:
        t0 = time.perf_counter()
        epochs = args.epochs or {"gray": 10, "keras_nhwc": 6}[case]
        tag = f"byom_{case}_e{epochs}_s{args.seed}_n{summary['train']}"
        if case == "gray":
            import torch

            x_tr, y_tr = load_own(split.train, gray_own)
            cached = CHECKPOINTS / f"{tag}.pt"
            model = gray_cnn(len(classes))
            if cached.is_file():
                model.load_state_dict(torch.load(cached, weights_only=True))
                model.eval()
                history = None
                say(f"gray: reusing {cached}")
            else:
                say(f"gray: training {epochs} epochs on {len(x_tr)} images")
                model, history = train_gray(x_tr, y_tr, len(classes), epochs, args.seed, say)
                torch.save(model.state_dict(), cached)
            x_own, _ = load_own(heldout, gray_own)
            own = torch_predict(model, x_own)
            files = export_gray(model, work)
            files = {k: v for k, v in files.items() if k in args.formats}
            prep = write_yaml(work / "gray.yaml", GRAY_PREPROCESS)
        else:
            import keras

            x_tr, y_tr = load_own(split.train, keras_own)
            cached = CHECKPOINTS / f"{tag}.keras"
            if cached.is_file():
                model = keras.saving.load_model(cached)
                history = None
                say(f"keras_nhwc: reusing {cached}")
            else:
                say(f"keras_nhwc: training {epochs} epochs on {len(x_tr)} images")
                model, history = train_keras(x_tr, y_tr, len(classes), epochs, args.seed)
                model.save(cached)
            x_own, _ = load_own(heldout, keras_own)
            own = keras_predict(model, x_own)
            files = {"onnx": export_keras(model, work)}
            own_onnx = ort_predict(files["onnx"], x_own)
            say(f"keras_nhwc: tf2onnx vs Keras max |diff| {np.abs(own_onnx - own).max():.2e}")
            prep = write_yaml(work / "mnv2.yaml", KERAS_PREPROCESS)
        own_acc = float((own.argmax(1) == y_heldout).mean())
        say(f"{case}: own-pipeline held-out accuracy {100 * own_acc:.2f} % "
            f"({len(y_heldout)} images; {time.perf_counter() - t0:.0f} s)")
        rows, arts = [], []
        for fmt, path in files.items():
            declared = edgekit_accuracy(path, heldout_dir, prep, work / f"eval_{fmt}_{case}.log")
            undeclared = edgekit_accuracy(path, heldout_dir, None,
                                          work / f"eval_{fmt}_{case}_undeclared.log")
            gap = (None if "accuracy" not in declared
                   else round(100 * (declared["accuracy"] - own_acc), 2))
            say(f"  {fmt}: edgekit declared {declared}, undeclared {undeclared}")
            rows.append({"format": fmt, "file": path.name, "edgekit_declared": declared,
                         "edgekit_undeclared": undeclared, "gap_points": gap})
            arts += compress_rows(path, fmt, prep, trainview, heldout, y_heldout, work,
                                  tuple(args.backends), args.verification_images)
        cases.append({"name": case, "epochs": epochs, "history": history,
                      "own_accuracy": round(own_acc, 4), "n": int(len(y_heldout)),
                      "preprocess_yaml": prep.read_text(), "files": rows, "artifacts": arts})

    failures = []
    for c in cases:
        for f in c["files"]:
            if f["gap_points"] is None or abs(f["gap_points"]) > MAX_SOURCE_GAP_POINTS:
                failures.append(f"{c['name']}/{f['format']}: source accuracy gap {f['gap_points']}")
        for r in c["artifacts"]:
            if "error" in r:
                failures.append(f"{c['name']}/{r['format']} {r['recipe']} {r['backend']}: no bundle")
            elif r["precision"] == "fp32" and r["max_abs_diff"] > MAX_FP32_DIFF:
                failures.append(f"{c['name']}/{r['format']} fp32 {r['backend']}: max |diff| "
                                f"{r['max_abs_diff']:.2e}")
    payload = {"environment": environment(), "config": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()},
               "data": str(data), "split": summary, "cases": cases,
               "failures": failures, "passed": not failures}
    write_results(name, payload, markdown(payload))
    release_work_folder(work, args.workdir, args.keep, say)
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
