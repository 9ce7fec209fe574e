"""``edgekit demo``: the whole path on SYNTHETIC phantoms, no downloads."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.cli.display import (
    fmt_count,
    print_metrics,
    print_summary,
    report_of,
    verification_table,
)
from edgekit.demo import DemoConfig, run_demo
from edgekit.ui import out as stdout
from edgekit.ui import status

_D = DemoConfig()


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=_D.out,
              show_default=True, help="Folder for data/, model.pt and summary.json.")
@click.option("--model", default=_D.model, show_default=True, help="Zoo architecture to train.")
@click.option("--images-per-class", type=click.IntRange(8, 100_000), default=_D.images_per_class,
              show_default=True, help="Synthetic MRI phantoms per class.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=_D.epochs, show_default=True)
@click.option("--input-size", type=click.IntRange(32, 1024), default=_D.input_size,
              show_default=True, help="Model input size in pixels.")
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option("--test-images-per-class", type=click.IntRange(2, 100_000),
              default=_D.test_images_per_class, show_default=True,
              help="New phantoms per class (another seed) the benchmark scores accuracy on.")
@click.option("--no-bench", is_flag=True, help="Stop after compression (skip the benchmark).")
def command(out: Path, model: str, images_per_class: int, epochs: int, input_size: int,
            seed: int, test_images_per_class: int, no_bench: bool) -> None:
    """Run edgekit end to end on embedded SYNTHETIC brain-MRI phantoms (no downloads).

    Writes a class-per-folder phantom dataset to OUT/data, trains a small zoo model into
    OUT/model.pt, evaluates it on the held-out split, compresses it to INT8 for ONNX Runtime,
    OpenVINO and TFLite into OUT/bundle with verification, benchmarks the bundle on x86-local
    against the PyTorch model on new test phantoms and writes OUT/bench/<run>/report.html (about
    4 minutes on 2 CPU cores). The phantoms are synthetic: the numbers say nothing about
    clinical accuracy.
    """
    res = run_demo(DemoConfig(out=out, model=model, images_per_class=images_per_class,
                              epochs=epochs, input_size=input_size, seed=seed,
                              bench=not no_bench, test_images_per_class=test_images_per_class))
    print_metrics(res.metrics, title=f"{model} on {res.val_images} held-out SYNTHETIC phantoms")
    stdout.print(verification_table(res.compressed))
    if res.bench is not None:
        print_summary(report_of(res.bench))
    s = res.seconds
    status(f"Model: {res.checkpoint} — {res.params:,} parameters, {fmt_count(res.macs)}MACs at "
           f"{input_size}px, best epoch {res.best_epoch}")
    status(f"Time: data {s['data']:.0f} s, training {s['train']:.0f} s, evaluation "
           f"{s['evaluate']:.0f} s, compression {s['compress']:.0f} s"
           + (f", benchmark {s['bench']:.0f} s" if "bench" in s else "")
           + f", total {s['total']:.0f} s. "
           f"Summary: {res.out / 'summary.json'}")
    status(f"Bundle: {res.out / 'bundle'} — try: python -m edgekit.runner {res.out / 'bundle'} "
           f"{next((res.data / 'glioma').glob('*.jpg'))}")
    if res.bench is not None:
        status(f"Report: {res.bench.run_dir / 'report.html'}")
