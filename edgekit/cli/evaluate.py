"""``edgekit evaluate MODEL --data DIR``: clinical metrics of a model on a labelled folder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click

from edgekit.cli.display import print_metrics
from edgekit.cli.options import classes_option, preprocess_options, source_options
from edgekit.data.folder import scan
from edgekit.evaluate import evaluate_model, source_warnings
from edgekit.sources import load_model
from edgekit.sources.declared import DeclaredPreprocess


@click.command("evaluate")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Labelled images with the model's classes (e.g. the Kaggle Testing folder).")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              show_default=True, help="Corrupt or non-image files: skip with a warning, or fail.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap confidence intervals.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Decision threshold of a sigmoid head [default: 0.5].")
@preprocess_options
@source_options
@classes_option
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
def command(model: str, data: Path, on_error: str, seed: int, threshold: float | None,
            preprocess: DeclaredPreprocess, trust_source: bool, input_range: str | None,
            classes: tuple[str, ...] | None, as_json: bool) -> None:
    """Evaluate MODEL (a checkpoint, ONNX or Keras model) on every image in --data: accuracy,
    per-class sensitivity/specificity, macro-F1, kappa, calibration error, with 95 % bootstrap
    CIs; binary (one sigmoid unit) heads add sensitivity, specificity and AUROC."""
    loaded = load_model(model, preprocess=preprocess, trust_source=trust_source,
                        input_range=input_range)
    if classes:
        loaded = loaded.with_class_order(classes)
    elif not loaded.class_names:  # ONNX / Keras: the classes are the data's folders
        loaded = loaded.with_classes(scan(data, on_error=on_error).classes)
    if threshold is not None:
        loaded = loaded.with_threshold(threshold)
    ev = evaluate_model(loaded, data, on_error=on_error, seed=seed)
    for line in source_warnings(ev.metrics, loaded.class_names):
        warnings.warn(line, stacklevel=1)
    if as_json:
        click.echo(json.dumps({"data": str(ev.data), "n": ev.n, "metrics": ev.metrics,
                               "skipped": ev.skipped}, indent=2))
        return
    print_metrics(ev.metrics, title=f"{model} on {data} ({ev.n} images)")
