"""A small Keras CNN on the real Kaggle Brain Tumor MRI Training folder: train briefly, compress
to INT8 for every backend, and check each INT8 artifact against the Keras model on a held-out
split that the model never trained on and calibration never touched.

    .venv/bin/python benchmarks/keras_real.py                       # 128², 12 epochs
    .venv/bin/python benchmarks/keras_real.py --limit 60 --epochs 1 --size 64   # smoke run

The model is what public Keras tumour classifiers look like (tests/keras_models.py::augmented_cnn):
0–255 pixels in, Rescaling(1/255) in the graph, a Sequential of random augmentation layers,
Conv/BN/ReLU blocks, GaussianNoise, global average pooling, Dropout, softmax.

- split: edgekit's de-duplicated, seeded, stratified split (``split_dataset``), so no held-out
  image is a near-copy of a training image;
- pixels: edgekit's preprocessing (``PreprocessSpec(scale=1.0, layout="NHWC")``: 0–255, NHWC),
  the same code path as calibration and the device runner;
- compress: ``edgekit.compress.compress(model.keras, recipe="int8")`` with ``data=`` a folder of
  symlinks to the TRAINING images only, so neither calibration nor compress's own verification
  sees a held-out image; every INT8 artifact is then evaluated here on the held-out split.

Acceptance: each backend's INT8 top-1 accuracy within 1.0 point of the Keras model's. Exits 1 when
a backend misses it. Results: benchmarks/results/keras_real_<size>.{json,md} (``_smoke`` with
--limit). The trained model is cached in benchmarks/checkpoints/ (ignored by git); --reuse skips
training when the cached model was trained on the same split and settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from _common import (
    environment,
    limit_per_class,
    real_data_dir,
    release_work_folder,
    symlink_folder,  # noqa: E402
    work_folder,
    write_results,
)
from edgekit.data.folder import scan, split_dataset  # noqa: E402
from edgekit.data.preprocess import PreprocessSpec  # noqa: E402
from edgekit.evaluate import load_arrays  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
BACKENDS = ("onnxruntime", "openvino", "litert")
MAX_DROP_POINTS = 1.0


def say(msg: str) -> None:
    print(f"[keras_real] {msg}", flush=True)


# --------------------------------------------------------------------------- model
def build_model(size: int, classes: int, width: int, seed: int):
    """augmented_cnn with four Conv/BN/ReLU blocks (widths w, 2w, 4w, 8w)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inp)
    x = keras.Sequential([layers.RandomFlip("horizontal", seed=seed),
                          layers.RandomRotation(0.05, seed=seed + 1),
                          layers.RandomZoom(0.1, seed=seed + 2)], name="augment")(x)
    for i, f in enumerate((width, 2 * width, 4 * width, 8 * width)):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GaussianNoise(0.1, seed=seed + 3, name="noise")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, seed=seed + 4, name="drop")(x)
    out = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inp, out, name="augmented_cnn")


