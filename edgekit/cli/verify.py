"""``edgekit verify BUNDLE``: re-check every hash and that every artifact loads."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from edgekit.bundle import verify_bundle
from edgekit.ui import out


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--no-load", is_flag=True, help="Only check hashes; do not open the artifacts.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
def command(bundle: Path, no_load: bool, as_json: bool) -> None:
    """Re-check BUNDLE: every file's sha256 against manifest.json, and that each artifact
    loads in its runtime and runs. Exits 1 naming every problem."""
    rows = verify_bundle(bundle, load=not no_load)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{bundle}: all checks passed")
    for col in ("artifact", "hashes", "loads"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["hashes"], r["loads"])
    out.print(table)
