"""What several commands print: metric tables (``edgekit.metrics``' JSON), the verification table of a
compress result, a bench run's summary, counts. Commands share these instead of importing each
other."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from edgekit.bench.run import BenchRun
from edgekit.metrics import metric_value as _value
from edgekit.report import (
    BenchResults,
    Report,
    artifact_delta,
    artifact_score,
    emulated,
    fast_path_section,
    fmt_delta,
    fmt_ms,
    fmt_parity,
    fmt_predicted,
    gate_text,
    predicted_rows,
    score_header,
    table_entries,
    valid_row,
)
from edgekit.report.recommend import as_report
from edgekit.ui import out


def fmt_metric(m: Any, pct: bool = True) -> str:
    """``0.953 [0.931, 0.970]`` (or percentages) from ``{"value", "ci95"}`` or a bare number."""
    v = _value(m)
    if v is None:
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    ci = m.get("ci95") if isinstance(m, dict) else None
    return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]" if ci else f(v)


def print_metrics(metrics: dict[str, Any], *, title: str) -> None:
    """Headline metrics, then a per-class (or per-label) table, then the confusion matrix."""
    head = Table(title=title, show_header=True)
    head.add_column("metric")
    head.add_column("value [95 % CI]", justify="right")
    if metrics["task"] == "multilabel":
        head.add_row("mean AUROC", fmt_metric(metrics["mean_auroc"], pct=False))
        head.add_row("macro sensitivity @0.5", fmt_metric(metrics["macro_sensitivity"]))
        head.add_row("macro specificity @0.5", fmt_metric(metrics["macro_specificity"]))
    else:
        for key, label, pct in (("accuracy", "accuracy", True), ("auroc", "AUROC", False),
                                ("macro_f1", "macro-F1", False), ("kappa", "Cohen's kappa", False),
                                ("balanced_accuracy", "balanced accuracy", True),
                                ("ece", "calibration error (ECE)", False)):
            if key in metrics:
                head.add_row(label, fmt_metric(metrics[key], pct))
    out.print(head)

    per = metrics.get("per_label") or metrics.get("per_class") or {}
    table = Table(show_header=True)
    if metrics["task"] == "multilabel":
        for col in ("label", "positives", "AUROC [95 % CI]", "sensitivity", "specificity"):
            table.add_column(col, justify="left" if col == "label" else "right")
        for name, m in per.items():
            undefined = _value(m.get("auroc")) is None
            auroc = (m.get("auroc_undefined") or "n/a") if undefined else fmt_metric(m["auroc"], pct=False)
            table.add_row(name, str(m["n_positive"]), auroc, fmt_metric(m["sensitivity"]),
                          fmt_metric(m["specificity"]))
    else:
        for col in ("class", "n", "sensitivity [95 % CI]", "specificity [95 % CI]", "F1"):
            table.add_column(col, justify="left" if col == "class" else "right")
        for name, m in per.items():
            table.add_row(name, str(m["support"]), fmt_metric(m["sensitivity"]),
                          fmt_metric(m["specificity"]), fmt_metric(m["f1"], pct=False))
    out.print(table)

    cm = metrics.get("confusion_matrix")
    if cm:
        names = metrics.get("class_names") or list(per)
        table = Table(title="confusion matrix (rows: true, columns: predicted)")
        table.add_column("")
        for n in names:
            table.add_column(n, justify="right")
        for n, row in zip(names, cm, strict=True):
            table.add_row(n, *(str(v) for v in row))
        out.print(table)


def fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def verification_table(result: Any) -> Table:
    """One row per artifact: size, agreement, |logit diff|, accuracy delta and gate verdict."""
    multilabel = result.manifest.task == "multilabel"
    binary = result.source_metrics.get("task") == "binary"
    headline = "mean_auroc" if multilabel else "accuracy"
    src = result.source_metrics[headline]["value"]
    table = Table(title=f"Verification on {result.data.get('verification_images')} held-out "
                        f"images (source {headline.replace('_', ' ')} "
                        f"{src if multilabel else 100 * src:.{3 if multilabel else 1}f}"
                        f"{'' if multilabel else ' %'})", box=box.SIMPLE_HEAD, pad_edge=False)
    # the gate comes second: on a narrow terminal the last columns are the ones cut short
    for col, just in (("artifact", "left"), ("gate", "left"), ("size", "right"),
                      ("top-1 agree", "right"), ("max |Δlogit|", "right"),
                      (headline.replace("_", " "), "right"),
                      ("Δ vs source [95 % CI]", "right")):
        table.add_column(col, justify=just, no_wrap=col in ("artifact", "gate"))
        if binary and col == "Δ vs source [95 % CI]":
            for extra in ("sensitivity", "specificity", "AUROC"):
                table.add_column(extra, justify="right")
    for a in result.artifacts:
        v = a.verification
        value = v.metrics[headline]["value"]
        delta = v.accuracy_delta
        dtxt = (f"{100 * delta['value']:+.1f} [{100 * delta['ci95'][0]:+.1f}, "
                f"{100 * delta['ci95'][1]:+.1f}]" if delta else f"{value - src:+.4f}")
        m = v.metrics
        extras = ([_pct(m["sensitivity"]), _pct(m["specificity"]),
                   "n/a" if m["auroc"]["value"] is None else f"{m['auroc']['value']:.3f}"]
                  if binary else [])
        table.add_row(a.name, _gate_cell(v), f"{a.bytes / 1e6:.2f} MB",
                      "-" if v.top1_agreement is None else f"{v.top1_agreement:.3f}",
                      f"{v.max_abs_logit_diff:.2e}",
                      f"{value:.4f}" if multilabel else f"{100 * value:.1f} %", dtxt, *extras)
    return table


def _gate_cell(v: Any) -> str:
    """``pass``, ``FAIL (k)`` or ``inconclusive (k)`` (k checks); :func:`gate_lines` says
    which."""
    for checks, word in ((v.failed_checks, "[red]FAIL[/]"),
                         (v.inconclusive_checks, "[yellow]inconclusive[/]")):
        if checks:
            return f"{word} ({len(checks)})"
    return "[green]pass[/]"


def gate_lines(result: Any) -> list[str]:
    """One line per gate check that did not pass: ``✗`` failed, ``?`` inconclusive (with the
    images that would decide it)."""
    lines = []
    for a in result.artifacts:
        for c in a.verification.failed_checks:
            lines.append(f"  [red]✗[/] {a.name}: {c.describe()}")
        for c in a.verification.inconclusive_checks:
            lines.append(f"  [yellow]?[/] {a.name}: {c.describe()}")
    return lines


def _pct(m: dict[str, Any]) -> str:
    return "n/a" if m.get("value") is None else f"{100 * m['value']:.1f} %"


def report_of(run: BenchRun) -> dict[str, Any]:
    """report.json of a bench run, or its bare results when the report could not be written."""
    path = run.report.get("report.json")
    return json.loads(path.read_text()) if path is not None else run.results.to_dict()


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
    for art_id, summary, _ in fast_path_section(res):
        out.print(Text.assemble(("  off the fast path ", "dim"), f"{art_id}: {summary}"))
