"""``edgekit targets calibrate x86-local``: the command over :mod:`edgekit.bench.calibrate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from edgekit.backends import backend_names
from edgekit.bench.calibrate import CalibrationOptions, calibrate
from edgekit.ui import out, status


def _summary_table(entry: dict[str, Any]) -> Any:
    table = Table(title=f"Latency model of {entry['target']} fitted on "
                        f"{entry['identity']['cpu_model']}")
    for col in ("group", "points", "expected error", "η conv1x1", "η convkxk", "η depthwise",
                "η_mem", "c0 ms"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for key, c in entry["groups"].items():
        eta = c["eta"]
        table.add_row(key, str(c["n_points"]), f"±{100 * c['rel_err']:.0f} %",
                      f"{eta['conv1x1']:.2f}", f"{eta['convkxk']:.2f}",
                      f"{eta['depthwise']:.2f}", f"{c['eta_mem']:.2f}", f"{c['c0_ms']:.3f}")
    return table


@click.command("calibrate")
@click.argument("target", default="x86-local")
@click.option("--quick", is_flag=True,
              help="Three tiny networks, fp32 ONNX Runtime + OpenVINO, 1 thread, the quick "
                   "protocol: a smoke test (about a minute), not a calibration to rely on.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Calibration file to write (default: "
                                 "~/.config/edgekit/calibration/x86-local.json, or under "
                                 "$EDGEKIT_CONFIG_DIR).")
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(backend_names()),
              help="Runtime to calibrate (repeatable; default: all installed).")
@click.option("--threads", default=None, metavar="N[,N...]",
              help="Thread counts (default: the target's, here [1, usable cores]).")
@click.option("--rounds", type=click.IntRange(1, 20), default=None,
              help="Interleaved measuring rounds per artifact (default 3; --quick 1).")
@click.option("--int8/--no-int8", default=None,
              help="Also calibrate INT8 artifacts (every second network; default on, off "
                   "with --quick). INT8 exports take 10-25 s per network and runtime.")
@click.option("--no-zoo", is_flag=True, help="Calibrate on the reference networks only.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON to stdout.")
def calibrate_command(target: str, quick: bool, out_file: Path | None, backends: tuple[str, ...],
                      threads: str | None, rounds: int | None, int8: bool | None, no_zoo: bool,
                      as_json: bool) -> None:
    """Fit the latency model on THIS machine, so benchmarks can predict as well as measure.

    Exports calibration networks (reference MobileNets, EfficientNet-B0 and ResNets at a few
    widths and input sizes, plus zoo models) to each runtime, times each one with the bench
    protocol in a fresh process (interleaved rounds, median p50), and fits one group of
    coefficients per runtime/precision/threads. The file is keyed by CPU model, core count and
    edgekit version: another machine or version is never given these numbers. A full run takes
    20-30 minutes on 2 cores (--no-int8: about half); keep the machine otherwise idle.

    \b
    Examples:
      edgekit targets calibrate x86-local
      edgekit targets calibrate x86-local --quick --json
      edgekit targets calibrate x86-local --backend openvino --no-int8 --out cal.json
    """
    try:
        counts = [int(t) for t in threads.split(",")] if threads else None
    except ValueError:
        raise click.BadParameter(f"{threads!r} is not a comma-separated list of integers",
                                 param_hint="--threads") from None
    if counts is not None and (not counts or min(counts) < 1):
        raise click.BadParameter("thread counts must be >= 1", param_hint="--threads")

    entry = calibrate(target, CalibrationOptions(
        quick=quick, out_file=out_file, backends=backends or None, threads=counts,
        rounds=rounds, int8=int8, include_zoo=not no_zoo))
    if as_json:
        click.echo(json.dumps(entry, indent=1))
        return
    out.print(_summary_table(entry))
    if entry.get("thread_scaling"):
        ts = entry["thread_scaling"]
        status(f"Thread scaling: Amdahl p = {ts['parallel_fraction']:.2f} "
               f"(±{100 * ts['rel_err']:.0f} %)")
    for s in entry["skipped"]:
        status(f"[yellow]Skipped:[/] {s}")
    status(f"Wrote {entry['path']}" + (" [yellow](--quick: a smoke test)[/]" if quick else ""))

