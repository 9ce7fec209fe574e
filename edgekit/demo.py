"""``edgekit demo``: the whole path on embedded synthetic data, built from the public API.

1. write a small SYNTHETIC brain-MRI phantom dataset to ``OUT/data`` (class-per-folder, the
   layout users have), 2. train a small zoo model briefly into ``OUT/model.pt``, 3. evaluate it on
   the held-out split, 4. compress it with the ``int8`` recipe to ONNX Runtime, OpenVINO and
   TFLite into ``OUT/bundle`` and verify every artifact. Later stages (bench) extend this module.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError
from edgekit.ui import progress_bar, status

MARKER = ".edgekit-demo"


@dataclass
class DemoConfig:
    out: Path = Path("edgekit-demo")
    model: str = "dsconv_cbam_gap"
    images_per_class: int = 200
    image_size: int = 128
    input_size: int = 96
    epochs: int = 25
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


@dataclass
class DemoResult:
    out: Path
    data: Path
    checkpoint: Path
    metrics: dict[str, Any]
    params: int
    macs: int
    seconds: dict[str, float]
    best_epoch: int
    val_images: int
    compressed: Any = None  # edgekit.compress.CompressResult


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"--out {out} is a non-empty folder that edgekit demo did not create; "
                          "choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("This folder was written by `edgekit demo`; it may be overwritten.\n")


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the demo end to end and return what it produced (also written to OUT/summary.json)."""
    from edgekit.compress import compress
    from edgekit.data.phantoms import MRI_CLASSES, generate_mri_dataset
    from edgekit.evaluate import evaluate_model, held_out_dataset
    from edgekit.inspect import summarize
    from edgekit.sources import load_model
    from edgekit.train import TrainConfig, train

    out = Path(cfg.out)
    _prepare_out(out)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    total = cfg.images_per_class * len(MRI_CLASSES)
    with progress_bar("1/4 Writing synthetic MRI phantoms", total) as bar:
        generate_mri_dataset(data, n_per_class=cfg.images_per_class, size=cfg.image_size,
                             seed=cfg.seed, progress=bar.set)
    seconds["data"] = time.perf_counter() - t
    status(f"1/4 Wrote {total} SYNTHETIC brain-MRI phantoms ({', '.join(MRI_CLASSES)}) to {data}")

    t = time.perf_counter()
    status(f"2/4 Training {cfg.model} at {cfg.input_size}px")
    result = train(TrainConfig(model=cfg.model, data=str(data), out=str(out / "model.pt"),
                               epochs=cfg.epochs, input_size=cfg.input_size,
                               batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                               patience=max(4, cfg.epochs // 2)))
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    model = load_model(result.checkpoint)
    evaluation = evaluate_model(model, held_out_dataset(model), seed=cfg.seed)
    summary = summarize(model)
    seconds["evaluate"] = time.perf_counter() - t
    status(f"3/4 Evaluated the checkpoint on {evaluation.n} held-out images")

    t = time.perf_counter()
    status("4/4 Compressing to INT8 for ONNX Runtime, OpenVINO and TFLite")
    compressed = compress(result.checkpoint, data=data, out=out / "bundle", recipe="int8",
                          overwrite=True, allow_accuracy_drop=True)
    seconds["compress"] = time.perf_counter() - t
    seconds["total"] = sum(seconds.values())
    demo = DemoResult(out, data, result.checkpoint, evaluation.metrics, summary.params,
                      summary.macs, seconds, result.best_epoch, evaluation.n, compressed)
    (out / "summary.json").write_text(json.dumps({
        "note": "edgekit demo on SYNTHETIC phantoms: numbers say nothing about clinical performance",
        "model": cfg.model, "checkpoint": str(demo.checkpoint), "parameters": demo.params,
        "macs": demo.macs, "input_size": cfg.input_size, "best_epoch": demo.best_epoch,
        "validation_images": demo.val_images, "metrics": demo.metrics,
        "bundle": str(out / "bundle"), "bundle_status": compressed.manifest["status"],
        "artifacts": {a.name: {"bytes": a.bytes, "passed": a.passed,
                               "top1_agreement": a.verification.get("top1_agreement")}
                      for a in compressed.artifacts},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }, indent=2))
    return demo
