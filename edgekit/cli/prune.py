"""``edgekit prune MODEL --data DIR --out PRUNED.pt`` (and ``--scan``: per-group sensitivity)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich import box
from rich.table import Table

from edgekit.cli.display import fmt_count
from edgekit.cli.options import (
    classes_option,
    latency_target_options,
    preprocess_options,
    pruning_cost_options,
)
from edgekit.errors import VerificationFailed
from edgekit.inspect import summarize
from edgekit.manifest import recorded_decision as _decision
from edgekit.metrics import metric_value as _value
from edgekit.prune.recover import prune_file, require_prunable, scan_source
from edgekit.sources import load_model
from edgekit.sources.declared import DeclaredPreprocess
from edgekit.ui import out as stdout
from edgekit.ui import status

TARGETS = ("target_macs", "ratio", "target_latency_ms", "target_time")
# options that only mean something when pruning (refused with --scan)
PRUNE_ONLY = ("out", "recipe", *TARGETS, "target", "threads", "cost", "importance",
              "global_pruning",
              "max_layer_ratio", "steps", "epochs", "overwrite", "allow_accuracy_drop")


def _flag(name: str) -> str:
    return {"global_pruning": "--global/--per-layer"}.get(name, "--" + name.replace("_", "-"))


def _given(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """The options among ``names`` that the user set (command line or environment)."""
    return [n for n in names if ctx.get_parameter_source(n) in (ParameterSource.COMMANDLINE,
                                                               ParameterSource.ENVIRONMENT)]


def _headline(task: str) -> tuple[str, str]:
    key = "mean_auroc" if task == "multilabel" else "accuracy"
    return key, key.replace("_", " ").replace("auroc", "AUROC")


def _fmt(value: float | None, multilabel: bool) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if multilabel else f"{100 * value:.1f} %"


# --------------------------------------------------------------------------- pruning tables
def size_table(record: dict[str, Any]) -> Table:
    """MACs and parameters, original → pruned."""
    table = Table(title="Size at batch 1")
    for col, just in (("", "left"), ("original", "right"), ("pruned", "right"),
                      ("pruned / original", "right")):
        table.add_column(col, justify=just)
    for label, key in (("MACs", "macs"), ("parameters", "params")):
        before, after = record[f"{key}_before"], record[f"{key}_after"]
        fmt = fmt_count if key == "macs" else (lambda n: f"{n:,}")
        table.add_row(label, fmt(before), fmt(after), f"{after / before:.1%}" if before else "-")
    return table


def verification_table(record: dict[str, Any], source_metrics: dict[str, Any],
                       task: str) -> Table:
    """The original and the pruned model on the verification images, with the gate verdict."""
    multilabel = task == "multilabel"
    key, label = _headline(task)
    v = record["verification"]
    src, value = _value(source_metrics[key]), _value(v["metrics"][key])
    delta = v.get("accuracy_delta")
    if delta:
        dtxt = (f"{100 * delta['value']:+.1f} [{100 * delta['ci95'][0]:+.1f}, "
                f"{100 * delta['ci95'][1]:+.1f}]")
    else:
        dtxt = "n/a" if src is None or value is None else f"{value - src:+.4f}"
    failed = [c for c in v["checks"] if _decision(c) == "fail"]
    unsure = [c for c in v["checks"] if _decision(c) == "inconclusive"]
    verdict = ("[green]pass[/]" if v["passed"] else
               f"[red]FAIL[/] ({len(failed)} check{'s' if len(failed) != 1 else ''})" if failed
               else f"[yellow]inconclusive[/] ({len(unsure)} check"
                    f"{'s' if len(unsure) != 1 else ''})")
    table = Table(title=f"Verification on {v.get('n', '?')} held-out images",
                  caption=record.get("verification_origin"))
    dhead = "Δ vs original [95 % CI]" if delta else "Δ vs original"
    for col, just in (("model", "left"), (label, "right"), (dhead, "right"),
                      ("top-1 agree", "right"), ("gate", "left")):
        table.add_column(col, justify=just)
    table.add_row("original", _fmt(src, multilabel), "", "", "")
    table.add_row("pruned", _fmt(value, multilabel), dtxt,
                  f"{v['top1_agreement']:.3f}" if "top1_agreement" in v else "-", verdict)
    return table


def failed_checks(record: dict[str, Any]) -> list[str]:
    """One line per gate check the pruned model failed or that too few images could decide."""
    lines = []
    for c in record["verification"]["checks"]:
        decision = _decision(c)
        if decision == "pass":
            continue
        ci = c.get("ci95")
        value = "n/a" if c.get("value") is None else f"{c['value']:.3g}"
        text = f"{c['check']}: {value}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
        if decision == "fail":
            lines.append(f"  [red]✗[/] {text} > {c['limit']:.3g}")
        else:
            need = c.get("images_to_decide")
            lines.append(f"  [yellow]?[/] {text} vs {c['limit']:.3g}: inconclusive"
                         + (f" on {c['n']} images; ≈{need:,} would decide it" if need else ""))
    return lines


def widths_table(record: dict[str, Any]) -> Table | None:
    """Output channels of every layer whose width changed."""
    before, after = record.get("widths_before") or {}, record.get("widths_after") or {}
    changed = [name for name in before if name in after and after[name] != before[name]]
    if not changed:
        return None
    table = Table(title=f"Layer widths that changed ({len(changed)} of {len(before)} layers)")
    for col, just in (("layer", "left"), ("channels before", "right"),
                      ("after", "right"), ("kept", "right")):
        table.add_column(col, justify=just, overflow="fold")
    for name in changed:
        table.add_row(name, str(before[name]), str(after[name]),
                      f"{after[name] / before[name]:.0%}")
    return table


def recovery_table(record: dict[str, Any]) -> Table | None:
    rows = record.get("recovery") or []
    if not rows:
        return None
    table = Table(title="Recovery (knowledge distillation from the original)")
    for col, just in (("step", "right"), ("epochs", "right"), ("validation metric", "left"),
                      ("start → best", "right"), ("best epoch", "right"), ("time", "right")):
        table.add_column(col, justify=just)
    for i, r in enumerate(rows, start=1):
        start, best = r.get("start_metric"), r.get("best_metric")
        table.add_row(str(i), str(len(r.get("history") or [])), str(r.get("metric", "")),
                      f"{start:.4f} → {best:.4f}" if None not in (start, best) else "n/a",
                      str(r.get("best_epoch", "")), f"{r.get('seconds', 0):.0f} s")
    return table


def latency_table(rows: list[dict[str, Any]], target_ms: float | None, target: str) -> Table:
    table = Table(title=f"Latency search on {target} (target p50 ≤ {target_ms:g} ms, fp32)"
                  if target_ms is not None else f"Latency search on {target}")
    for col in ("MACs kept", "p50", "backend", "threads", ""):
        table.add_column(col, justify="left" if col in ("backend", "") else "right")
    for r in rows:
        met = target_ms is not None and r["p50_ms"] <= target_ms
        table.add_row(f"{r['macs_fraction']:.0%}", f"{r['p50_ms']:.2f} ms", str(r["backend"]),
                      str(r["threads"]), "[green]meets the target[/]" if met else "")
    return table


def _json_payload(result: Any) -> dict[str, Any]:
    record = result.record
    return {"checkpoint": str(result.checkpoint), "passed": result.passed,
            "seconds": result.seconds, "source_metrics": result.source_metrics,
            **{k: v for k, v in record.items() if k != "plan"},
            "plan_format": (record.get("plan") or {}).get("format")}


# --------------------------------------------------------------------------- --scan
def scan_table(scan: dict[str, Any], total_macs: int, task: str, round_to: int) -> Table:
    """One row per channel group, the most sensitive first (groups that were not pruned last)."""
    multilabel = task == "multilabel"
    _, label = _headline(task)
    rows = sorted(scan["groups"], key=lambda r: (r["drop"] is None, -(r["drop"] or 0.0),
                                                 -r["macs"]))
    table = Table(title=f"Sensitivity: each group pruned alone by {scan['ratio']:.0%} of its "
                        f"channels, no recovery; {label} on {scan['images']} held-out images "
                        f"(unpruned: {_fmt(scan['baseline'], multilabel)})",
                  caption=scan.get("origin"), box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for col, just in (("#", "right"), ("group root", "left"), ("channels", "right"),
                      ("layers", "right"), ("MACs", "right"), (label, "right"),
                      ("drop", "right")):
        table.add_column(col, justify=just, overflow="fold", no_wrap=col != "group root")
    for r in rows:
        share = f"{r['macs'] / total_macs:.0%}" if total_macs else "-"
        if r["metric"] is None:
            why = "protected" if r["protected"] else f"≤ {round_to} ch"
            table.add_row(str(r["index"]), r["root"], str(r["channels"]), str(len(r["layers"])),
                          share, f"[dim]{why}[/]", "")
            continue
        drop = r["drop"]
        dtxt = (f"{drop:+.4f}" if multilabel else f"{100 * drop:+.1f} pt")
        table.add_row(str(r["index"]), r["root"], str(r["channels"]), str(len(r["layers"])),
                      share, _fmt(r["metric"], multilabel),
                      f"[red]{dtxt}[/]" if drop > 0 else dtxt)
    return table


def _load(model: str, preprocess: DeclaredPreprocess, classes: tuple[str, ...] | None) -> Any:
    """MODEL with its declared preprocessing (a .pt2 fixes only its shape) and, with
    --classes, its output order."""
    loaded = load_model(model, preprocess=preprocess)
    return loaded.with_class_order(classes) if classes else loaded


def _scan(loaded: Any, data: Path, scan_ratio: float, round_to: int | None,
          protect: tuple[str, ...], verification_images: int | None, seed: int | None,
          on_error: str, as_json: bool) -> None:
    require_prunable(loaded, "edgekit prune --scan")
    round_to = 8 if round_to is None else round_to
    result = scan_source(loaded, data=data, ratio=scan_ratio, round_to=round_to,
                         protect=list(protect) or None,
                         verification_images=300 if verification_images is None
                         else verification_images,
                         seed=0 if seed is None else seed, on_error=on_error)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    stdout.print(scan_table(result, summarize(loaded).macs, loaded.task, round_to))
    stdout.print("A large drop means the group matters: keep it with --protect ROOT (listing "
                 "the default protected layers too: --protect replaces them) or lower "
                 "--max-layer-ratio. MACs: share of the model's MACs in the layers a group "
                 "touches (shares overlap).")


# --------------------------------------------------------------------------- the command
@click.command("prune")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Labelled images with the model's classes: recovery trains on them, the "
                   "verification images are held out of it.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Pruned checkpoint to write (required unless --scan); a .pt2 path writes a "
                   "torch.export program (the only form for a .pt2 or other non-zoo model).")
@click.option("--recipe", default="prune30", show_default=True,
              help="A recipe with a pruning section: prune30, prune50, prune30-int8, "
                   "prune50-int8 or a YAML file.")
@click.option("--target-macs", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Keep this fraction of the original MACs, e.g. 0.6 "
                                 "[default: the recipe's]. --target-macs, --ratio and "
                                 "--target-latency-ms exclude each other.")
@click.option("--ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Instead: remove this fraction of every group's channels.")
@latency_target_options
@pruning_cost_options
@click.option("--importance", type=click.Choice(["taylor", "l2"]), default=None,
              help="Channel importance: first-order Taylor (needs labels) or L2 magnitude "
                   "[default: the recipe's].")
@click.option("--global/--per-layer", "global_pruning", default=None,
              help="Rank channels across the whole network, or prune every layer by the same "
                   "ratio [default: the recipe's].")
@click.option("--max-layer-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="No layer loses more than this fraction of its channels.")
@click.option("--round-to", type=click.IntRange(1, 256), default=None,
              help="Keep widths multiples of this (8 suits AVX2/NEON and INT8 kernels).")
@click.option("--protect", multiple=True, metavar="LAYER",
              help="Never prune the group of this layer (repeatable; replaces the default "
                   "protection of the stem; the classifier and a depthwise conv on the input "
                   "are always protected; see `edgekit inspect --groups`).")
@click.option("--steps", type=click.IntRange(1, 20), default=None,
              help="Iterative pruning: this many prune → recover rounds.")
@click.option("--epochs", type=click.IntRange(0, 1000), default=None,
              help="Recovery epochs per step (0: no recovery) [default: the recipe's].")
@click.option("--verification-images", type=click.IntRange(1, 1_000_000), default=None,
              help="Held-out images to score the pruned model on [default: the recipe's, 500; "
                   "300 with --scan].")
@click.option("--seed", type=int, default=None, help="[default: the recipe's; 0 with --scan]")
@click.option("--allow-accuracy-drop", is_flag=True,
              help="Exit 0 even when the pruned model misses the recipe's accuracy gate.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at --out.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              show_default=True, help="Corrupt or non-image files: skip with a warning, or fail.")
@click.option("--scan", is_flag=True,
              help="Prune nothing: show how much accuracy each channel group loses when pruned "
                   "alone (no recovery). Refuses --out and the pruning/recovery options.")
@click.option("--scan-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Fraction of each group's channels removed by --scan "
                                 "[default: 0.5].")
@click.option("--json", "as_json", is_flag=True,
              help="Print the pruning record (or the scan) as JSON on stdout.")
@preprocess_options
@classes_option
@click.pass_context
def command(ctx: click.Context, model: str, data: Path, out: Path | None, recipe: str,
            target_latency_ms: float | None, target: str, threads: int | None,
            verification_images: int | None, overwrite: bool, on_error: str,
            allow_accuracy_drop: bool, scan: bool, scan_ratio: float | None, as_json: bool,
            protect: tuple[str, ...], epochs: int | None, preprocess: DeclaredPreprocess,
            classes: tuple[str, ...] | None, **overrides: Any) -> None:
    """Make MODEL smaller by removing whole channels (structured pruning), recover its accuracy
    by knowledge distillation from the unpruned model on DIR, and write a pruned checkpoint.

    Every layer that depends on a removed channel shrinks with it (BatchNorm, depthwise and
    pointwise neighbours, attention gates, both sides of a residual sum), so the result is a
    genuinely narrower network: fewer MACs and parameters on every runtime, no sparse kernels.
    The recipe's pruning section (default prune30: keep 70 % of the MACs) sets the target; the
    options override it. Recovery trains only on DIR's non-verification images: the
    verification images (the checkpoint's held-out split when it was trained on DIR) are never
    trained on, and score the pruned model against the original. Exits 1 when it misses the
    recipe's accuracy gate (the checkpoint is still written) unless --allow-accuracy-drop.

    MODEL is an edgekit checkpoint, ARCH:weights.pt of a zoo architecture, or a torch.export
    program (.pt2) of any CNN: its layers are made editable, the pruned model is written as a
    .pt2 (--out must end in .pt2) that compress takes as a source; declare its preprocessing
    (--preprocess, --mean, --std ...) as for compress. An op that fixes a channel count (a
    channel slice, a view that splits channels, a custom op) keeps the layers that feed it
    whole, or is named in the error when nothing else is left. ONNX, TorchScript and Keras
    files have no editable graph. --scan prunes and writes nothing: it ranks the channel groups by how
    much accuracy each loses when pruned alone.

    \b
    Examples:
      edgekit prune model.pt --data Training/ --out pruned.pt
      edgekit prune model.pt --data Training/ --out pruned.pt --target-macs 0.5 --steps 2
      edgekit prune model.pt --data Training/ --scan
      edgekit compress pruned.pt --recipe int8 --data Training/ --out bundle/
      edgekit prune model.pt2 --data Training/ --out pruned.pt2
    """
    if scan:
        refused = _given(ctx, PRUNE_ONLY)
        if refused:
            raise click.UsageError(
                f"--scan only measures (it writes nothing); {', '.join(map(_flag, refused))} "
                f"{'does' if len(refused) == 1 else 'do'} not apply to it.", ctx)
        _scan(_load(model, preprocess, classes), data, 0.5 if scan_ratio is None else scan_ratio, overrides["round_to"],
              protect, verification_images, overrides["seed"], on_error, as_json)
        return
    if scan_ratio is not None:
        raise click.UsageError("--scan-ratio only applies with --scan.", ctx)
    if out is None:
        raise click.UsageError("Missing option '--out' (the pruned checkpoint to write; "
                               "only --scan goes without it).", ctx)
    targets = _given(ctx, TARGETS)
    if len(targets) > 1:
        raise click.UsageError(
            f"{' and '.join(map(_flag, targets))} are mutually exclusive: --target-macs, "
            "--ratio, --target-latency-ms and --target-time each set how much to prune; give "
            "one of them "
            "(or none, for the recipe's target).", ctx)
    latency_cost = overrides.get("cost") == "latency" or overrides.get("target_time")
    if target_latency_ms is None and not latency_cost and \
            (unused := _given(ctx, ("target", "threads"))):
        raise click.UsageError(f"{', '.join(map(_flag, unused))} only "
                               f"{'applies' if len(unused) == 1 else 'apply'} with "
                               "--target-latency-ms or --cost latency.", ctx)
    if overrides.get("target_time") is not None:
        overrides["cost"] = "latency"

    loaded = _load(model, preprocess, classes)
    require_prunable(loaded, "edgekit prune")
    overrides["protect"] = list(protect) or None
    overrides["pruning.recovery.epochs"] = epochs
    result = prune_file(loaded, data=data, out=out, recipe=recipe,
                        target_latency_ms=target_latency_ms, target=target, threads=threads,
                        verification_images=verification_images, on_error=on_error,
                        overwrite=overwrite, **overrides)
    record = result.record
    if as_json:
        click.echo(json.dumps(_json_payload(result), indent=2, default=str))
    else:
        if result.latency_steps:
            stdout.print(latency_table(result.latency_steps, target_latency_ms, target))
        stdout.print(size_table(record))
        table = widths_table(record)
        if table is not None:
            stdout.print(table)
        table = recovery_table(record)
        if table is not None:
            stdout.print(table)
        stdout.print(verification_table(record, result.source_metrics, loaded.task))
        for line in failed_checks(record):
            stdout.print(line)
    if result.decision == "fail" and not allow_accuracy_drop:
        name = (record.get("recipe") or {}).get("name", recipe)
        raise VerificationFailed(
            f"the pruned model failed the {name!r} recipe's accuracy gate against the original; "
            f"the checkpoint was still written to {result.checkpoint}. Prune less "
            "(--target-macs closer to 1), recover longer (--epochs) or in more --steps, or "
            "pass --allow-accuracy-drop to accept it.")
    verdict = {"pass": "", "fail": " [red](it misses the accuracy gate)[/]",
               "inconclusive": " [yellow](too few images to show it meets the accuracy gate)[/]"
               }[result.decision]
    bundle = result.checkpoint.with_name(result.checkpoint.stem + "-int8")
    status(f"Pruned {'model' if result.checkpoint.suffix == '.pt2' else 'checkpoint'}: "
           f"{result.checkpoint}{verdict} "
           f"({record['macs_fraction']:.0%} of the MACs, {result.seconds:.0f} s). Next, quantize "
           f"and export it: edgekit compress {result.checkpoint} --recipe int8 --data {data} "
           f"--out {bundle}")