def train_model(x: np.ndarray, y: np.ndarray, classes: int, args: argparse.Namespace):
    """Adam (cosine decay) + sparse categorical cross-entropy for a fixed number of epochs; the
    held-out split plays no part (no early stopping, no model selection)."""
    import keras
    import tensorflow as tf

    model = build_model(args.size, classes, args.width, args.seed)
    steps = math.ceil(len(x) / args.batch_size) * args.epochs
    lr = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=max(1, steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ds = (tf.data.Dataset.from_tensor_slices((x, y))
          .shuffle(len(x), seed=args.seed, reshuffle_each_iteration=True)
          .batch(args.batch_size)
          .map(lambda a, b: (tf.cast(a, tf.float32), b))
          .prefetch(2))
    start = time.perf_counter()
    hist = model.fit(ds, epochs=args.epochs, verbose=2, shuffle=False)
    seconds = time.perf_counter() - start
    history = [{"epoch": i + 1, "loss": round(float(hist.history["loss"][i]), 4),
                "train_accuracy": round(float(hist.history["accuracy"][i]), 4)}
               for i in range(len(hist.history["loss"]))]
    return model, seconds, history


def precise_bn(model, x: np.ndarray, batch: int = 128) -> list[dict]:
    """Replace each BatchNormalization layer's moving statistics by the exact mean/variance of
    its input over the (clean, un-augmented) training images, layer by layer in graph order
    ("precise BN"). The EMA statistics that ``fit`` leaves behind were gathered on augmented
    batches while the weights moved; on this data they cost ~13 points in inference mode."""
    import keras

    changes = []
    for bn in [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]:
        sub = keras.Model(model.input, bn.input)
        s = s2 = 0.0
        n = 0
        for i in range(0, len(x), batch):
            a = np.asarray(sub(x[i:i + batch].astype(np.float32), training=False), np.float64)
            a = a.reshape(-1, a.shape[-1])
            s, s2, n = s + a.sum(0), s2 + (a * a).sum(0), n + len(a)
        mean = s / n
        var = np.maximum(s2 / n - mean * mean, 0.0)
        old_var = np.asarray(bn.moving_variance, np.float64)
        changes.append({"layer": bn.name, "variance_ratio_new_over_ema": round(
            float(np.median(var / np.maximum(old_var, 1e-12))), 3)})
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(var.astype(np.float32))
    return changes


def keras_predict(model, x: np.ndarray, batch: int = 64) -> np.ndarray:
    outs = [np.asarray(model(x[i:i + batch].astype(np.float32), training=False))
            for i in range(0, len(x), batch)]
    return np.concatenate(outs, axis=0)


# --------------------------------------------------------------------------- metrics
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def summarize(y: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    correct = int((pred == y).sum())
    lo, hi = wilson(correct, len(y))
    sens = {}
    for i, c in enumerate(classes):
        m = y == i
        sens[c] = round(float((pred[m] == i).mean()), 4) if m.any() else None
    return {"accuracy": round(correct / len(y), 4), "correct": correct, "n": len(y),
            "ci95": [round(lo, 4), round(hi, 4)], "sensitivity": sens}


def compare_to_keras(y: np.ndarray, ref: np.ndarray, pred: np.ndarray) -> dict:
    """Paired comparison on the same images: agreement and the discordant pairs."""
    keras_only = int(((ref == y) & (pred != y)).sum())  # Keras right, INT8 wrong
    int8_only = int(((ref != y) & (pred == y)).sum())
    return {"top1_agreement": round(float((ref == pred).mean()), 4),
            "keras_right_int8_wrong": keras_only, "int8_right_keras_wrong": int8_only}


# --------------------------------------------------------------------------- data




# --------------------------------------------------------------------------- artifacts
def evaluate_bundle(bundle: Path, x: np.ndarray, y: np.ndarray, ref_pred: np.ndarray,
                    classes: tuple[str, ...], spec: PreprocessSpec) -> tuple[list[dict], list[str]]:
    from edgekit.backends import get_backend

    manifest = json.loads((bundle / "manifest.json").read_text())
    problems = []
    if manifest.get("preprocess") != spec.to_dict():
        problems.append(f"bundle preprocess {manifest.get('preprocess')} differs from the "
                        f"training/evaluation spec {spec.to_dict()}; artifacts were fed the latter")
    if list(manifest.get("class_names") or []) != list(classes):
        problems.append(f"bundle class_names {manifest.get('class_names')} != {list(classes)}")
    ref_correct = int((ref_pred == y).sum())
    rows = []
    for a in manifest["artifacts"]:
        path = bundle / a["files"][0]["path"]
        batch = x.astype(np.float32)
        if a["input"].get("layout") == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        t0 = time.perf_counter()
        session = get_backend(a["backend"]).open(path)
        out = np.concatenate([session.run(batch[i:i + 64]) for i in range(0, len(batch), 64)])
        seconds = time.perf_counter() - t0
        pred = out.argmax(1)
        m = summarize(y, pred, classes)
        v = a.get("verification") or {}
        rows.append({
            "backend": a["backend"], "precision": a["precision"], "file": a["files"][0]["path"],
            "size_mb": round(a["bytes"] / 1e6, 3), "input": a["input"],
            "export_seconds": a.get("export_seconds"), "eval_seconds": round(seconds, 1),
            "held_out": m, "delta_points": round(100 * (m["correct"] - ref_correct) / len(y), 2),
            **compare_to_keras(y, ref_pred, pred),
            # from integer counts: exactly 1.0 point passes (no float round-off in the test)
            "passes": 100 * (ref_correct - m["correct"]) <= MAX_DROP_POINTS * len(y),
            "compress_verification": {
                "status": a.get("status"),
                "accuracy": (v.get("metrics", {}).get("accuracy") or {}).get("value"),
                "top1_agreement": v.get("top1_agreement")},
            "notes": a.get("notes"),
        })
    return rows, problems


# --------------------------------------------------------------------------- report
def markdown(p: dict) -> str:
    env, sp, tr, k = p["environment"], p["split"], p["training"], p["keras"]
    md = [f"# Keras CNN on the real Kaggle Training folder: INT8 vs Keras ({p['config']['size']}²)",
          "",
          f"- data: `{p['data']}`" + (f" (limited to {p['config']['limit']} per class: SMOKE "
                                      "RUN)" if p["config"]["limit"] else ""),
          f"- split: {sp['train']} train / {sp['val']} held-out after removing "
          f"{sp['duplicates_removed']} near-duplicates ({sp['similar_groups_kept_together']} "
          f"groups of similar slices kept on one side; seed {sp['seed']}, val fraction "
          f"{sp['val_fraction']})",
          f"- model: `augmented_cnn` (Rescaling(1/255) → RandomFlip/Rotation/Zoom → 4 × "
          f"Conv/BN/ReLU/MaxPool, width {p['config']['width']} → GaussianNoise → GAP → Dropout → "
          f"softmax), {tr['parameters']:,} parameters",
          f"- training: {tr['epochs']} epochs, Adam lr {p['config']['lr']} (cosine), batch "
          f"{p['config']['batch_size']}, {tr['seconds'] / 60:.1f} min"
          + (" (cached model reused)" if tr.get("reused") else "")
          + f"; last-epoch train accuracy {100 * tr['history'][-1]['train_accuracy']:.1f} % "
          "(training mode: augmented, dropout)",
          "- BatchNorm: " + (
              f"moving statistics re-estimated on the clean training images after training "
              f"(precise BN, {tr['precise_bn']['seconds']:.0f} s; held-out accuracy with fit's "
              f"EMA statistics was {100 * tr['precise_bn']['keras_accuracy_ema_bn']:.2f} %). "
              "This is the Keras model compressed below."
              if tr["precise_bn"]["applied"] else "fit's EMA statistics kept (--no-precise-bn)"),
          f"- Keras held-out accuracy **{100 * k['accuracy']:.2f} %** "
          f"[95 % CI {100 * k['ci95'][0]:.2f}, {100 * k['ci95'][1]:.2f}] ({k['correct']}/{k['n']})",
          f"- machine: {env['cpu']}, {env['cores']} cores (shared), {env['date']}; "
          f"tensorflow {env.get('tensorflow')}, keras {env.get('keras')}", ""]
    c = p.get("compress")
    if c is None or c.get("error"):
        md += ["## INT8 artifacts", "",
               "**compress did not run**: " + (c["error"] if c else "--skip-compress"), ""]
        return "\n".join(md)
    md += [f"compress: recipe `int8`, {c['calibration_images']} calibration images from the "
           f"training images only (a symlink view of the training side; 0 held-out images), "
           f"{c['seconds']:.0f} s. Criterion: INT8 top-1 within {MAX_DROP_POINTS} point of Keras "
           "on the held-out split. The last column is compress's own verification (recipe gate, on its "
           "split of the training images, which the model trained on).", "",
           "| backend | INT8 held-out acc. | Δ vs Keras (points) | top-1 agreement | Keras ✓ INT8 ✗ "
           "| INT8 ✓ Keras ✗ | size | ≤ 1.0 pt | compress's own gate |",
           "|---|---:|---:|---:|---:|---:|---:|:---:|---|",
           f"| Keras (fp32) | {100 * k['accuracy']:.2f} % | – | – | – | – | "
           f"{p['training']['keras_mb']:.2f} MB (.keras, with optimizer state) | – | – |"]
    for r in p["artifacts"]:
        md.append(f"| {r['backend']} | {100 * r['held_out']['accuracy']:.2f} % | "
                  f"{r['delta_points']:+.2f} | {r['top1_agreement']:.4f} | "
                  f"{r['keras_right_int8_wrong']} | {r['int8_right_keras_wrong']} | "
                  f"{r['size_mb']:.2f} MB | {'pass' if r['passes'] else '**FAIL**'} | "
                  f"{r['compress_verification']['status']} |")
    classes = list(k["sensitivity"])
    md += ["", "Per-class sensitivity on the held-out split:", "",
           "| model | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes),
           "| Keras | " + " | ".join(f"{100 * k['sensitivity'][x]:.1f} %" for x in classes) + " |"]
    for r in p["artifacts"]:
        s = r["held_out"]["sensitivity"]
        md.append(f"| {r['backend']} | " + " | ".join(f"{100 * s[x]:.1f} %" for x in classes) + " |")
    md += ["", f"**{'PASS' if p['passed'] else 'FAIL'}**: every backend within "
           f"{MAX_DROP_POINTS} point of Keras." if p["passed"] else
           f"**FAIL**: a backend is more than {MAX_DROP_POINTS} point below Keras."]
    for prob in p.get("problems") or []:
        md.append(f"\n> {prob}")
    return "\n".join(md)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="input size in pixels [128]")
    ap.add_argument("--epochs", type=int, default=12, help="training epochs [12]")
    ap.add_argument("--width", type=int, default=16, help="first block's filters [16]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--limit", type=int, default=None,
                    help="at most this many images per class (smoke run; results get _smoke)")
    ap.add_argument("--no-precise-bn", action="store_true",
                    help="keep fit's EMA BatchNorm statistics (default: re-estimate them on the "
                         "clean training images after training)")
    ap.add_argument("--calibration-images", type=int, default=None,
                    help="compress's calibration images [the int8 recipe's]")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--skip-compress", action="store_true",
                    help="train + Keras held-out evaluation only")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the cached model in benchmarks/checkpoints/ if its split and "
                         "settings match")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="work folder (model.keras, bundle) [a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = ap.parse_args()

    data = real_data_dir()
    if data is None:
        sys.exit("real data not found: set EDGEKIT_DATA_DIR or put it at ../shared/data")
    t_all = time.perf_counter()
    work = work_folder(args.workdir, "keras_real_")
    work.mkdir(parents=True, exist_ok=True)
    name = f"keras_real_{args.size}" + ("_smoke" if args.limit else "")

    # ---- split + pixels (edgekit's code path)
    dataset = scan(data)
    if args.limit:
        dataset = limit_per_class(dataset, args.limit)
    t0 = time.perf_counter()
    split = split_dataset(dataset, val_fraction=args.val_fraction, seed=args.seed)
    summary = split.summary()
    say(f"split: {summary['train']} train / {summary['val']} held-out, "
        f"{summary['duplicates_removed']} near-duplicates removed "
        f"({time.perf_counter() - t0:.0f} s)")
    spec = PreprocessSpec(input_size=args.size, scale=1.0, layout="NHWC")
    t0 = time.perf_counter()
    x_tr, y_tr = load_arrays(split.train, spec, dtype=np.uint8, description="Loading train")
    x_va, y_va = load_arrays(split.val, spec, dtype=np.uint8, description="Loading held-out")
    load_seconds = time.perf_counter() - t0
    say(f"loaded {len(x_tr)} + {len(x_va)} images at {args.size}² ({load_seconds:.0f} s)")
    classes = split.train.classes

    # ---- train (or reuse)
    import keras
    import tensorflow as tf

    key = {"size": args.size, "epochs": args.epochs, "width": args.width,
           "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
           "val_fraction": args.val_fraction, "limit": args.limit,
           "precise_bn": not args.no_precise_bn,
           "val_files_sha256": summary["val_files_sha256"], "train": summary["train"]}
    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    cached = CHECKPOINTS / f"{name}.keras"
    cached_meta = cached.with_suffix(".json")
    model_path = work / "model.keras"
    reused = False
    if args.reuse and cached.is_file() and cached_meta.is_file() and \
            json.loads(cached_meta.read_text()).get("key") == key:
        meta = json.loads(cached_meta.read_text())
        shutil.copy2(cached, model_path)
        model = keras.saving.load_model(model_path)
        train_seconds, history, reused = meta["seconds"], meta["history"], True
        bn_info = meta["precise_bn"]
        say(f"reusing {cached} (trained in {train_seconds / 60:.1f} min)")
    else:
        say(f"training {args.epochs} epochs on {len(x_tr)} images at {args.size}² "
            f"({tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads)")
        model, train_seconds, history = train_model(x_tr, y_tr, len(classes), args)
        ema = summarize(y_va, keras_predict(model, x_va).argmax(1), classes)
        bn_info = {"applied": False, "keras_accuracy_ema_bn": ema["accuracy"]}
        say(f"Keras held-out accuracy with fit's EMA BatchNorm statistics "
            f"{100 * ema['accuracy']:.2f} %")
        if not args.no_precise_bn:
            t0 = time.perf_counter()
            bn_info.update(applied=True, layers=precise_bn(model, x_tr))
            bn_info["seconds"] = round(time.perf_counter() - t0, 1)
            train_seconds += bn_info["seconds"]
        model.save(model_path)
        shutil.copy2(model_path, cached)
        cached_meta.write_text(json.dumps({"key": key, "seconds": train_seconds,
                                           "history": history, "precise_bn": bn_info},
                                          indent=2) + "\n")
        say(f"trained in {train_seconds / 60:.1f} min; saved {model_path} (cached as {cached})")
    ref = keras_predict(model, x_va)
    ref_pred = ref.argmax(1)
    k = summarize(y_va, ref_pred, classes)
    say(f"Keras held-out accuracy {100 * k['accuracy']:.2f} % ({k['correct']}/{k['n']})")

    env = environment()
    env.update(tensorflow=tf.__version__, keras=keras.__version__)
    payload = {
        "environment": env, "config": {k_: (str(v) if isinstance(v, Path) else v)
                                       for k_, v in vars(args).items()},
        "data": str(data), "split": summary, "preprocess": spec.to_dict(),
        "load_seconds": round(load_seconds, 1),
        "training": {"epochs": args.epochs, "seconds": round(train_seconds, 1),
                     "history": history, "reused": reused, "precise_bn": bn_info,
                     "parameters": int(model.count_params()),
                     "keras_mb": round(model_path.stat().st_size / 1e6, 3),
                     "checkpoint": str(cached)},
        "keras": k, "compress": None, "artifacts": [], "problems": [], "passed": None,
    }

    # ---- compress + evaluate every artifact on the held-out split
    if not args.skip_compress:
        calib_root = symlink_folder(split.train, work / "train_only")
        bundle = work / "bundle-int8"
        t0 = time.perf_counter()
        try:
            from edgekit.compress import compress

            kw = {} if args.calibration_images is None else \
                {"calibration_images": args.calibration_images}
            res = compress(model_path, data=calib_root, out=bundle, recipe="int8",
                           backends=args.backends, allow_accuracy_drop=True, overwrite=True,
                           seed=args.seed, **kw)
        except Exception as exc:  # noqa: BLE001 - reported in the results, then re-raised
            import traceback

            payload["compress"] = {"error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc()}
            payload["passed"] = False
            write_results(name, payload, markdown(payload))
            release_work_folder(work, args.workdir, True, say)
            raise
        cseconds = time.perf_counter() - t0
        manifest = res.manifest.to_json()
        held_out = {split.val.relative(s) for s in split.val.samples}
        payload["compress"] = {
            "seconds": round(cseconds, 1), "bundle_status": manifest.get("status"),
            "calibration_images": manifest["data"]["calibration_images"],
            "verification_images": manifest["data"]["verification_images"],
            "data": manifest["data"], "source": manifest["source"],
            "preprocess": manifest["preprocess"],
            "source_metrics_accuracy": (manifest["source_metrics"].get("accuracy") or {}).get("value"),
            # compress only sees calib_root (training images only): checked, not assumed
            "data_folder_files_in_held_out": sum(
                1 for f in calib_root.rglob("*")
                if f.is_file() and f.relative_to(calib_root).as_posix() in held_out),
        }
        rows, problems = evaluate_bundle(bundle, x_va, y_va, ref_pred, classes, spec)
        payload["artifacts"], payload["problems"] = rows, problems
        payload["passed"] = bool(rows) and all(r["passes"] for r in rows) and \
            {r["backend"] for r in rows} >= set(args.backends)
        for r in rows:
            say(f"{r['backend']}: INT8 {100 * r['held_out']['accuracy']:.2f} % "
                f"(Δ {r['delta_points']:+.2f} pt, agreement {r['top1_agreement']:.4f}, "
                f"{r['size_mb']:.2f} MB)")
    payload["seconds_total"] = round(time.perf_counter() - t_all, 1)
    write_results(name, payload, markdown(payload))
    release_work_folder(work, args.workdir, args.keep, say)
    if payload["passed"] is False:
        sys.exit(1)


if __name__ == "__main__":
    main()
