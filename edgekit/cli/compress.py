"""``edgekit compress MODEL --recipe int8 --data DIR --out BUNDLE``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from edgekit.auto import AutoOptions, AutoResult, render_markdown, search
from edgekit.backends import backend_names
from edgekit.backends.base import ACTIVATION_RANGES
from edgekit.cli.display import gate_lines, verification_table
from edgekit.cli.options import (
    classes_option,
    latency_target_options,
    preprocess_options,
    pruning_cost_options,
    source_options,
)
from edgekit.compress import CompressOptions, compress
from edgekit.errors import VerificationFailed
from edgekit.quantize.rescue import remedy_text
from edgekit.quantize.sensitivity import format_table
from edgekit.ui import out as stdout
from edgekit.ui import status


@click.command("compress")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Labelled images with the model's classes: calibration and verification "
                   "images are drawn from it (never the same ones).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle folder to create (written atomically).")
@click.option("--recipe", default="int8", show_default=True,
              help="Built-in recipe (fp32, int8, fp16; prune30, prune50, prune30-int8, "
                   "prune50-int8 prune channels first), a recipe YAML file, or auto: search "
                   "pruning {none, 30 %, 50 %} x {fp32, int8} x backends under the int8 gate, "
                   "time them on --target and recommend one (OUT/auto.md).")
@click.option("--latency-budget-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="--recipe auto: recommend the most accurate gate-passing artifact with p50 "
                   "at most this [default: the fastest gate-passing one].")
@click.option("--search-minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="--recipe auto: start no new candidate after this many minutes (the result "
                   "says what was skipped).")
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(backend_names()),
              help="Only these backends (repeatable) [default: the recipe's].")
@click.option("--calibration-images", type=click.IntRange(1, 100_000), default=None,
              help="Calibration images [default: the recipe's, 300 for int8].")
@click.option("--calibration-method", type=click.Choice(["minmax", "percentile", "entropy"]),
              default=None, help="Range estimation [default: the recipe's].")
@click.option("--activation-ranges", type=click.Choice(ACTIVATION_RANGES), default=None,
              help="minmax calibration: an activation's range is the min/max over all "
                   "calibration images (global) or the mean of each image's min/max (mean) "
                   "[default: the recipe's, else each backend's: openvino mean, onnxruntime "
                   "and litert global].")
@click.option("--verification-images", type=click.IntRange(1, 1_000_000), default=None,
              help="Cap on held-out verification images [default: the recipe's: every image "
                   "calibration does not use; 500 for pruning recipes].")
@click.option("--int8-io", is_flag=True, default=None,
              help="TFLite: integer input/output tensors (scale/zero point in the manifest).")
@preprocess_options
@click.option("--target-macs", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Pruning recipes: keep this fraction of the original MACs "
                                 "(e.g. 0.5) instead of the recipe's target.")
@latency_target_options
@pruning_cost_options
@source_options
@classes_option
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Decision threshold of a sigmoid head (one output for two "
                                 "classes, or multi-label), recorded in the bundle [default: 0.5].")
@click.option("--seed", type=int, default=None, help="[default: the recipe's]")
@click.option("--allow-accuracy-drop", is_flag=True,
              help="Exit 0 even when an artifact misses the recipe's accuracy gate.")
@click.option("--strict-gate", is_flag=True,
              help="Treat an inconclusive gate (too few verification images to show the drop "
                   "is within the limit) as a failure: exit 1.")
@click.option("--no-rescue", is_flag=True,
              help="INT8: do not re-export an artifact that misses its gate with its most "
                   "sensitive layers kept in float (the recipe's rescue; on for int8).")
@click.option("--explain", is_flag=True,
              help="INT8: print each artifact's layers ranked by the error their quantization "
                   "adds (measured on calibration-side images), even when it passes.")
@click.option("--cluster", default=None, metavar="auto|ray://HOST:PORT|HOST:PORT",
              help="INT8: run the rescue's candidate re-exports as Ray tasks (needs pip install "
                   "'edgekit[cluster]'; 'auto' starts a local Ray). Same choice as without; "
                   "every worker must see --out's folder under the same path.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              show_default=True, help="Corrupt or non-image files: skip with a warning, or fail.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def command(model: str, data: Path, out: Path, recipe: str, backends: tuple[str, ...],
            as_json: bool, no_rescue: bool, latency_budget_ms: float | None,
            search_minutes: float | None, **options: Any) -> None:
    """Quantize/export MODEL per the recipe, verify every artifact on held-out images and write
    a bundle (artifacts + manifest.json + README.md).

    MODEL is an edgekit checkpoint (model.pt), ARCH:weights.pt, a torch.export .pt2, a
    TorchScript file, an .onnx file, or a Keras model (.keras, .h5 or a SavedModel folder;
    needs edgekit[keras]). Keras models are loaded in safe mode, cleaned of inference no-ops
    (random augmentation, noise, dropout) and keep their in-graph Rescaling, so the bundle
    feeds them the pixel range they expect; a one-unit sigmoid head is a binary classifier
    whose classes are DIR's two folders (the second is the positive class). Pruning recipes (prune30-int8 …) first remove whole
    channels from a PyTorch model (a checkpoint or a .pt2) and recover it by distillation on
    DIR's non-verification images; their gate compares every artifact with the UNPRUNED model,
    and the pruned model is kept in the bundle (source/pruned.pt, or source/pruned.pt2 for a
    model that is not a zoo architecture).

    Each gate check is decided on the 95 % confidence interval of the paired drop: pass when
    it lies within the limit, FAIL when beyond it, inconclusive when the images cannot tell
    (the table says how many would). Exits 1 when an artifact FAILS its gate (the bundle is
    still written, marked failed-gate) unless --allow-accuracy-drop; an inconclusive gate
    exits 0 with a warning (bundle marked inconclusive-gate) unless --strict-gate.
    """
    copts = CompressOptions(backends=list(backends) or None,
                            rescue=False if no_rescue else None, **options)
    if recipe == "auto":
        _auto(model, data, out, AutoOptions(compress=copts, latency_budget_ms=latency_budget_ms,
                                            search_minutes=search_minutes), as_json)
        return
    if latency_budget_ms is not None or search_minutes is not None:
        raise click.UsageError("--latency-budget-ms and --search-minutes are for --recipe auto")
    try:  # SIGTERM behaves like Ctrl-C (edgekit.interrupts): cleaned up, reported
        result = compress(model, data=data, out=out,
                          options=dataclasses.replace(copts, recipe=recipe))
    except VerificationFailed as exc:
        if getattr(exc, "result", None) is not None:
            stdout.print(verification_table(exc.result))
            for line in gate_lines(exc.result) + rescue_lines(exc.result, options["explain"]):
                stdout.print(line)
        raise
    if as_json:
        click.echo(json.dumps(result.manifest.to_json(), indent=2))
        return
    stdout.print(verification_table(result))
    for line in gate_lines(result) + rescue_lines(result, options["explain"]):
        stdout.print(line)
    pruning = result.manifest.pruning
    if pruning:
        status(f"Pruned: {100 * pruning['macs_fraction']:.1f} % of the MACs "
               f"({pruning['macs_before']:,} → {pruning['macs_after']:,}), parameters "
               f"{pruning['params_before']:,} → {pruning['params_after']:,}; the table's Δ is "
               "against the unpruned model")
    head = result.manifest.head
    if head is not None and head.type == "binary-sigmoid":
        status(f"Binary head: positive class {head.positive_class!r} when its probability "
               f">= {head.threshold:g} (sensitivity/specificity/AUROC in the table)")
    keras = result.manifest.source.keras
    if keras:
        removed = ", ".join(keras["removed_layers"]) or "none"
        status(f"Keras source: inputs {keras['input_range']} ({keras['input_range_reason']}); "
               f"removed for inference: {removed}")
    status(f"Bundle: {result.bundle} ({len(result.artifacts)} artifacts, "
           f"{result.seconds:.0f} s). Check it any time with: edgekit verify {result.bundle}")


def _auto(model: str, data: Path, out: Path, options: AutoOptions, as_json: bool) -> None:
    """``--recipe auto``: the search, its table and recommendation; exit 1 when nothing passes."""
    result: AutoResult = search(model, data=data, out=out, options=options)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
    else:
        stdout.print(Text(render_markdown(result)))  # what OUT/auto.md holds
    if not result.passed:
        within = " within the latency budget" if options.latency_budget_ms else ""
        raise VerificationFailed(f"no candidate passes the gate{within}; see {out / 'auto.md'}")
    status(f"Recommended: {result.recommended.id} ({out / result.recommended.bundle}); "
           f"details in {out / 'auto.md'}")


def rescue_lines(result: Any, explain: bool) -> list[Any]:
    """What the rescue did to each INT8 artifact (layers kept in float, attempts) and, with
    ``explain``, each one's ranked sensitivity table (plain text: layer names are not markup)."""
    lines: list[Any] = []
    for a in result.artifacts:
        rescue = a.artifact.quantization.get("rescue")
        if rescue:
            kept, option = rescue["keep_float"], rescue.get("options")
            lines.append(Text(
                f"  {a.name}: rescue ({len(rescue['attempts'])} re-exports): "
                + (f"{remedy_text(option, kept)}{': ' + ', '.join(kept) if kept else ''}; gate "
                   f"{rescue['first_decision']} → {a.verification.decision}; "
                   f"{rescue.get('latency', 'latency not measured')}"
                   if rescue.get("chosen_attempt") else "no candidate helped; plain INT8 kept")))
            lines += [Text(f"    attempt {i}: {t['options'] + ' + ' if t.get('options') else ''}"
                           f"{len(t['keep_float'])} in float, tuning agreement "
                           f"{t['tuning_top1_agreement']:.3f}, KL {t.get('tuning_mean_kl')}, "
                           f"p50 {t.get('p50_ms')} ms{' (passes)' if t.get('passed') else ''}")
                      for i, t in enumerate(rescue["attempts"], start=1)]
        if explain and a.sensitivity:
            lines.append(Text(f"\n{a.name}: layers ranked by the error their INT8 quantization "
                              f"adds (relative L2 vs fp32 on "
                              f"{a.artifact.quantization.get('sensitivity_images')} images)"))
            lines.append(Text(format_table(a.sensitivity)))
    return lines
