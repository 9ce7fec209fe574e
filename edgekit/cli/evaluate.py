"""``edgekit evaluate MODEL --data DIR``: clinical metrics of a model on a labelled folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.display import print_metrics


@click.command("evaluate")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Labelled images with the model's classes (e.g. the Kaggle Testing folder).")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              show_default=True, help="Corrupt or non-image files: skip with a warning, or fail.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap confidence intervals.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
def command(model: str, data: Path, on_error: str, seed: int, as_json: bool) -> None:
    """Evaluate MODEL (a checkpoint) on every image in --data: accuracy, per-class
    sensitivity/specificity, macro-F1, kappa, calibration error, with 95 % bootstrap CIs."""
    from edgekit.evaluate import evaluate_model
    from edgekit.sources import load_model

    ev = evaluate_model(load_model(model), data, on_error=on_error, seed=seed)
    if as_json:
        click.echo(json.dumps({"data": str(ev.data), "n": ev.n, "metrics": ev.metrics,
                               "skipped": ev.skipped}, indent=2))
        return
    print_metrics(ev.metrics, title=f"{model} on {data} ({ev.n} images)")
