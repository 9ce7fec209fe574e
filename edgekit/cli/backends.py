"""``edgekit backends``: which runtimes are installed, and how to add the missing ones."""

from __future__ import annotations

import json

import click
from rich.table import Table

from edgekit.backends import all_backends
from edgekit.ui import out


@click.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")
def command(as_json: bool) -> None:
    """List the runtime backends, their precisions and sources, and whether each is installed
    (with the pip command that adds a missing one)."""
    rows = []
    for b in all_backends():
        hint = b.available()
        rows.append({"name": b.name, "installed": hint is None, "hint": hint,
                     "precisions": list(b.precisions), "sources": list(b.sources),
                     "artifact": b.suffix})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="edgekit backends")
    for col in ("backend", "artifact", "precisions", "sources", "installed"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["artifact"], ", ".join(r["precisions"]), ", ".join(r["sources"]),
                      "[green]yes[/]" if r["installed"] else f"[red]no[/]: {r['hint']}")
    out.print(table)
