"""Third-party-style models to try "Bring your own model" with: what a deploy engineer is handed.

    edgekit phantoms byom-data/ -n 60 --size 96
    python examples/byom.py byom-data/ byom/        # ~1-2 min on 2 cores

writes, trained briefly on DATA (class folders, alphabetical class order) with THEIR OWN
preprocessing — none of it edgekit's:

- ``gray_cnn.onnx``, ``gray_cnn.pt2``, ``gray_cnn.ts``: a small residual CNN (not an edgekit zoo
  model) that takes 1-channel greyscale 64×64 input normalised with mean 0.5 / std 0.5, images
  resized with Pillow's default filter (bicubic); ONNX opset 17, ``torch.export`` and TorchScript.
  ``gray.yaml`` declares that preprocessing for edgekit.
- ``mnv2_nhwc.onnx`` (with ``--keras``, needs TensorFlow: ``edgekit[keras]``): Keras
  ``MobileNetV2(alpha=0.35)`` (random init, nothing downloaded) → GlobalAveragePooling →
  Dense(64, relu) → Dense(classes, softmax), RGB / 255 input, images read with
  ``keras.utils.load_img(interpolation="lanczos")``, exported with tf2onnx: NHWC input, softmax in
  the graph. ``mnv2.yaml`` declares its resize filter (the rest edgekit reads from the file).

``benchmarks/byom_real.py`` trains the same models on the real MRI data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

GRAY_SIZE = 64
GRAY_PREPROCESS = {"input_size": GRAY_SIZE, "color": "gray", "mean": [0.5], "std": [0.5],
                   "resize": "bicubic"}
KERAS_PREPROCESS = {"resize": "lanczos"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def say(msg: str) -> None:
    print(f"[byom] {msg}", flush=True)


# --------------------------------------------------------------------------- their preprocessing
def gray_own(path: Path) -> np.ndarray:
    """How the grey CNN's authors read an image: Pillow, 'L', default resize filter (bicubic),
    /255, (x - 0.5) / 0.5 — a (1, 64, 64) float32 array."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("L").resize((GRAY_SIZE, GRAY_SIZE)), dtype=np.float32) / 255.0
    return ((a - 0.5) / 0.5)[None]


def keras_own(path: Path, size: int = 128) -> np.ndarray:
    """How the Keras model's authors read an image: keras.utils.load_img with LANCZOS, / 255,
    NHWC."""
    import keras

    img = keras.utils.load_img(path, color_mode="rgb", target_size=(size, size),
                               interpolation="lanczos")
    return np.asarray(img, dtype=np.float32) / 255.0


def folder_images(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, labels, class names) of a class-per-folder tree, classes in alphabetical order."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    if not files:
        sys.exit(f"{root}: no images in class folders")
    return files, np.array(labels, dtype=np.int64), classes


