"""``edgekit inspect MODEL``: parameters, MACs, per-layer table and preprocessing spec."""

from __future__ import annotations

import json
from typing import Any

import click
from rich import box
from rich.table import Table

from edgekit.cli.display import fmt_count
from edgekit.inspect import summarize
from edgekit.prune.engine import prunable_groups
from edgekit.prune.graph import editable
from edgekit.prune.recover import require_prunable
from edgekit.sources import load_model
from edgekit.ui import out


def groups_table(groups: list[Any], total_macs: int, title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for col, just in (("#", "right"), ("root layer", "left"), ("channels", "right"),
                      ("layers", "right"), ("MACs touched", "right"), ("protected", "left")):
        table.add_column(col, justify=just, overflow="fold", no_wrap=col != "root layer")
    for g in groups:
        share = f" ({g.macs / total_macs:.0%})" if total_macs else ""
        table.add_row(str(g.index), g.root, str(g.channels), str(len(g.layers)),
                      fmt_count(g.macs) + share, "[yellow]yes[/]" if g.protected else "no")
    return table


@click.command("inspect")
@click.argument("model")
@click.option("--input-size", type=click.IntRange(32, 4096), default=None,
              help="Measure at this square input size instead of the model's own.")
@click.option("--layers/--no-layers", default=True, show_default=True,
              help="Show the per-layer table.")
@click.option("--groups", "with_groups", is_flag=True,
              help="Also list the channel groups structured pruning works on (`edgekit prune`): "
                   "layers whose channels are removed together; protected ones are kept.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
def command(model: str, input_size: int | None, layers: bool, with_groups: bool,
            as_json: bool) -> None:
    """Show parameters, MACs, the per-layer table and the preprocessing spec of MODEL.

    MODEL is an edgekit checkpoint (model.pt), ARCH:weights.pt for a plain state_dict, a
    torch.export program (.pt2) or a zoo name (fresh weights; see `edgekit models`). With
    --groups, also the prunable channel groups (PyTorch models: checkpoints, zoo names, .pt2),
    e.g. `edgekit inspect model.pt --groups --no-layers`.
    """
    loaded = load_model(model, input_size=input_size)
    groups = None
    if with_groups:
        import torch

        require_prunable(loaded, "--groups")
        spec = loaded.spec if input_size is None else loaded.spec.with_size(input_size)
        example = torch.zeros(spec.input_shape(1))
        groups = prunable_groups(editable(loaded.module, example), example)
    summary = summarize(loaded, input_size)
    if as_json:
        data = summary.to_dict()
        if groups is not None:
            data["groups"] = [g.to_dict() for g in groups]
        click.echo(json.dumps(data, indent=2))
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
    if groups is not None:
        out.print(groups_table(groups, summary.macs,
                               f"{summary.name} — {len(groups)} channel groups (edgekit prune)"))
        out.print("A group's channels are removed together from every layer listed under "
                  "'layers'; MACs touched counts all of them. Protected groups (by default the "
                  "stem and the classifier) are never pruned.")
