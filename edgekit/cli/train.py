"""``edgekit train MODEL --data DIR``: train a zoo architecture on a dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.display import print_metrics
from edgekit.train import TrainConfig, train
from edgekit.ui import status


@click.command("train")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Class-per-folder images (DIR/<class>/*.jpg) or, for ich_mrf, a CT folder "
                   "with DICOM slices and labels.csv.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("model.pt"),
              show_default=True, help="Checkpoint to write (state_dict + JSON metadata).")
@click.option("--epochs", type=click.IntRange(1, 10_000), default=30, show_default=True)
@click.option("--input-size", type=click.IntRange(32, 4096), default=None,
              help="Square input size in pixels [default: the model's published size].")
@click.option("--batch-size", type=click.IntRange(2, 4096), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True, help="Peak learning rate (AdamW, warm-up then cosine).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.05,
              show_default=True)
@click.option("--class-weights/--no-class-weights", default=True, show_default=True,
              help="Weight the loss by inverse class frequency.")
@click.option("--mixup", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="MixUp Beta(α, α); 0 turns it off.")
@click.option("--cutmix", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="CutMix Beta(α, α); 0 turns it off.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random flips, small rotations/zoom/shifts and contrast changes.")
@click.option("--patience", type=click.IntRange(1, 10_000), default=8, show_default=True,
              help="Stop after this many epochs without validation improvement.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.2, show_default=True)
@click.option("--dedup/--no-dedup", default=True, show_default=True,
              help="Remove near-duplicate images (perceptual hash) before splitting.")
@click.option("--max-per-class", type=click.IntRange(2, None), default=None,
              help="Use at most this many training images per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              show_default=True, help="Corrupt or non-image files: skip with a warning, or fail.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(model: str, data: Path, out: Path, as_json: bool, **options) -> None:
    """Train MODEL (a zoo name, see `edgekit models`) on --data and save the best epoch.

    The split is seeded, stratified and de-duplicated; the checkpoint records the classes,
    preprocessing spec, metrics and validation files, and loads with weights_only=True.
    """
    result = train(TrainConfig(model=model, data=str(data), out=str(out), **options))
    if as_json:
        click.echo(json.dumps({"checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch,
                               "seconds": round(result.seconds, 1), "metrics": result.metrics,
                               "history": result.history}, indent=2))
        return
    key, value = result.headline
    print_metrics(result.metrics, title=f"Validation ({result.split['val']} held-out images)")
    status(f"Best epoch {result.best_epoch}: val {key} {value:.4f}; "
           f"{result.seconds:.0f} s. Checkpoint: {result.checkpoint}")
