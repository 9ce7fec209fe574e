"""``edgekit inspect MODEL``: parameters, MACs, per-layer table and preprocessing spec."""

from __future__ import annotations

import json

import click
from rich.table import Table

from edgekit.ui import out


def fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


@click.command("inspect")
@click.argument("model")
@click.option("--input-size", type=click.IntRange(32, 4096), default=None,
              help="Measure at this square input size instead of the model's own.")
@click.option("--layers/--no-layers", default=True, show_default=True,
              help="Show the per-layer table.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
def command(model: str, input_size: int | None, layers: bool, as_json: bool) -> None:
    """Show parameters, MACs, the per-layer table and the preprocessing spec of MODEL.

    MODEL is an edgekit checkpoint (model.pt), ARCH:weights.pt for a plain state_dict, or a
    zoo name (fresh weights; see `edgekit models`).
    """
    from edgekit.inspect import summarize
    from edgekit.sources import load_model

    summary = summarize(load_model(model, input_size=input_size), input_size)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    if layers:
        table = Table(title=f"{summary.name} — layers", show_lines=False)
        for col, just in (("layer", "left"), ("type", "left"), ("output", "left"),
                          ("params", "right"), ("MACs", "right")):
            table.add_column(col, justify=just)
        for r in summary.layers:
            table.add_row(r.name, r.type, "×".join(map(str, r.output_shape)),
                          f"{r.params:,}" if r.params else "", fmt_count(r.macs) if r.macs else "")
        out.print(table)
    head = Table.grid(padding=(0, 2))
    head.add_row("model", f"{summary.name} ({'trained' if summary.pretrained else 'fresh weights'})")
    head.add_row("task", f"{summary.task}: {', '.join(summary.class_names)}")
    head.add_row("input", "×".join(map(str, summary.input_shape)) + f" ({summary.preprocess['layout']})")
    head.add_row("parameters", f"{summary.params:,}")
    head.add_row("MACs", f"{summary.macs:,} ({fmt_count(summary.macs)})")
    head.add_row("preprocessing", json.dumps(summary.preprocess))
    out.print(head)
