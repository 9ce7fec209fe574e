"""``edgekit report RUN_DIR``: regenerate a bench run's report files and print the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.text import Text

from edgekit.cli.display import print_summary
from edgekit.report import (
    load_results,
    recommend,
    write_report,
)
from edgekit.ui import out


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print only the recommendation as JSON on stdout.")
def command(run_dir: Path, as_json: bool) -> None:
    """Regenerate report.json, report.csv, report.md, pareto.png and report.html of a bench
    run folder from its results.json, and print the recommendation.

    \b
    Example:
      edgekit report model-int8/bench/20261122T093000Z-x86-local
      edgekit report model-int8/bench/20261122T093000Z-x86-local --json
    """
    results = load_results(run_dir)
    paths = write_report(run_dir, results)
    if as_json:
        click.echo(json.dumps(recommend(results), indent=2, ensure_ascii=False))
        return
    print_summary(results)
    for path in paths.values():
        out.print(Text(str(path)))
