"""report.md: the recommendation, its flags, the main table, the predicted/emulated sections
and the environment, with a link to the chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgekit.report.recommend import Report, as_report
from edgekit.report.results import BenchResults
from edgekit.report.tables import (
    binary_summary,
    emulated_section,
    environment_lines,
    fast_path_section,
    legend_extra,
    main_table,
    predicted_section,
)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report | Mapping[str, Any], chart: str | None = "pareto.png") -> str:
    """The Markdown summary: recommendation, flags, the main table, environment, chart link.

    ``report`` is a :class:`Report` (``build_report``) or the content of a report.json."""
    rep = as_report(report)
    res, rec = rep.results, rep.recommendation
    lines = [f"# edgekit bench: {res.target_name}", "", f"**Recommendation.** {rec['text']}", ""]
    lines += [f"- ⚠ {f}" for f in rec["flags"]] + ([""] if rec["flags"] else [])
    head, rows = main_table(res, rec)
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join("---" if i in (0, len(head) - 1) else "---:"
                           for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    lines += ["", "★ recommended. Δ: change against the source model; gate: the recipe's "
              f"accuracy gate.{legend_extra(res)}", ""]
    binary = [(a.id, text) for a in res.artifacts
              if (text := binary_summary(((a.accuracy or {}).get("metrics")) or {}))]
    if binary:
        lines += ["## Binary head", ""] + [f"- `{i}`: {t}" for i, t in binary] + [""]
    if chart:
        lines += [f"![latency vs accuracy]({chart})", ""]
    lines += _md_sections(res)
    lines += ["## Environment", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in environment_lines(res)]
    return "\n".join(lines) + "\n"


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(_md_cell(h) for h in head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(_md_cell(str(c)) for c in row) + " |" for row in rows)]


def _md_sections(results: BenchResults) -> list[str]:
    """The “Predicted latency basis” and “Emulated parity” sections (when present)."""
    lines: list[str] = []
    pred = predicted_section(results)
    if pred:
        paras, head, rows = pred
        lines += ["## Predicted latency basis", "", paras[0], ""]
        lines += [f"- {p}" for p in paras[1:]] + ([""] if paras[1:] else [])
        lines += (_md_table(head, rows) + [""]) if rows else []
    off = fast_path_section(results)
    if off:
        lines += ["## Off the fast path", "", "Ops each artifact's runtime does not run on its "
                  "fast kernels (as the backend found on the machine that exported it: not "
                  "delegated, a reference or slow generic kernel, float inside INT8).", ""]
        for art_id, summary, rows in off:
            lines += [f"**`{art_id}`**: {summary}", "", *_md_table(("op", "node", "why"), rows),
                      ""]
    emu = emulated_section(results)
    if emu:
        title, paras, head, rows = emu
        lines += [f"## {title}", "", *(x for p in paras for x in (p, "")),
                  *_md_table(head, rows), ""]
    return lines
