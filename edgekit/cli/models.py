"""``edgekit models``: the architectures in the zoo."""

from __future__ import annotations

import json

import click
from rich.table import Table

from edgekit.ui import out
from edgekit.zoo import list_models, model_config


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
def command(as_json: bool) -> None:
    """List the zoo's architectures with their task, classes and default input size."""
    rows = [model_config(n) for n in list_models()]
    if as_json:
        click.echo(json.dumps([{"name": c.name, "task": c.task, "modality": c.modality,
                                "num_classes": c.num_classes, "input_size": c.input_size,
                                "labels": list(c.labels), "summary": c.summary,
                                "reference": c.reference} for c in rows], indent=2))
        return
    table = Table(title="edgekit model zoo")
    for col in ("name", "task", "input", "outputs", "what it is"):
        table.add_column(col)
    for c in rows:
        table.add_row(c.name, c.task, f"{c.input_size}²", str(c.num_classes), c.summary)
    out.print(table)
