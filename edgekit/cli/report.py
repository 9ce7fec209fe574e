"""``edgekit report RUN_DIR``: regenerate a bench run's report files and print the verdict."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table
from rich.text import Text

from edgekit.report import (
    BenchResults,
    Report,
    artifact_delta,
    artifact_score,
    emulated,
    fmt_delta,
    fmt_ms,
    fmt_parity,
    fmt_predicted,
    gate_text,
    load_results,
    predicted_rows,
    recommend,
    score_header,
    table_entries,
    valid_row,
    write_report,
)
from edgekit.report.recommend import as_report
from edgekit.ui import out


def print_summary(report: Report | BenchResults | Mapping[str, Any]) -> None:
    """A table of the rows (artifact, threads, p50, p90, accuracy [CI], Δ, gate; with predicted
    or emulated results: p50, predicted p50, emulated parity, accuracy, Δ, gate) on stdout, then the recommendation and its flags. ``report`` is a
    :class:`Report` or a results dict, with or without its ``recommendation`` (computed when
    missing)."""
    rep = as_report(report)
    res, rec = rep.results, rep.recommendation
    entries = table_entries(res)
    ids = {e.artifact for e in entries}
    one_bundle = len({i.split("/")[0] for i in ids}) == 1
    labels = [(str(e.art.name or e.artifact) if one_bundle else e.artifact)
              + ("" if e.threads is None else f" ×{e.threads}") for e in entries]
    pred = bool(predicted_rows(res))
    emu = emulated(res) is not None
    measured = bool(res.rows)
    table = Table(title=f"bench on {rec['target']}", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    table.add_column("artifact × threads", min_width=min(max(map(len, labels), default=8), 40))
    compact = pred or emu  # extra columns: no p90, no CI, to fit 80 columns
    cols = [*(["p50 ms"] if measured or not pred else []),
            *(["p90 ms"] if not compact else []),
            *(["predicted p50"] if pred else []), *(["parity"] if emu else []),
            score_header(res).split(" [")[0] if compact else score_header(res), "Δ"]
    for col in cols:
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("gate")
    for e, label in zip(entries, labels, strict=True):
        row, art = e.row, e.art
        lat = row.latency_ms if row is not None and row.ok else None
        score = artifact_score(art)
        gate = gate_text(row, art).replace(" (points)", "").replace("accuracy drop", "drop")
        delta = fmt_delta(artifact_delta(art), ci=False).replace(" points", " pt")
        star = (e.artifact, e.threads) == (rec["artifact"], rec["threads"])
        cells: list[Any] = [label]
        if measured or not pred:
            p50 = fmt_ms(lat.p50 if lat else None) if row is not None else "—"
            if row is not None and row.ok and not valid_row(row):
                p50 += " (invalid)"
            cells.append(p50)
        if not compact:
            cells.append(fmt_ms(lat.p90 if lat else None) if row is not None else "—")
        if pred:
            cells.append(fmt_predicted(e.pred, unit=False).replace("no prediction", "—"))
        if emu:
            parity = fmt_parity(e.emu).split(" (")[0].split(":")[0]
            cells.append(Text(parity, style="red" if parity.startswith(("FAIL", "error"))
                              else None))
        cells += [score.fmt(ci=not compact) if score else "not measured",
                  "—" if art.kind == "source" else delta,
                  Text(gate, style="red" if gate.startswith(("FAIL", "error")) else None)]
        table.add_row(*cells, style="bold" if star else None)
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
    results = load_results(run_dir)
    paths = write_report(run_dir, results)
    if as_json:
        click.echo(json.dumps(recommend(results), indent=2, ensure_ascii=False))
        return
    print_summary(results)
    for path in paths.values():
        out.print(Text(str(path)))
