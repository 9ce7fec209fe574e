"""report.html: one self-contained page (inline CSS, the chart as a data URI, no scripts,
no fonts, nothing fetched): recommendation, flags, tables, per-artifact accuracy details and
the environment."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from edgekit.report.recommend import Report, as_report
from edgekit.report.results import (
    BenchResults,
    Json,
    Score,
    artifact_score,
    check_decision,
    metric_ci,
    metric_value,
)
from edgekit.report.tables import (
    binary_summary,
    emulated_section,
    environment_lines,
    fast_path_section,
    fmt_metric_pct,
    legend_extra,
    main_table,
    predicted_section,
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:2rem auto;max-width:1180px;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
.rec{background:#eef7ee;border-left:5px solid #2a8a4a;padding:.8rem 1rem;font-size:1.05rem}
.rec.none{background:#fbeeee;border-color:#c0392b}
.flags{background:#fff8e6;border-left:5px solid #e0a800;padding:.5rem 1rem .5rem 2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #d4d4d4;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}th:first-child,td:first-child,td:last-child{text-align:left}
td.l{text-align:left}tr.star{background:#fff6d5;font-weight:600}.fail{color:#b00020}
code{background:#f2f2f2;padding:0 .25em;border-radius:3px}
img{max-width:100%;height:auto;border:1px solid #eee}
details{margin:.5rem 0 1rem}summary{cursor:pointer;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}dt{font-weight:600}
dd{margin:0}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _e_code(text: str) -> str:
    """Escape, then render `backticked` parts as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", _e(text))


def _html_table(head: Sequence[str], rows: Sequence[Sequence[Any]],
                classes: Sequence[str] | None = None) -> str:
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_e(classes[i])}"' if classes and classes[i] else ""
        cells = "".join(f'<td class="fail">{_e(c)}</td>' if str(c).startswith(("FAIL", "error"))
                        else f"<td>{_e(c)}</td>" for c in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(report: Report | Mapping[str, Any], png: bytes | None) -> str:
    """One self-contained page: inline CSS, the chart as a data URI, no scripts or fonts.

    ``report`` is a :class:`Report` (``build_report``) or the content of a report.json."""
    rep = as_report(report)
    res, rec = rep.results, rep.recommendation
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>edgekit bench: {_e(res.target_name)}</title><style>{_CSS}</style>",
        "</head><body>",
        f"<h1>edgekit bench: {_e(res.target_name)}</h1>",
        f"<p class='sub'>{_e(res.created or '')} · edgekit {_e(res.edgekit or '')}</p>",
        f"<p class='rec{'' if rec['artifact'] else ' none'}'>{_e_code(rec['text'])}</p>",
    ]
    if rec["flags"]:
        parts.append("<ul class='flags'>" + "".join(f"<li>{_e_code(f)}</li>" for f in rec["flags"])
                     + "</ul>")
    parts += ["<h2>Latency and accuracy</h2>", _html_main_table(res, rec),
              "<p class='sub'>★ recommended · Δ: change against the source model · gate: the "
              f"recipe's accuracy gate{_e(legend_extra(res))}</p>"]
    if png:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(f"<img src='{uri}' alt='p50 latency vs accuracy, one point per artifact "
                     "and thread count' width='1000'>")
    else:
        parts.append("<p class='sub'>Chart not drawn: pip install 'edgekit[report]'.</p>")
    parts += _html_sections(res)
    parts += ["<h2>Accuracy per artifact</h2>", _html_accuracy(res, rec),
              "<h2>Environment</h2>", _html_environment(res), "</body></html>"]
    return "\n".join(parts) + "\n"


def _html_sections(results: BenchResults) -> list[str]:
    parts = []
    pred = predicted_section(results)
    if pred:
        paras, head, rows = pred
        parts += ["<h2>Predicted latency basis</h2>", f"<p>{_e_code(paras[0])}</p>"]
        if paras[1:]:
            parts.append("<ul>" + "".join(f"<li>{_e_code(p)}</li>" for p in paras[1:]) + "</ul>")
        if rows:
            parts.append(_html_table(head, rows))
    off = fast_path_section(results)
    if off:
        parts.append("<h2>Off the fast path</h2>")
        for art_id, summary, rows in off:
            parts += [f"<p><code>{_e(art_id)}</code>: {_e(summary)}</p>",
                      _html_table(("op", "node", "why"), rows)]
    emu = emulated_section(results)
    if emu:
        title, paras, head, rows = emu
        parts += [f"<h2>{_e(title)}</h2>", *(f"<p>{_e_code(p)}</p>" for p in paras),
                  _html_table(head, rows)]
    return parts


