"""``edgekit demo``: the whole path on embedded synthetic data, built from the public API.

1. write a small SYNTHETIC brain-MRI phantom dataset to ``OUT/data`` (class-per-folder, the
   layout users have), 2. train a small zoo model briefly into ``OUT/model.pt``, 3. evaluate it on
   the held-out split, 4. compress it with the ``int8`` recipe to ONNX Runtime, OpenVINO and
   TFLite into ``OUT/bundle`` and verify every artifact, 5. benchmark the bundle on
   ``x86-local`` against the PyTorch model, on a fresh phantom test set (new seed: images the
   model never saw), with a shortened timing protocol, and write the HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.bench.protocol import Protocol
from edgekit.bench.run import bench
from edgekit.compress import compress
from edgekit.data.phantoms import MRI_CLASSES, generate_mri_dataset
from edgekit.errors import ConfigError
from edgekit.evaluate import evaluate_model, held_out_dataset
from edgekit.inspect import summarize
from edgekit.sources import load_model
from edgekit.train import TrainConfig, train
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
    test_images_per_class: int = 50
    bench: bool = True
    target: str = "x86-local"

    @staticmethod
    def bench_protocol() -> Any:
        """Shortened (labelled quick in reports): 3 trials of >= 100 calls and 1 s each."""
        return Protocol(warmup_iters=10, warmup_seconds=0.5, iters=100, min_seconds=1.0,
                        trials=3, quick=True)


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
    bench: Any = None  # edgekit.bench.run.BenchRun


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
    out = Path(cfg.out)
    _prepare_out(out)
    seconds: dict[str, float] = {}
    n = 5 if cfg.bench else 4

    t = time.perf_counter()
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    total = cfg.images_per_class * len(MRI_CLASSES)
    with progress_bar(f"1/{n} Writing synthetic MRI phantoms", total) as bar:
        generate_mri_dataset(data, n_per_class=cfg.images_per_class, size=cfg.image_size,
                             seed=cfg.seed, progress=bar.set)
    seconds["data"] = time.perf_counter() - t
    status(f"1/{n} Wrote {total} SYNTHETIC brain-MRI phantoms ({', '.join(MRI_CLASSES)}) to {data}")

    t = time.perf_counter()
    status(f"2/{n} Training {cfg.model} at {cfg.input_size}px")
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
    status(f"3/{n} Evaluated the checkpoint on {evaluation.n} held-out images")

    t = time.perf_counter()
    status(f"4/{n} Compressing to INT8 for ONNX Runtime, OpenVINO and TFLite")
    compressed = compress(result.checkpoint, data=data, out=out / "bundle", recipe="int8",
                          overwrite=True, allow_accuracy_drop=True)
    seconds["compress"] = time.perf_counter() - t
    run = _bench(cfg, out, n, seconds) if cfg.bench else None
    seconds["total"] = sum(seconds.values())
    demo = DemoResult(out, data, result.checkpoint, evaluation.metrics, summary.params,
                      summary.macs, seconds, result.best_epoch, evaluation.n, compressed, run)
    (out / "summary.json").write_text(json.dumps({
        "note": "edgekit demo on SYNTHETIC phantoms: numbers say nothing about clinical performance",
        "model": cfg.model, "checkpoint": str(demo.checkpoint), "parameters": demo.params,
        "macs": demo.macs, "input_size": cfg.input_size, "best_epoch": demo.best_epoch,
        "validation_images": demo.val_images, "metrics": demo.metrics,
        "bundle": str(out / "bundle"), "bundle_status": compressed.manifest.status,
        "artifacts": {a.name: {"bytes": a.bytes, "passed": a.passed,
                               "top1_agreement": a.verification.top1_agreement}
                      for a in compressed.artifacts},
        "bench_report": str(run.run_dir / "report.html") if run else None,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }, indent=2))
    return demo


def _bench(cfg: DemoConfig, out: Path, n: int, seconds: dict[str, float]) -> Any:
    """Step 5: a fresh phantom test set (another seed), then ``edgekit bench`` on the bundle."""
    t = time.perf_counter()
    test = out / "test-data"
    if test.exists():
        shutil.rmtree(test)
    generate_mri_dataset(test, n_per_class=cfg.test_images_per_class, size=cfg.image_size,
                         seed=cfg.seed + 1_000_003)
    status(f"5/{n} Benchmarking the bundle on {cfg.target} against the PyTorch model "
           f"({4 * cfg.test_images_per_class} new test phantoms, shortened timing protocol)")
    run = bench([out / "bundle"], target=cfg.target, data=test, out=out / "bench",
                protocol=cfg.bench_protocol(), seed=cfg.seed)
    seconds["bench"] = time.perf_counter() - t
    return run
