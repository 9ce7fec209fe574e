"""``edgekit report RUN_DIR``: regenerate a bench run's report files and print the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table
from rich.text import Text

from edgekit.ui import out


def print_summary(report: dict[str, Any]) -> None:
    """A table of the rows (artifact, threads, p50, p90, accuracy [CI], Δ, gate) on stdout,
    then the recommendation and its flags. ``report`` is a results dict, with or without its
    ``recommendation`` (computed when missing)."""
    from edgekit import report as rp

    rec = report.get("recommendation") or rp.recommend(report)
    arts = {a["id"]: a for a in report["artifacts"]}
    one_bundle = len({i.split("/")[0] for i in arts}) == 1
    names = {i: (a.get("name") or i) if one_bundle else i for i, a in arts.items()}
    labels = [f"{names[r['artifact']]} ×{r.get('threads')}" for r in report["rows"]]
    table = Table(title=f"bench on {rec['target']}", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("artifact × threads", min_width=min(max(map(len, labels), default=8), 40))
    for col in ("p50 ms", "p90 ms", rp.score_header(report), "Δ"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("gate")
    for row, label in zip(report["rows"], labels, strict=True):
        art = arts[row["artifact"]]
        lat = row.get("latency_ms") or {}
        score = rp.artifact_score(art)
        gate = rp.gate_text(row, art).replace(" (points)", "").replace("accuracy drop", "drop")
        delta = rp.fmt_delta(rp.artifact_delta(art), ci=False).replace(" points", " pt")
        star = (row["artifact"], row.get("threads")) == (rec["artifact"], rec["threads"])
        table.add_row(
            label, rp.fmt_ms(lat.get("p50")), rp.fmt_ms(lat.get("p90")),
            score.fmt() if score else "not measured",
            "—" if art.get("kind") == "source" else delta,
            Text(gate, style="red" if gate.startswith(("FAIL", "error")) else None),
            style="bold" if star else None)
    out.print(table)
    out.print(Text(rec["text"], style="bold" if rec["artifact"] else "bold red"))
    for flag in rec["flags"]:
        out.print(Text.assemble(("  ! ", "yellow"), flag))


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
    from edgekit.report import load_results, recommend, write_report

    results = load_results(run_dir)
    paths = write_report(run_dir, results)
    if as_json:
        click.echo(json.dumps(recommend(results), indent=2, ensure_ascii=False))
        return
    print_summary(results)
    for path in paths.values():
        out.print(Text(str(path)))