def _html_main_table(report: BenchResults, rec: Json) -> str:
    head, rows = main_table(report, rec)
    return _html_table(head, rows, ["star" if r[0].endswith("★") else "" for r in rows])


def _html_accuracy(report: BenchResults, rec: Json) -> str:
    parts = []
    for art in report.artifacts:
        acc = art.accuracy
        if not acc:
            parts.append(f"<p><code>{_e(art.id)}</code>: accuracy not measured.</p>")
            continue
        score = artifact_score(art)
        summary = (f"<code>{_e(art.id)}</code> — {_e(score.fmt() if score else 'n/a')}, "
                   f"n = {_e(acc.get('n'))}, source: {_e(art.accuracy_source or 'n/a')}")
        is_open = " open" if art.id == rec.get("artifact") else ""
        parts.append(f"<details{is_open}><summary>{summary}</summary>")
        parts.append(_html_binary(acc.get("metrics") or {}))
        parts.append(_html_per_class(acc.get("metrics") or {}))
        parts.append(_html_checks(acc.get("checks") or []))
        parts.append(_html_confusion(acc.get("metrics") or {}))
        parts.append("</details>")
    return "\n".join(parts)


def _html_binary(metrics: Json) -> str:
    text = binary_summary(metrics)
    return f"<p>{_e(text)}</p>" if text else ""


def _html_per_class(metrics: Json) -> str:
    if metrics.get("task") == "multilabel":
        rows = []
        for name, m in (metrics.get("per_label") or {}).items():
            s = Score("mean_auroc", metric_value(m.get("auroc")), *metric_ci(m.get("auroc")))
            auroc = s.fmt() if s.value is not None else (m.get("auroc_undefined") or "n/a")
            rows.append([name, m.get("n_positive"), auroc, fmt_metric_pct(m.get("sensitivity")),
                         fmt_metric_pct(m.get("specificity"))])
        return _html_table(["label", "positives", "AUROC [95 % CI]", "sensitivity @0.5",
                            "specificity @0.5"], rows)
    rows = [[name, m.get("support"), fmt_metric_pct(m.get("sensitivity")),
             fmt_metric_pct(m.get("specificity")),
             f"{m['f1']:.3f}" if isinstance(m.get("f1"), int | float) else "n/a"]
            for name, m in (metrics.get("per_class") or {}).items()]
    if not rows:
        return ""
    return _html_table(["class", "n", "sensitivity [95 % CI]", "specificity [95 % CI]", "F1"],
                       rows)


def _html_checks(checks: list[Json]) -> str:
    if not checks:
        return ""
    rows = [[c.get("check"), f"{c['value']:.3g}" if isinstance(c.get("value"), int | float)
             else "n/a", _ci_text(c.get("ci95")), c.get("n", ""), c.get("limit"),
             {"pass": "pass", "fail": "FAIL"}.get(check_decision(c), "inconclusive")
             + (f" (≈{c['images_to_decide']:,} images would decide)"
                if c.get("images_to_decide") else "")] for c in checks]
    return _html_table(["gate check", "value", "95 % CI", "images", "limit", "result"], rows)


def _ci_text(ci: Any) -> str:
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]" if isinstance(ci, list | tuple) and len(ci) == 2 else ""


def _html_confusion(metrics: Json) -> str:
    cm = metrics.get("confusion_matrix")
    if not cm:
        return ""
    names = metrics.get("class_names") or list(metrics.get("per_class") or {})
    if len(names) != len(cm):
        names = [str(i) for i in range(len(cm))]
    head = ["true \\ predicted", *names]
    return ("<p class='sub'>Confusion matrix (rows: true class, columns: predicted)</p>"
            + _html_table(head, [[n, *row] for n, row in zip(names, cm, strict=True)]))


def _html_environment(report: BenchResults) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in environment_lines(report))
    return f"<dl>{items}</dl>"