# --------------------------------------------------------------------------- the grey CNN
def gray_cnn(classes: int):
    """A small residual CNN with depthwise separable blocks (not an edgekit zoo model)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pw = nn.Conv2d(cin, cout, 1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

        def forward(self, x):
            return torch.relu(self.bn(self.pw(self.dw(x))) + self.skip(x))

    class GrayNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(24), nn.ReLU())
            self.body = nn.Sequential(Block(24, 32), nn.MaxPool2d(2), Block(32, 64),
                                      nn.MaxPool2d(2), Block(64, 96), nn.MaxPool2d(2))
            self.head = nn.Linear(96, classes)

        def forward(self, x):
            return self.head(self.body(self.stem(x)).mean((2, 3)))

    return GrayNet()


def train_gray(x: np.ndarray, y: np.ndarray, classes: int, epochs: int, seed: int = 0,
               log=say):
    """AdamW, one-cycle LR, horizontal flips; returns (model in eval mode, history)."""
    import torch

    torch.manual_seed(seed)
    model = gray_cnn(classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(1, steps))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=g)
        total = correct = 0
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            xb = xt[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            out = model(xb)
            loss = torch.nn.functional.cross_entropy(out, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += len(idx)
            correct += int((out.argmax(1) == yt[idx]).sum())
        history.append({"epoch": epoch + 1, "train_accuracy": round(correct / total, 4)})
        log(f"  grey CNN epoch {epoch + 1}/{epochs}: train accuracy {correct / total:.3f}")
    return model.eval(), history


def export_gray(model, out: Path) -> dict[str, Path]:
    """The three files a research group would hand over: ONNX, .pt2, TorchScript."""
    import torch

    example = (torch.zeros(1, 1, GRAY_SIZE, GRAY_SIZE),)
    files = {"onnx": out / "gray_cnn.onnx", "pt2": out / "gray_cnn.pt2",
             "torchscript": out / "gray_cnn.ts"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, example, str(files["onnx"]), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    torch.export.save(torch.export.export(model, example), str(files["pt2"]))
    torch.jit.save(torch.jit.trace(model, example), str(files["torchscript"]))
    return files


def torch_predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i:i + 128])).numpy()
                               for i in range(0, len(x), 128)])


# --------------------------------------------------------------------------- Keras MobileNetV2
def keras_mnv2(classes: int, size: int = 128, seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35,
                                          include_top=False, weights=None)
    x = layers.GlobalAveragePooling2D()(base.output)
    x = layers.Dense(64, activation="relu")(x)
    out = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(base.input, out, name="mnv2_035")


def train_keras(x: np.ndarray, y: np.ndarray, classes: int, epochs: int, seed: int = 0,
                verbose: int = 2):
    """Adam (cosine), then precise BN: moving statistics from 512 clean training images, layer
    by layer (fit's EMA statistics lag the weights of a briefly trained model)."""
    import keras

    model = keras_mnv2(classes, x.shape[1], seed)
    steps = epochs * ((len(x) + 31) // 32)
    lr = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=max(1, steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=verbose)
    history = [{"epoch": i + 1, "train_accuracy": round(float(a), 4)}
               for i, a in enumerate(hist.history["accuracy"])]
    clean = x[np.random.default_rng(seed).permutation(len(x))[:512]]  # a random 512 suffice
    for bn in [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]:
        sub = keras.Model(model.input, bn.input)
        acts = np.concatenate([np.asarray(sub(clean[i:i + 128], training=False), np.float64)
                               .reshape(-1, bn.input.shape[-1])
                               for i in range(0, len(clean), 128)])
        bn.moving_mean.assign(acts.mean(0).astype(np.float32))
        bn.moving_variance.assign(acts.var(0).astype(np.float32))
    return model, history


def keras_predict(model, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(model(x[i:i + 128], training=False))
                           for i in range(0, len(x), 128)])


def export_keras(model, out: Path) -> Path:
    """tf2onnx, as the model's authors published it: NHWC input, softmax in the graph."""
    import tensorflow as tf
    import tf2onnx

    path = out / "mnv2_nhwc.onnx"
    size = model.input.shape[1]
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return path


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data", type=Path, help="class-per-folder images (e.g. edgekit phantoms)")
    ap.add_argument("out", type=Path, help="folder to write the models into")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs [30 for the grey CNN, 10 for the Keras model]")
    ap.add_argument("--keras", action="store_true",
                    help="also the Keras MobileNetV2 → tf2onnx NHWC model (needs TensorFlow)")
    ap.add_argument("--keras-size", type=int, default=64, help="its input size [64]")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files, y, classes = folder_images(args.data)
    say(f"{len(files)} images in {len(classes)} classes: {', '.join(classes)}")
    x = np.stack([gray_own(f) for f in files])
    model, _ = train_gray(x, y, len(classes), args.epochs or 30, log=lambda m: None)
    acc = float((torch_predict(model, x).argmax(1) == y).mean())
    say(f"grey CNN: {100 * acc:.1f} % on its training images with its own preprocessing")
    for path in export_gray(model, args.out).values():
        say(f"wrote {path}")
    say(f"wrote {write_yaml(args.out / 'gray.yaml', GRAY_PREPROCESS)} (its preprocessing)")
    if args.keras:
        xk = np.stack([keras_own(f, args.keras_size) for f in files])
        kmodel, _ = train_keras(xk, y, len(classes), args.epochs or 10, verbose=0)
        acc = float((keras_predict(kmodel, xk).argmax(1) == y).mean())
        say(f"MobileNetV2: {100 * acc:.1f} % on its training images with its own preprocessing")
        say(f"wrote {export_keras(kmodel, args.out)}")
        say(f"wrote {write_yaml(args.out / 'mnv2.yaml', KERAS_PREPROCESS)} (its preprocessing)")


if __name__ == "__main__":
    main()
